"""Server + 10 simulated gateways x 3 virtual BMS: a phased campaign reaches 100 %, then a
release that fails its self-test on some devices pauses the campaign at the error threshold
and those devices are back on the old firmware."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bmsfw.sim.fleet import SimFleet, SimFleetConfig

from .conftest import Server, Vendor, wait_for

PHASES = [
    {"name": "canary", "devices": 3, "soak_s": 0, "success_threshold_pct": 100},
    {"name": "half", "percent": 50, "soak_s": 0, "success_threshold_pct": 100},
    {"name": "all", "percent": 100, "soak_s": 0, "success_threshold_pct": 100},
]


def _upload(server: Server, data: bytes, name: str) -> int:
    with server.client() as c:
        return int(c.upload_release(data, name)["id"])


def _campaign(server: Server, campaign_id: int) -> dict[str, Any]:
    result: dict[str, Any] = server.call("GET", f"campaigns/{campaign_id}")
    return result


@pytest.mark.req("SEED-OTA-AUTO-ROLLBACK")
def test_phased_campaign_then_selftest_failures_pause_and_roll_back(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory()
    config = SimFleetConfig(
        server_url=server.url,
        state_dir=tmp_path / "sim",
        trust_root_pem=vendor.root_pem,
        initial_release=releases["1.0.0"],
        gateways=10,
        bms_per_gateway=3,
        ca_file=server.ca,
        max_poll_interval_s=0.3,
        seed=7,
    )
    with SimFleet(config) as fleet:
        with server.client() as admin:
            fleet.build(fleet.register(admin))
        fleet.start()
        wait_for("30 devices in the inventory", lambda: len(server.call("GET", "devices")) == 30)

        # --- campaign 1: canary 3 -> 50 % -> 100 %, every device succeeds ----------------
        r2 = _upload(server, releases["2.0.0"], "2.0.0.bmsfw")
        c1 = server.call(
            "POST",
            "campaigns",
            {"name": "to 2.0.0", "release_id": r2, "phases": PHASES, "error_threshold_pct": 10},
        )["id"]
        phases_seen: set[int] = set()

        def completed() -> bool:
            campaign = _campaign(server, c1)
            phases_seen.add(campaign["current_phase"])
            assert campaign["status"] in ("running", "completed"), campaign
            return bool(campaign["status"] == "completed")

        wait_for("campaign 1 to complete", completed, timeout_s=60)
        campaign = _campaign(server, c1)
        assert campaign["states"]["succeeded"] == 30 == campaign["targets"]
        assert phases_seen >= {1, 2}  # it went through the phases, not all at once
        for serial in fleet.serials():
            status = fleet.device(serial).boot_status()
            assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
            assert fleet.device(serial).otp.security_counter == 2
        devices = server.call("GET", f"campaigns/{c1}/devices")
        for record in devices:
            states = [h["state"] for h in record["history"]]
            assert states[0] == "offered" and states[-1] == "succeeded", record
            assert {"downloaded", "installing", "verifying"} <= set(states), record
        # Each gateway downloaded the artifact once for its three BMS.
        assert all(len(gw.agent.downloads) == 1 for gw in fleet.gateways)
        # Backups reached the server; the reported firmware hashes match the release.
        one = fleet.serials()[0]
        backups = server.call("GET", f"devices/{one}/backups")
        assert backups and "2.0.0" in backups[-1]["reason"]
        wait_for(
            "inventory on 2.0.0",
            lambda: {d["firmware_version"] for d in server.call("GET", "devices")} == {"2.0.0"},
        )
        assert server.call("GET", "flags") == []

        # --- campaign 2: 6 devices whose self-test fails after an update -----------------
        faulty = set(sorted(fleet.serials())[::5])  # one in five, spread over gateways
        fleet.inject("fail_selftest", faulty)
        r3 = _upload(server, releases["2.1.0"], "2.1.0.bmsfw")
        c2 = server.call(
            "POST",
            "campaigns",
            {"name": "to 2.1.0", "release_id": r3, "phases": PHASES, "error_threshold_pct": 5},
        )["id"]

        def paused() -> bool:
            return bool(_campaign(server, c2)["status"] == "paused")

        wait_for("campaign 2 to pause", paused, timeout_s=60)
        campaign = _campaign(server, c2)
        assert "error threshold" in campaign["pause_reason"], campaign
        assert campaign["states"]["succeeded"] < 30
        # Let agents finish what they had started before the pause.
        wait_for(
            "no device mid-install",
            lambda: all(
                d["state"] not in ("installing", "verifying")
                for d in server.call("GET", f"campaigns/{c2}/devices")
            ),
        )
        records = {d["device_serial"]: d for d in server.call("GET", f"campaigns/{c2}/devices")}
        rolled_back = {s for s, d in records.items() if d["state"] == "rolled_back"}
        assert rolled_back and rolled_back <= faulty
        for serial in rolled_back:
            assert records[serial]["error_code"] == "BMSFW-E511", records[serial]
            status = fleet.device(serial).boot_status()
            # Back on the old firmware, confirmed, security counter not raised.
            assert status.running_version == "2.0.0", status
            assert fleet.device(serial).otp.security_counter == 2
        for serial, record in records.items():
            version = fleet.device(serial).boot_status().running_version
            expected = "2.1.0" if record["state"] == "succeeded" else "2.0.0"
            assert version == expected, (serial, record["state"], version)
        # The pause holds: after more polls no device of the paused campaign moves on.
        before = {s: d["state"] for s, d in records.items()}
        gateway = fleet.gateways[0]
        polls = len(gateway.agent.history)
        time.sleep(1.0)  # several poll intervals of every gateway
        after = {
            d["device_serial"]: d["state"] for d in server.call("GET", f"campaigns/{c2}/devices")
        }
        assert after == before
        assert not [c for c in gateway.agent.history[polls:] if c.campaign_id == c2]
        assert all(not gw.errors for gw in fleet.gateways)
