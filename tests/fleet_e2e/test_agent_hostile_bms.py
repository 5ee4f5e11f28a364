"""Hostile BMS behind ``bmsfw agent``: the fake CAN BMS of tests/attack_bms (our own UDS
server on python-can + can-isotp, no bmsfw code on the device side), three of them on
one gateway, driven by the real fleet server. A false success is reported as a failure,
a BMS that answers garbage or too slowly costs one device, never the poll, and the
honest BMS beside them is updated in the same poll."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import can
import pytest

from attack_bms.hostile_can import Behaviour, HostileUdsBms
from bmsfw.fleet.agent import Agent, AgentConfig
from bmsfw.protocol.deadline import StepBudgets
from bmsfw.protocol.uds import UdsClientConfig, open_uds_session
from bmsfw.sim import lab
from bmsfw.update.connect import Connection
from bmsfw.update.profile import BootLimits, UpdateProfile

from .conftest import Server, Vendor

_channels = itertools.count()
BUDGET_S = 2.0
CLIENT = UdsClientConfig(
    p2_min_s=0.25,
    p2_star_s=1.0,
    p2_star_max_s=2.0,
    step_timeout_s=5.0,
    budgets=StepBudgets(**{f.name: BUDGET_S for f in dataclasses.fields(StepBudgets)}),
)
PROFILE = UpdateProfile(boot=BootLimits(boot_timeout_s=2.0, revert_timeout_s=2.0))
REFUSED = b"\x01" + b"\x0aBMSFW-E210" + b"\x07refused"


class HostileProvider:
    """The agent's BmsProvider: one UdsSession per fake BMS, opened for each poll."""

    def __init__(self, channels: list[str]) -> None:
        self.channels = channels

    def open(self) -> Connection:
        sessions, closers = [], []
        for channel in self.channels:
            bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
            sessions.append(open_uds_session(f"virtual:{channel}", 1, config=CLIENT, bus=bus))
            closers.append(bus.shutdown)
        return Connection(sessions, closers)  # type: ignore[arg-type]


@contextlib.contextmanager
def fakes(*behaviours: Behaviour) -> Iterator[tuple[list[str], list[HostileUdsBms]]]:
    with contextlib.ExitStack() as stack:
        channels = [f"agent-hostile-{next(_channels)}" for _ in behaviours]
        bmss = [
            stack.enter_context(HostileUdsBms(c, b))
            for c, b in zip(channels, behaviours, strict=True)
        ]
        for bms in bmss:
            bms.new_version = "2.0.0+0"
        yield channels, bmss


def campaign_to_all(server: Server, package: bytes) -> str:
    with server.client() as operator:
        release = operator.upload_release(package, "2.0.0.bmsfw")["id"]
        return str(
            operator.post(
                "campaigns",
                {
                    "name": "hostile",
                    "release_id": release,
                    "phases": [{"name": "all", "percent": 100, "soak_s": 0}],
                    # every device gets its install: the threshold would pause the
                    # campaign after the first hostile BMS failed
                    "error_threshold_pct": 100,
                },
            )["id"]
        )


def test_agent_with_hostile_bms_reports_the_truth_and_updates_the_honest_one(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = server_factory()
    with server.client() as admin:
        token = admin.post("gateways", {"name": "gw", "site": "depot", "tags": []})["token"]
    behaviours = (
        # false success: the confirm answers "refused" but the boot status says confirmed
        Behaviour(serial="SN-LIAR", confirm_status=REFUSED, confirm_makes_confirmed=True),
        # 0x78 for ever on verify: the step's deadline ends it
        Behaviour(serial="SN-SLOW", stall_prefix=bytes.fromhex("3101ff01"), stall_s=math.inf),
        # garbage identity: a serial that is not text
        Behaviour(serial="SN-GARBAGE", did_override={0xF18C: b"\xff\xfe\x00\x01"}),
        Behaviour(serial="SN-GOOD"),
    )
    with fakes(*behaviours) as (channels, bmss), server.client(token) as client:
        agent = Agent(
            AgentConfig(
                state_dir=tmp_path / "agent",
                trust_root_pem=vendor.root_pem,
                credentials=lab.tester_for(vendor.pki),
                profile=PROFILE,
                confirmed=frozenset(c.id for c in PROFILE.confirmations),
            ),
            client,
            HostileProvider(channels),
        )
        first = agent.run_once()
        assert first.devices == 3  # the garbage one is not reported, the poll goes on
        # ... and the server was told why, with the check-in
        told = [r.getMessage() for r in caplog.records if "BMSFW-E686" in r.getMessage()]
        assert told and "SN-GARBAGE" not in told[0] and "\\x00" in told[0], told
        serials = {d["serial"] for d in server.call("GET", "devices")}
        assert serials == {"SN-LIAR", "SN-SLOW", "SN-GOOD"}
        campaign = campaign_to_all(server, releases["2.0.0"])
        started = time.monotonic()
        poll = agent.run_once()
        seconds = time.monotonic() - started
        records = server.call("GET", f"campaigns/{campaign}/devices")
        states = {r["device_serial"]: r for r in records}
        assert states["SN-GOOD"]["state"] == "succeeded", states
        liar, slow = states["SN-LIAR"], states["SN-SLOW"]
        assert liar["state"] == "failed" and "E210" in str(liar), liar
        assert slow["state"] != "succeeded" and "E366" in str(slow), slow
        assert poll.offers == 3
        # bounded: three installs with 2 s step bounds, not one BMS's forever
        assert seconds < 60, seconds
        good, liar_bms, slow_bms = bmss[3], bmss[0], bmss[1]
        assert good.s.version == "2.0.0+0" and good.s.image_state == "confirmed"
        assert liar_bms.writes[-1] == "31010203"  # nothing written after the refused confirm
        assert slow_bms.resets == 0 and slow_bms.s.version == "1.0.0+0"
        # the agent is alive and answers the next poll
        assert agent.run_once().devices == 3
