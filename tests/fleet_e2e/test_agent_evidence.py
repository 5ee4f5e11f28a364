"""The fleet server keeps every update's evidence bundle per device (UN R156's update
record per system): the agent updates a virtual BMS in its own process over CAN, builds
the bundle (BLF bus trace included) and uploads it; the server (real uvicorn, HTTPS, on
SQLite and on PostgreSQL) verifies and stores it; an operator downloads it with
`bmsfw fleet evidence` and `bmsfw evidence verify` accepts the downloaded file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import can
import pytest
from sqlalchemy import create_engine, func, select

from bmsfw.evidence.bundle import verify_bundle
from bmsfw.fleet.models import EvidenceBundle
from cli_support import run_bmsfw
from fleet.conftest import db_url  # noqa: F401  (SQLite, and PostgreSQL when configured)

from .conftest import Server, Vendor
from .test_agent_can import _campaign_to_2_0_0, _can_agent

REQUEST_ID = 0x7E0  # node 1 (docs/uds.md)


def _request_sids(frames: list[can.Message]) -> list[int]:
    """The service id of every request the host sent (ISO-TP single and first frames)."""
    sids = []
    for frame in frames:
        if frame.arbitration_id != REQUEST_ID or frame.is_rx:
            continue
        kind = frame.data[0] >> 4
        if kind == 0:
            sids.append(frame.data[1])
        elif kind == 1:
            sids.append(frame.data[2])
    return sids


def _stored(db: str) -> int:
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(EvidenceBundle)).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.req("R156-FLEET-RECORD", "R156-UPDATE-RECORD", "R156-INFORM-BEFORE")
def test_agent_uploads_the_evidence_of_a_can_update_and_an_operator_verifies_it(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
    db_url: str,  # noqa: F811
) -> None:
    server = server_factory(db_url=db_url)
    with server.client() as admin:
        operator = admin.post("tokens", {"name": "auditor", "role": "operator"})["token"]
    agent_dir = tmp_path / "agent"
    with _can_agent(tmp_path, vendor, releases, server) as agent:
        agent.run_once()
        campaign = _campaign_to_2_0_0(server, releases)
        agent.run_once()
        assert [c.state for c in agent.history][-1] == "succeeded", agent.history
    # The agent's outbox is empty and its copy is gone: the server acknowledged it.
    assert not agent.state.outbox
    assert not list((agent_dir / "evidence").glob("*.zip"))
    assert _stored(server.db_url) == 1
    # The update report went with the result too (steps, preflight, no error), typed.
    with server.client(operator) as reader:
        (run,) = reader.get("devices/CANBMS0001/updates")
    sent = run["report"]
    assert (run["state"], sent["outcome"], sent["running_version"]) == (
        "succeeded",
        "updated",
        "2.0.0",
    )
    assert "verify-package" in [s["step"] for s in sent["steps"]]
    assert all(s["ok"] for s in sent["steps"]) and sent["error_code"] == ""
    assert sent["preflight"] and any(c["measured"] and c["limit"] for c in sent["preflight"])

    # The operator lists the device's update record and downloads the bundle.
    common = ["--server", server.url, "--token", operator, "--ca", str(server.ca)]
    listed = json.loads(run_bmsfw("fleet", "evidence", "CANBMS0001", *common, "--json").stdout)
    assert len(listed) == 1
    (record,) = listed
    assert (record["outcome"], record["running_version"]) == ("updated", "2.0.0")
    assert (record["campaign_id"], record["uploaded_by"]) == (campaign, "gateway:can-gw")
    out = tmp_path / "downloaded"
    fetched = json.loads(
        run_bmsfw("fleet", "evidence", "CANBMS0001", *common, "--out", str(out), "--json").stdout
    )
    path = Path(fetched[0]["file"])
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"]
    # Something we did not write of this download accepts it: the verify command, and
    # python-can's BLF reader on the bus trace of the whole flash sequence.
    verified = json.loads(run_bmsfw("evidence", "verify", str(path), "--json").stdout)
    assert verified["ok"] and verified["sha256"] == record["sha256"]
    assert verified["manifest"]["device"]["serial"] == "CANBMS0001"
    bundle = verify_bundle(data)
    report = bundle.json("report.json")
    assert (report["outcome"], report["running_version"]) == ("updated", "2.0.0")
    # what the person on site is told before and after (UN R156), kept with the record
    notice = bundle.files["notice.txt"].decode()
    assert notice.startswith("What will happen (before the update):")
    assert "over CAN" in notice and "the pack was out of service for" in notice
    audit = bundle.json("audit-record.json")
    assert audit["chain_intact"] and audit["record"]["hash"] == report["audit_hash"]
    blf = tmp_path / "bus.blf"
    blf.write_bytes(bundle.files["bus.blf"])
    frames = list(can.BLFReader(str(blf)))
    assert len(frames) == bundle.manifest["bus_trace"]["frames"] > 50
    sids = _request_sids(frames)
    assert 0x34 in sids and 0x37 in sids  # RequestDownload ... RequestTransferExit
    assert sids.index(0x34) < sids.index(0x36) < sids.index(0x37) < len(sids)
    assert 0x11 in sids[sids.index(0x37) :]  # ECUReset after the download

    # One changed byte in the downloaded file: verify refuses it (exit 7, E544).
    tampered = tmp_path / "tampered.zip"
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    tampered.write_bytes(bytes(changed))
    refused = run_bmsfw("evidence", "verify", str(tampered), check=7)
    assert "BMSFW-E544" in refused.stderr
