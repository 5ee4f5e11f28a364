"""`bmsfw backup --server`: a technician's backup goes to the drive and to the fleet server.

A virtual BMS in its own process on CAN (udp_multicast), a real fleet server
(uvicorn, HTTPS with a test CA, SQLite) in a thread, and `bmsfw` run as a user would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import create_token, init_database
from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.fleet.protocol import BmsReport, CheckIn
from bmsfw.fleet.testing import write_test_ca_and_server
from bmsfw.update.backup import load_backup
from server_support import serve_https

from .conftest import HW_REV, MODEL, Bench, Kit, run_bmsfw


@dataclass(frozen=True)
class CloudServer:
    url: str
    ca: Path
    admin_token: str
    operator_token_file: Path

    def client(self, token: str) -> FleetClient:
        return FleetClient(ClientConfig(self.url, token, ca_file=self.ca))


@pytest.fixture
def cloud(tmp_path: Path, kit: Kit) -> Iterator[CloudServer]:
    tls = write_test_ca_and_server(tmp_path, ca_name="bmsfw cloud-backup test CA")
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    admin = init_database(db_url)
    assert admin is not None
    operator = str(create_token(db_url, role="operator", name="tech-anna")["token"])
    token_file = tmp_path / "operator.token"
    token_file.write_text(operator + "\n")
    config = ServerConfig(
        db_url=db_url,
        trust_root_pem=kit.trust.read_bytes(),
        tick_interval_s=0,
        migrate=False,
    )
    with serve_https(create_app(config), tls, "cloud-backup") as url:
        yield CloudServer(url, tls.ca, admin, token_file)


def _register(cloud: CloudServer, serial: str) -> None:
    """The device's site gateway reports it in a check-in, as the agent would."""
    with cloud.client(cloud.admin_token) as admin:
        gateway = admin.post("gateways", {"name": "site-gw", "site": "harbour", "tags": []})
    with cloud.client(gateway["token"]) as agent:
        agent.check_in(
            CheckIn(
                devices=[
                    BmsReport(
                        serial=serial, model=MODEL, hw_revision=HW_REV, firmware_version="1.0.0"
                    )
                ]
            )
        )


@pytest.mark.req("SEED-CONFIG-BACKUP")
def test_backup_goes_to_the_drive_and_the_server_with_the_same_sha256(
    make_bench: Callable[..., Bench], cloud: CloudServer, tmp_path: Path
) -> None:
    bench = make_bench()
    bench.start()
    drive = tmp_path / "usb-drive"
    server_args = ["--server", cloud.url, "--token-file", str(cloud.operator_token_file)]
    server_args += ["--ca", str(cloud.ca)]

    # Not in the inventory yet: the server refuses, the local backup stands.
    refused = run_bmsfw(
        "backup", *bench.link_args(1), "--dir", str(drive), *server_args, "--json", check=8
    )
    first = json.loads(refused.stdout)
    assert len(first) == 1 and first[0]["server_error"]["code"] == "BMSFW-E604"
    assert "server" not in first[0]
    local_first = Path(first[0]["path"])
    assert load_backup(local_first).identity.serial == "SIM0000001"
    assert f"local backup is safe at {local_first}" in " ".join(refused.stderr.split())
    assert "BMSFW-E604" in refused.stderr

    _register(cloud, "SIM0000001")
    done = run_bmsfw(
        "backup", *bench.link_args(1), "--dir", str(drive), *server_args, "--json", check=0
    )
    (record,) = json.loads(done.stdout)
    local = Path(record["path"])
    assert local != local_first and local.parent == drive
    document = json.loads(local.read_text())
    local_sha256 = hashlib.sha256(
        json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert record["server"]["sha256"] == local_sha256
    assert record["server"]["uploaded_by"] == "tech-anna"

    operator = cloud.operator_token_file.read_text().strip()
    with cloud.client(operator) as client:
        stored = client.get_backup(record["server"]["id"])
        listed = client.list_device_backups("SIM0000001")
    assert stored["config"] == document  # the same JSON document, byte for byte once canonical
    assert stored["sha256"] == local_sha256 and stored["device_serial"] == "SIM0000001"
    assert [(b.id, b.uploaded_by) for b in listed] == [(record["server"]["id"], "tech-anna")]

    # The human-readable form says both where the file is and what the server filed.
    text = run_bmsfw("backup", *bench.link_args(1), "--dir", str(drive), *server_args, check=0)
    assert "backup written and read back" in text.stdout
    assert "filed on" in text.stdout and "sha256" in text.stdout
