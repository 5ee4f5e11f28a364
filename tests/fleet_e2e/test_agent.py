"""The agent against the real server, one gateway at a time, poll by poll: safety-critical
releases are refused OTA by server, agent and device; a tampered artifact is refused and no
BMS is touched; an interrupted download resumes with Range; a restart mid-campaign reports
the true state; a slow link defers the download."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from agent_support import foreign_release
from bmsfw.errors import PackageError
from bmsfw.fleet.agent import Agent
from bmsfw.fleet.errors import SafetyCriticalOtaRefusedError
from bmsfw.fleet.testing import flip_artifact_byte, store_artifact
from bmsfw.package import release_header
from bmsfw.sim.direct import DirectSession
from bmsfw.sim.fleet import SimBmsProvider, SimBmsSession, SimFleet
from bmsfw.update.connect import Connection

from .conftest import Server, Vendor

ALL = [{"name": "all", "percent": 100, "soak_s": 0, "success_threshold_pct": 100}]


def _campaign(server: Server, data: bytes, **extra: Any) -> tuple[int, int]:
    with server.client() as c:
        release = int(c.upload_release(data, "r.bmsfw")["id"])
        campaign = c.post("campaigns", {"name": "c", "release_id": release, "phases": ALL, **extra})
    return release, int(campaign["id"])


def _states(server: Server, campaign_id: int) -> dict[str, dict[str, Any]]:
    return {d["device_serial"]: d for d in server.call("GET", f"campaigns/{campaign_id}/devices")}


def _untouched(fleet: SimFleet, flash_ops: dict[str, int]) -> None:
    for serial in fleet.serials():
        bms = fleet.device(serial)
        assert bms.boot_status().running_version == "1.0.0"
        assert bms.flash_op_count == flash_ops[serial], serial  # not one flash operation
        assert not bms.transfer_status().staged
        assert bms.bank_info("B").state == "empty"


def _swap_artifact(server: Server, release_id: int, data: bytes, **columns: Any) -> None:
    """What a compromised server does: new bytes in the store, the release row rewritten."""
    sha = store_artifact(server.db_url, data)
    engine = create_engine(server.db_url)
    sets = {"sha256": sha, "size_bytes": len(data), **columns}
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE releases SET " + ", ".join(f"{k} = :{k}" for k in sets) + " WHERE id = :id"
            ),
            {**sets, "id": release_id},
        )
    engine.dispose()


@pytest.mark.req("SEED-OTA-NOT-SAFETY-CRITICAL", "IEC61508-SAFETY-UPDATE")
def test_safety_critical_release_refused_by_server_agent_and_device(
    one_gateway: tuple[Server, SimFleet], releases: dict[str, bytes], vendor: Vendor
) -> None:
    server, fleet = one_gateway
    safety = releases["3.0.0-safety"]
    # 1. The server: it stores the release (wired installs need it) but refuses a campaign.
    with server.client() as c:
        release = c.upload_release(safety, "safety.bmsfw")
        assert release["ota_allowed"] is False
        with pytest.raises(SafetyCriticalOtaRefusedError):
            c.post("campaigns", {"name": "x", "release_id": release["id"], "phases": ALL})
    # 2. The agent: a compromised server offers it under a standard release's campaign.
    ops = {s: fleet.device(s).flash_op_count for s in fleet.serials()}
    release_id, campaign_id = _campaign(server, releases["2.0.0"], error_threshold_pct=100)
    offered = vendor.release("3.0.1", 4, safety_class="safety-critical")  # validly signed
    _swap_artifact(server, release_id, offered, version="3.0.1", security_counter=4)
    agent = fleet.gateways[0].agent
    agent.run_once()
    states = _states(server, campaign_id)
    for serial in fleet.serials():
        assert states[serial]["state"] == "rejected"
        assert states[serial]["error_code"].startswith("BMSFW-E1"), states[serial]
        assert "safety-critical" in states[serial]["detail"], states[serial]
    _untouched(fleet, ops)
    # 3. The device: staging the header over the OTA channel is refused by the BMS itself.
    bms = fleet.device(fleet.serials()[0])
    with pytest.raises(PackageError):
        DirectSession(bms).prepare(release_header(safety), channel="ota")
    assert not bms.transfer_status().staged


@pytest.mark.req("IEC62443-CR3.4")
def test_tampered_artifact_refused_and_no_bms_touched(
    one_gateway: tuple[Server, SimFleet], releases: dict[str, bytes]
) -> None:
    server, fleet = one_gateway
    agent = fleet.gateways[0].agent
    ops = {s: fleet.device(s).flash_op_count for s in fleet.serials()}
    # a) bit flip in the stored file: the offer's SHA-256 no longer matches.
    release_id, campaign_id = _campaign(server, releases["2.0.0"])
    sha = hashlib.sha256(releases["2.0.0"]).hexdigest()
    flip_artifact_byte(server.db_url, sha, len(releases["2.0.0"]) // 2)
    agent.run_once()
    assert {d["state"] for d in _states(server, campaign_id).values()} == {"downloading"}
    agent.run_once()  # a second mismatch: the release is rejected
    states = _states(server, campaign_id)
    assert {d["state"] for d in states.values()} == {"rejected"}
    assert {d["error_code"] for d in states.values()} == {"BMSFW-E621"}
    _untouched(fleet, ops)
    with server.client() as c:
        c.post(f"campaigns/{campaign_id}/cancel", {"reason": "tampered"})

    # b) the server rewrites the record too: a package signed by another vendor's key.
    forged = foreign_release("2.1.0", 3)
    release_id, campaign_id = _campaign(server, releases["2.1.0"])
    _swap_artifact(server, release_id, forged)
    agent.run_once()
    states = _states(server, campaign_id)
    assert {d["state"] for d in states.values()} == {"rejected"}
    codes = {d["error_code"] for d in states.values()}
    assert len(codes) == 1 and codes.pop().startswith("BMSFW-E1")  # the package's own code
    _untouched(fleet, ops)
    assert not list(agent.artifacts_dir.glob("*.bmsfw"))  # the forged file was not kept


def test_interrupted_download_resumes_with_range(
    one_gateway: tuple[Server, SimFleet], releases: dict[str, bytes]
) -> None:
    server, fleet = one_gateway
    gateway = fleet.gateways[0]
    gateway.transport.cut_next_downloads = 1
    _, campaign_id = _campaign(server, releases["2.0.0"])
    gateway.agent.run_once()  # the download breaks off half-way
    size = len(releases["2.0.0"])
    part = next(gateway.agent.artifacts_dir.glob("*.part"))
    assert part.stat().st_size == size // 2
    assert {d["state"] for d in _states(server, campaign_id).values()} == {"downloading"}
    gateway.agent.run_once()  # resumes, verifies, installs
    assert gateway.transport.artifact_requests == [("", 200), (f"bytes={size // 2}-", 206)]
    (result,) = gateway.agent.downloads
    assert (result.resumed_from, result.transferred_bytes) == (size // 2, size - size // 2)
    assert {d["state"] for d in _states(server, campaign_id).values()} == {"succeeded"}
    for serial in fleet.serials():
        assert fleet.device(serial).boot_status().running_version == "2.0.0"


@pytest.mark.req("SEED-OTA-BANDWIDTH")
def test_slow_link_defers_the_download(
    one_gateway: tuple[Server, SimFleet], releases: dict[str, bytes]
) -> None:
    server, fleet = one_gateway
    ops = {s: fleet.device(s).flash_op_count for s in fleet.serials()}
    # A floor no link reaches: the agent measures, stops and waits (partial file kept).
    _, campaign_id = _campaign(server, releases["2.0.0"], bandwidth_floor_bps=10**13)
    agent = fleet.gateways[0].agent
    agent.config = dataclasses.replace(agent.config, bandwidth_probe_bytes=1)
    agent.run_once()
    states = _states(server, campaign_id)
    assert {d["state"] for d in states.values()} == {"waiting"}
    assert {d["error_code"] for d in states.values()} == {"BMSFW-E671"}
    assert "Mbit/s" in next(iter(states.values()))["detail"]
    _untouched(fleet, ops)


class _GatewayCrash(BaseException):
    """The gateway process dies (not an Exception: nothing may catch it)."""


class _CrashAfterReset(SimBmsSession):
    def reset(self) -> None:
        super().reset()
        raise _GatewayCrash


class _CrashingProvider(SimBmsProvider):
    crash = True

    def open(self) -> Connection:
        connection = super().open()
        if self.crash:
            connection.sessions = [_CrashAfterReset(s.bms) for s in connection.sessions]  # type: ignore[attr-defined]
        return connection


@pytest.mark.parametrize("downtime_s", [0.0, 400.0], ids=["back-quickly", "after-watchdog"])
def test_agent_restart_mid_campaign_reports_true_state(
    one_gateway: tuple[Server, SimFleet], releases: dict[str, bytes], downtime_s: float
) -> None:
    server, fleet = one_gateway
    gateway = fleet.gateways[0]
    provider = _CrashingProvider(gateway.provider.paths, gateway.clock)
    provider.devices = gateway.provider.devices  # the same powered devices
    agent = Agent(gateway.agent.config, gateway.agent.client, provider, clock=gateway.clock)
    _, campaign_id = _campaign(server, releases["2.0.0"], error_threshold_pct=100)
    with pytest.raises(_GatewayCrash):
        agent.run_once()  # dies right after resetting the first BMS into the new image
    first = sorted(_states(server, campaign_id).items())
    crashed = next(s for s, d in first if d["state"] == "installing")
    assert fleet.device(crashed).boot_status().image_state in ("test", "none")
    # The gateway is down; the BMS runs on (past its watchdog window in the second case).
    fleet.device(crashed).run_for(downtime_s or 5.0)
    provider.crash = False
    restarted = Agent(gateway.agent.config, gateway.agent.client, provider, clock=gateway.clock)
    assert restarted.state.job(campaign_id, crashed).state == "installing"  # type: ignore[union-attr]
    restarted.run_once()
    record = _states(server, campaign_id)[crashed]
    status = fleet.device(crashed).boot_status()
    if downtime_s == 0.0:
        assert record["state"] == "succeeded", record
        assert "after restart" in record["detail"]
        assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
    else:
        assert (record["state"], record["error_code"]) == ("rolled_back", "BMSFW-E512"), record
        assert status.running_version == "1.0.0"
    # The other BMS of the gateway was updated normally after the restart.
    other = next(s for s in fleet.serials() if s != crashed)
    assert _states(server, campaign_id)[other]["state"] == "succeeded"


@pytest.mark.req("SEED-RUNTIME-INTEGRITY", "NIST800-193-DETECT")
def test_integrity_fault_and_firmware_hash_reach_the_server(
    one_gateway: tuple[Server, SimFleet], vendor: Vendor
) -> None:
    server, fleet = one_gateway
    # A correctly signed release whose firmware corrupts its own bank after start.
    _, campaign_id = _campaign(
        server, vendor.release("2.2.0", 2, behaviour="integrity-fault"), error_threshold_pct=100
    )
    agent = fleet.gateways[0].agent
    agent.run_once()
    assert {d["state"] for d in _states(server, campaign_id).values()} == {"succeeded"}
    agent.run_once()
    reported = {d["serial"]: d for d in server.call("GET", "devices")}
    for serial in fleet.serials():
        sha = reported[serial]["firmware_sha256"]
        assert len(sha) == 64 and reported[serial]["integrity_ok"]
    serial = fleet.serials()[0]
    fleet.device(serial).run_for(130.0)  # past the periodic re-hash of the running bank
    agent.run_once()
    device = server.call("GET", f"devices/{serial}")
    assert device["integrity_ok"] is False and "re-hash" in device["integrity_detail"]
    kinds = {(f["device_serial"], f["kind"]) for f in server.call("GET", "flags")}
    assert (serial, "integrity_fault") in kinds
