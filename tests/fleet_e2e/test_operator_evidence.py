"""A technician who updated a pack on site files that update's evidence bundle with the
fleet server, where it joins the pack's update record (UN R156) next to the OTA ones.

The bundle comes from a real `bmsfw update --evidence DIR` over CAN on a virtual BMS; it
is filed with `bmsfw fleet evidence upload` (operator token from --token-file) against
the real server (uvicorn, HTTPS, SQLite and PostgreSQL), listed and downloaded with
`bmsfw fleet evidence`, and `bmsfw evidence verify` accepts the download. A forged copy
(E690), a bundle filed under another serial (E695) and a viewer's token (E603) are
refused (exit 8), and then nothing is stored."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli.conftest import kit, make_bench  # noqa: F401  (the CAN bench of tests/cli)
from cli_support import run_bmsfw
from fleet.conftest import bms, db_url  # noqa: F401  (SQLite, and PostgreSQL when configured)

from .conftest import Server
from .test_agent_evidence import _stored

SERIAL = "SIM0000001"  # the bench's node 1


def _audit(server: Server, action: str) -> list[dict[str, Any]]:
    with server.client() as admin:
        entries = admin.get("audit", limit=1000)
    return [e for e in entries if e["action"] == action]


def _token_file(tmp_path: Path, name: str, token: str) -> Path:
    path = tmp_path / f"{name}.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.req("R156-FLEET-RECORD", "R156-UPDATE-RECORD", "IEC62443-CR2.8")
def test_a_technician_files_the_evidence_of_an_update_on_site_and_it_joins_the_record(
    tmp_path: Path,
    make_bench: Callable[..., Any],  # noqa: F811
    server_factory: Callable[..., Server],
    db_url: str,  # noqa: F811
) -> None:
    # On site: a CAN update with --evidence, as the technician runs it.
    bench = make_bench()
    bench.start()
    evidence = tmp_path / "evidence"
    run_bmsfw(*bench.update_args("v2"), "--evidence", str(evidence), "--json", check=0)
    (bundle_path,) = evidence.glob(f"evidence_{SERIAL}_*.zip")
    data = bundle_path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()

    server = server_factory(db_url=db_url)
    with server.client() as admin:
        gateway = admin.post("gateways", {"name": "site-gw", "site": "depot", "tags": []})
        operator = admin.post("tokens", {"name": "tech-anna", "role": "operator"})["token"]
        viewer = admin.post("tokens", {"name": "auditor", "role": "viewer"})["token"]
    with server.client(gateway["token"]) as gw:  # the pack is in the fleet
        gw.post("agent/check-in", {"devices": [bms(SERIAL, model="BMS-16S", hw_revision="C")]})
    common = ["--server", server.url, "--ca", str(server.ca)]
    as_operator = [*common, "--token-file", str(_token_file(tmp_path, "op", operator))]
    as_viewer = [*common, "--token-file", str(_token_file(tmp_path, "viewer", viewer))]

    # Refused, and nothing stored: one changed byte (E690 naming E544) ...
    forged = tmp_path / "forged.zip"
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    forged.write_bytes(bytes(changed))
    refused = run_bmsfw("fleet", "evidence", "upload", str(forged), *as_operator, check=8)
    assert "BMSFW-E690" in refused.stderr and "BMSFW-E544" in refused.stderr, refused.stderr
    # ... the real bundle filed as another pack's (E695) ...
    refused = run_bmsfw(
        "fleet",
        "evidence",
        "upload",
        str(bundle_path),
        "--serial",
        "SIM0000002",
        *as_operator,
        check=8,
    )
    assert "BMSFW-E695" in refused.stderr, refused.stderr
    # ... and a viewer's token (403): filing is an operator's act.
    refused = run_bmsfw("fleet", "evidence", "upload", str(bundle_path), *as_viewer, check=8)
    assert "BMSFW-E603" in refused.stderr, refused.stderr
    assert "role 'viewer' may not use POST /api/v1/evidence" in refused.stderr
    assert _stored(server.db_url) == 0
    listed = run_bmsfw("fleet", "evidence", SERIAL, *as_operator, "--json", check=0)
    assert json.loads(listed.stdout) == []
    assert not _audit(server, "evidence.store")
    codes = sorted(e["detail"]["code"] for e in _audit(server, "evidence.refused"))
    assert codes == ["BMSFW-E690", "BMSFW-E695"]  # the viewer never got past the guard

    # Filed: the serial read from the bundle, recorded as filed by this operator.
    filed = run_bmsfw("fleet", "evidence", "upload", str(bundle_path), *as_operator, "--json")
    assert filed.returncode == 0, filed.stderr
    record = json.loads(filed.stdout)
    assert (record["device_serial"], record["sha256"]) == (SERIAL, sha256)
    assert (record["filed_by"], record["uploaded_by"]) == ("operator", "tech-anna")
    assert (record["outcome"], record["running_version"]) == ("updated", "2.0.0")
    assert record["campaign_id"] is None
    # Filed again (a retry): the same record, nothing added.
    again = run_bmsfw(
        "fleet", "evidence", "upload", str(bundle_path), "--serial", SERIAL, *as_operator, check=0
    )
    assert f"filed as record {record['id']}" in again.stdout
    assert "filed by operator tech-anna" in again.stdout
    assert _stored(server.db_url) == 1
    (stored,) = _audit(server, "evidence.store")
    assert stored["actor"] == "operator:tech-anna"
    assert stored["target"] == f"device:{SERIAL}"
    assert stored["detail"]["filed_by"] == "operator"
    assert stored["detail"]["sha256"] == sha256

    # The pack's update record lists it; downloaded, `bmsfw evidence verify` accepts it.
    table = run_bmsfw("fleet", "evidence", SERIAL, *as_operator, check=0)
    assert "filed by operator tech-anna" in table.stdout
    out = tmp_path / "downloaded"
    fetched = json.loads(
        run_bmsfw(
            "fleet", "evidence", SERIAL, *as_operator, "--out", str(out), "--json", check=0
        ).stdout
    )
    assert [(r["id"], r["filed_by"]) for r in fetched] == [(record["id"], "operator")]
    path = Path(fetched[0]["file"])
    assert path.read_bytes() == data
    verified = json.loads(run_bmsfw("evidence", "verify", str(path), "--json", check=0).stdout)
    assert verified["ok"] and verified["sha256"] == sha256
    assert verified["manifest"]["device"]["serial"] == SERIAL
