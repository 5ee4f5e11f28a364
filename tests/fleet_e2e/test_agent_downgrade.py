"""An approved downgrade campaign, end to end: the server offers it with its reason only
after a second person (release manager) approved it; a gateway installs it only when it
accepts approved downgrades; the staging request then carries the authorised-downgrade
flag, without which the BMS itself refuses a lower version over the air (BMSFW-E145).

Release 0.9.0 has the same security counter (1) as the running 1.0.0, so only the version
rule stands between a compromised server and an old image."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bmsfw.sim.fleet import SimFleet

from .conftest import Server, Vendor
from .test_agent_can import _can_agent

REASON = "2.0 drains the cells in storage mode; back to 0.9.0 until the fix"
ALL = [{"name": "all", "percent": 100, "soak_s": 0}]


@pytest.fixture(scope="module")
def old_release(vendor: Vendor) -> bytes:
    return vendor.release("0.9.0", 1)  # lower version, equal security counter


def _approved_downgrade_campaign(server: Server, data: bytes) -> tuple[int, str]:
    """A downgrade campaign to ``data`` for every device, started by a release manager's
    approval (the admin asked for it). Returns its id and the requester's label."""
    with server.client() as admin:
        release = admin.upload_release(data, "0.9.0.bmsfw")["id"]
        campaign = admin.post(
            "campaigns",
            {
                "name": "back to 0.9.0",
                "release_id": release,
                "phases": ALL,
                "error_threshold_pct": 100,  # every device's own outcome, no pause
                "selector": {"downgrade_reason": REASON},
            },
        )
        assert campaign["status"] == "needs_approval", campaign
        manager = admin.post("tokens", {"name": "rm-2", "role": "release_manager"})["token"]
    with server.client(manager) as second:
        assert second.post(f"campaigns/{campaign['id']}/approve")["status"] == "running"
    (approval,) = server.call("GET", "approvals?status=approved")
    assert approval["action"] == "campaign.start_downgrade"
    return int(campaign["id"]), str(approval["requested_by"])


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_a_gateway_that_does_not_accept_downgrades_refuses_an_approved_one(
    one_gateway: tuple[Server, SimFleet], old_release: bytes
) -> None:
    """The default gateway: the server's approval alone changes nothing (E414, and the
    detail says which switch the site would have to turn on); no BMS is touched."""
    server, sims = one_gateway  # both BMS run 1.0.0
    ops = {s: sims.device(s).flash_op_count for s in sims.serials()}
    campaign, _ = _approved_downgrade_campaign(server, old_release)
    sims.gateways[0].agent.run_once()
    for record in server.call("GET", f"campaigns/{campaign}/devices"):
        assert (record["state"], record["error_code"]) == ("rejected", "BMSFW-E414"), record
        assert "0.9.0 is lower than 1.0.0" in record["detail"]
        assert "--accept-approved-downgrades" in record["detail"]
    for serial in sims.serials():
        bms = sims.device(serial)
        assert bms.boot_status().running_version == "1.0.0"
        assert bms.flash_op_count == ops[serial], serial  # not one flash operation
        assert not bms.transfer_status().staged


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_an_approved_downgrade_campaign_installs_over_can_on_a_gateway_that_accepts_it(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    old_release: bytes,
    server_factory: Callable[..., Server],
) -> None:
    """Over CAN to a BMS in its own process: the staging request carries the flag (the
    BMS refuses 0.9.0 over the air without it), the BMS runs 0.9.0 confirmed, and the
    report, the agent's audit record and the server's copy of the report say why."""
    server = server_factory()
    agent_dir = tmp_path / "agent"
    with _can_agent(tmp_path, vendor, releases, server, accept_approved_downgrades=True) as agent:
        agent.run_once()  # the inventory
        campaign, requested_by = _approved_downgrade_campaign(server, old_release)
        agent.run_once()
        assert [c.state for c in agent.history][-1] == "succeeded", agent.history
        agent.run_once()  # the next check-in reports what the BMS runs now
    (device,) = server.call("GET", "devices")
    assert (device["firmware_version"], device["security_counter"]) == ("0.9.0", 1)
    why = (
        f"downgrade 1.0.0 -> 0.9.0 allowed: downgrade campaign {campaign} approved on the "
        f"fleet server (requested by {requested_by}): {REASON}"
    )
    (report_file,) = (agent_dir / "reports").glob("*.json")
    report: dict[str, Any] = json.loads(report_file.read_text())
    assert report["outcome"] == "updated"
    assert report["package"]["downgrade"] is True
    assert REASON in report["package"]["downgrade_reason"]
    assert why in report["warnings"]
    audited = [json.loads(line) for line in (agent_dir / "audit.jsonl").read_text().splitlines()]
    assert any(why in json.dumps(entry) for entry in audited), audited
    (update,) = server.call("GET", "devices/CANBMS0001/updates")
    assert update["state"] == "succeeded" and why in update["report"]["warnings"]
