"""The simulated fleet's faults against the real server: dropped connections and cut
downloads, power lost mid-flash, packs outside the preflight window. A campaign still
finishes; each device ends in the state its fault explains; the CLI runs the same."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from bmsfw.cli._main import cli
from bmsfw.cli._registry import register_all
from bmsfw.sim.fleet import SimFleet, SimFleetConfig

from .conftest import Server, Vendor, wait_for

PHASE = {"name": "all", "percent": 100, "soak_s": 0, "success_threshold_pct": 50}


def test_campaign_completes_through_drops_power_loss_and_preflight_refusals(
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
        gateways=3,
        bms_per_gateway=3,
        drop_pct=15,
        power_loss_pct=34,  # 3 of 9
        fail_preflight_pct=12,  # 1 of 9
        max_preflight_attempts=2,
        ca_file=server.ca,
        max_poll_interval_s=0.2,
        seed=3,
    )
    with SimFleet(config) as fleet:
        with server.client() as admin:
            fleet.build(fleet.register(admin))
        assert (len(fleet.faults["power_loss"]), len(fleet.faults["fail_preflight"])) == (3, 1)
        fleet.start()
        wait_for("9 devices checked in", lambda: len(server.call("GET", "devices")) == 9)
        with server.client() as c:
            release = c.upload_release(releases["2.0.0"], "2.0.0.bmsfw")["id"]
            campaign = c.post(
                "campaigns",
                {
                    "name": "faulty fleet",
                    "release_id": release,
                    "phases": [PHASE],
                    "error_threshold_pct": 100,
                },
            )["id"]
        wait_for(
            "campaign to complete",
            lambda: server.call("GET", f"campaigns/{campaign}")["status"] == "completed",
            timeout_s=60,
        )
        fleet.stop()
        records = {
            d["device_serial"]: d for d in server.call("GET", f"campaigns/{campaign}/devices")
        }
        (refused,) = fleet.faults["fail_preflight"]
        assert (records[refused]["state"], records[refused]["error_code"]) == (
            "failed",
            "BMSFW-E401",
        )
        assert fleet.device(refused).boot_status().running_version == "1.0.0"
        for serial, record in records.items():
            if serial != refused:
                assert record["state"] == "succeeded", record
                status = fleet.device(serial).boot_status()
                assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
        # The power really went: each cut device was powered again and resumed.
        assert sum(gw.provider.power_cycles for gw in fleet.gateways) >= 3
        assert sum(gw.transport.dropped + gw.transport.cut_downloads for gw in fleet.gateways)
        assert all(not gw.errors for gw in fleet.gateways)


def test_cli_agent_with_in_process_bms(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory()
    with server.client() as admin:
        token = admin.post("gateways", {"name": "cli-gw", "site": "depot", "tags": []})["token"]
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "root.pem").write_bytes(vendor.root_pem)
    (tmp_path / "v1.bmsfw").write_bytes(releases["1.0.0"])
    register_all(cli)
    args = [
        "agent", "--server", server.url, "--token-file", str(tmp_path / "token"),
        "--ca", str(server.ca), "--trust-root", str(tmp_path / "root.pem"),
        "--state-dir", str(tmp_path / "agent"), "--sim", "2",
        "--sim-initial", str(tmp_path / "v1.bmsfw"),
        "--confirm", "flammables-removed", "--confirm", "stable-power", "--once", "--json",
    ]  # fmt: skip
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert {d["serial"] for d in server.call("GET", "devices")} == {"SIM0001", "SIM0002"}
    with server.client() as c:
        release = c.upload_release(releases["2.0.0"], "2.0.0.bmsfw")["id"]
        c.post("campaigns", {"name": "cli", "release_id": release,
                             "phases": [{"name": "all", "percent": 100, "soak_s": 0}]})  # fmt: skip
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    changes = [json.loads(line) for line in second.output.splitlines() if line.startswith("{")]
    finals = {c["serial"]: c["state"] for c in changes}
    assert finals == {"SIM0001": "succeeded", "SIM0002": "succeeded"}, second.output
    # A confirmation the profile does not know is a usage error, not a silent pass.
    bad = CliRunner().invoke(cli, [*args, "--confirm", "no-such-check"])
    assert bad.exit_code != 0
    assert "no-such-check" in str(bad.exception)
