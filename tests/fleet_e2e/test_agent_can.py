"""The agent updates a virtual BMS that runs in its own process, over CAN (UDS on ISO-TP,
python-can udp_multicast), with tester authentication: the real field path, driven by the
fleet server."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent_support import HW_REV, MODEL
from bmsfw.fleet.agent import Agent, AgentConfig, LinkProvider
from bmsfw.package import TrustAnchors, key_hash, verify_release
from bmsfw.protocol import uds
from bmsfw.protocol.session import TesterCredentials
from bmsfw.sim import DeviceSpec, FlashSpec, provision
from bmsfw.sim.lab import unique_multicast_link
from bmsfw.sim.sim_can import SimCanProcess, node_state_dir
from bmsfw.update.connect import parse_links
from bmsfw.update.profile import PreflightLimits, UpdateProfile

from .conftest import Server, Vendor


def _unique_link() -> str:
    """A CAN link no other test shares, in this process or another (xdist workers)."""
    return unique_multicast_link()


def _provision_can_bms(
    state_dir: Path, vendor: Vendor, releases: dict[str, bytes]
) -> TesterCredentials:
    """Node 1 of a CAN simulator under ``state_dir`` (serial CANBMS0001, running 1.0.0,
    ``vendor``'s keys in its OTP) and tester credentials it accepts."""
    pki = vendor.pki
    trust = TrustAnchors.from_root_certificate(vendor.root_pem)
    provision(
        node_state_dir(state_dir, 1),
        initial_image=verify_release(releases["1.0.0"], trust).image("app"),
        root_key_hash=key_hash(pki.root_key),
        image_key_hash=key_hash(pki.image_signing_key),
        spec=DeviceSpec(
            model=MODEL, hw_revision=HW_REV, flash=FlashSpec.small(bank_size=16 * 1024)
        ),
        serial="CANBMS0001",
    )
    key, cert = uds.issue_tester_certificate(pki.intermediate_key, pki.intermediate_certificate)
    return uds.tester_credentials(key, cert, [pki.intermediate_certificate, pki.root_certificate])


def _quick_profile() -> UpdateProfile:
    """The default profile but for a preflight supply-voltage window of 0.2 s."""
    return dataclasses.replace(
        UpdateProfile(), preflight=dataclasses.replace(PreflightLimits(), supply_window_s=0.2)
    )


@contextlib.contextmanager
def _can_agent(
    tmp_path: Path, vendor: Vendor, releases: dict[str, bytes], server: Server, **config: Any
) -> Iterator[Agent]:
    """A gateway registered on ``server`` and its agent (state in ``tmp_path/agent``,
    ``config``: more AgentConfig fields) over CAN to node 1 of a simulator in its own
    process (CANBMS0001 on 1.0.0); the simulator stops when the block ends."""
    state_dir = tmp_path / "can-sim"
    credentials = _provision_can_bms(state_dir, vendor, releases)
    with server.client() as admin:
        token = admin.post("gateways", {"name": "can-gw", "site": "depot", "tags": []})["token"]
    link = _unique_link()
    profile = _quick_profile()
    with (
        SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"),
        server.client(token) as client,
    ):
        yield Agent(
            AgentConfig(
                state_dir=tmp_path / "agent",
                trust_root_pem=vendor.root_pem,
                credentials=credentials,
                profile=profile,
                confirmed=frozenset(c.id for c in profile.confirmations),
                **config,
            ),
            client,
            LinkProvider(tuple(parse_links(can=link, nodes=[1]))),
        )


def _campaign_to_2_0_0(server: Server, releases: dict[str, bytes]) -> int:
    """Upload release 2.0.0 and start a campaign of one phase (every device, no soak) with it."""
    with server.client() as operator:
        release = operator.upload_release(releases["2.0.0"], "2.0.0.bmsfw")["id"]
        campaign: int = operator.post(
            "campaigns",
            {
                "name": "over CAN",
                "release_id": release,
                "phases": [{"name": "all", "percent": 100, "soak_s": 0}],
            },
        )["id"]
    return campaign


def test_agent_updates_a_bms_in_its_own_process_over_can(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory()
    with _can_agent(tmp_path, vendor, releases, server) as agent:
        first = agent.run_once()
        assert first.devices == 1
        (device,) = server.call("GET", "devices")
        assert (device["serial"], device["firmware_version"]) == ("CANBMS0001", "1.0.0")
        campaign = _campaign_to_2_0_0(server, releases)
        agent.run_once()
        states = [c.state for c in agent.history]
        assert states == [
            "downloading", "downloaded", "installing", "verifying", "succeeded"
        ], agent.history  # fmt: skip
        (record,) = server.call("GET", f"campaigns/{campaign}/devices")
        assert record["state"] == "succeeded"
        agent.run_once()  # the next check-in reports what the BMS runs now
        (device,) = server.call("GET", "devices")
        assert (device["firmware_version"], device["security_counter"]) == ("2.0.0", 2)
        assert server.call("GET", "devices/CANBMS0001/backups")
