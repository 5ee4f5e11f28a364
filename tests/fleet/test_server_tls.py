"""The real server: `bmsfw fleet serve` under uvicorn in a subprocess, HTTPS with a test CA,
two worker processes on one database; the client verifies the server against the CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from bmsfw.cli._main import cli
from bmsfw.cli._registry import register_all
from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.fleet.errors import FleetConfigError, TlsVerificationError
from bmsfw.fleet.protocol import CheckIn
from bmsfw.fleet.testing import TestTlsFiles, write_test_ca_and_server
from server_support import serve_process

from .conftest import bms, make_release


def _write_ca_and_server(directory: Path, label: str) -> tuple[Path, Path, Path]:
    files = write_test_ca_and_server(
        directory, prefix=f"{label}-", ca_name=f"{label} fleet test CA"
    )
    return files.ca, files.cert, files.key


def _run_cli(args: list[str]) -> str:
    register_all(cli)
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def https_server(tmp_path: Path, root_pem: bytes) -> Iterator[tuple[str, Path, str]]:
    ca, cert, key = _write_ca_and_server(tmp_path, "good")
    (tmp_path / "root.pem").write_bytes(root_pem)
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    admin = _run_cli(["fleet", "init", "--db", db]).strip().splitlines()[-1]
    args = ["--db", db, "--trust-root", str(tmp_path / "root.pem"), "--workers", "2"]
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    with serve_process(args, cwd=workdir, tls=TestTlsFiles(ca, cert, key)) as server:
        yield server.url, ca, admin


@pytest.mark.req("SEED-OTA-ENCRYPTION")
def test_https_server_end_to_end(https_server, tmp_path: Path, pki) -> None:
    url, ca, admin = https_server
    with FleetClient(ClientConfig(url, admin, ca_file=ca)) as operator:
        assert operator.whoami()["role"] == "admin"
        release = operator.upload_release(make_release(pki), "r.bmsfw")
        gateway = operator.post("gateways", {"name": "gw", "site": "s"})
        with FleetClient(ClientConfig(url, gateway["token"], ca_file=ca)) as agent:
            agent.check_in(CheckIn.model_validate({"devices": [bms("S1"), bms("S2")]}))
            operator.post(
                "campaigns",
                {
                    "name": "c",
                    "release_id": release["id"],
                    "phases": [{"name": "all", "percent": 100}],
                },
            )
            # Several requests: both worker processes serve from the one database.
            for _ in range(4):
                offers = agent.check_in(
                    CheckIn.model_validate({"devices": [bms("S1"), bms("S2")]})
                ).offers
            assert len(offers) == 2
            result = agent.download(offers[0], tmp_path / "r.bmsfw")
            assert result.sha256 == release["sha256"]

    # A client configured with another CA refuses the server.
    other_ca, _, _ = _write_ca_and_server(tmp_path, "other")
    with (
        FleetClient(ClientConfig(url, admin, ca_file=other_ca)) as wrong,
        pytest.raises(TlsVerificationError),
    ):
        wrong.whoami()
    with pytest.raises(FleetConfigError):
        FleetClient(ClientConfig(url.replace("https", "http"), admin))


@pytest.mark.req("SEED-ACCESS-REVIEW")
def test_cli_bootstrap_token_and_access_review(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    first = _run_cli(["fleet", "init", "--db", db])
    assert "bmsfw_op_" in first
    assert "exists already" in _run_cli(["fleet", "init", "--db", db])
    _run_cli(["fleet", "token", "create", "--db", db, "--role", "viewer", "--name", "auditor"])
    import json

    rows = json.loads(_run_cli(["fleet", "access-review", "--db", db, "--json"]))
    assert [(r["name"], r["role"]) for r in rows] == [("admin", "admin"), ("auditor", "viewer")]
