"""The agent rejects, for each BMS, a release whose image is signed by a key that BMS did
not fuse, from the key hashes its inventory reported, before it opens a session to the BMS:
the server sees "rejected" with E134, and no BMS is touched."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_support import Vendor
from bmsfw.package import generate_key

from .conftest import Server, one_gateway_fleet

ALL = [{"name": "all", "percent": 100, "soak_s": 0, "success_threshold_pct": 100}]


@pytest.mark.req("SEED-SECURE-BOOT")
def test_a_release_signed_by_an_unfused_image_key_is_rejected_per_device(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory()
    fleet = one_gateway_fleet(tmp_path, vendor, releases["1.0.0"], server)
    try:
        agent = fleet.gateways[0].agent
        agent.run_once()  # the inventory, with each BMS's fused image key
        other = dataclasses.replace(
            vendor.pki, image_signing_key=generate_key(vendor.pki.algorithm)
        )
        foreign = Vendor(other, vendor.root_pem).release("2.0.0", 2)  # trusted signer, other key
        ops = {s: fleet.device(s).flash_op_count for s in fleet.serials()}
        with server.client() as c:
            release = int(c.upload_release(foreign, "r.bmsfw")["id"])
            campaign = c.post(
                "campaigns",
                {"name": "c", "release_id": release, "phases": ALL, "error_threshold_pct": 100},
            )
        agent.run_once()
        states = {
            d["device_serial"]: d for d in server.call("GET", f"campaigns/{campaign['id']}/devices")
        }
        assert set(states) == set(fleet.serials())
        for serial, state in states.items():
            assert (state["state"], state["error_code"]) == ("rejected", "BMSFW-E134"), state
            # decided on the inventory's facts, before a session to the BMS is opened
            assert state["detail"].startswith("refused for this BMS: component 'app' is signed")
            bms = fleet.device(serial)
            assert bms.flash_op_count == ops[serial]  # not one flash operation
            assert not bms.transfer_status().staged
            assert bms.boot_status().running_version == "1.0.0"
    finally:
        fleet.close()
