"""Campaign progression, thresholds, pause/resume/cancel and the OTA safety rule."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

from bmsfw.fleet.auth import hash_token
from bmsfw.fleet.campaigns import (
    CampaignCounts,
    CampaignSnapshot,
    assign_phases,
    cumulative_sizes,
    decide,
    rollout_order,
    window_open,
)
from bmsfw.fleet.errors import FleetError, InvalidCampaignSpecError, NoTargetDevicesError
from bmsfw.fleet.protocol import MaintenanceWindow
from bmsfw.fleet.schemas import CampaignSpec, PhaseSpec

from .conftest import START, Fleet, bms, make_release

HAPPY = ("downloading", "downloaded", "installing", "verifying", "succeeded")


def _site(fleet: Fleet, gateways: int = 10, per_gateway: int = 3) -> dict[str, str]:
    """Register gateways with devices; returns serial -> gateway name."""
    owner = {}
    for g in range(gateways):
        name = f"gw{g:02d}"
        fleet.add_gateway(name, f"site-{g % 3}")
        serials = [f"{name}-bms{i}" for i in range(per_gateway)]
        fleet.check_in(name, [bms(s) for s in serials])
        owner.update(dict.fromkeys(serials, name))
    return owner


def _poll_all(fleet: Fleet, owner: dict[str, str]) -> list[dict[str, Any]]:
    offers = []
    for gateway in sorted(set(owner.values())):
        serials = [s for s, g in owner.items() if g == gateway]
        offers += fleet.check_in(gateway, [bms(s) for s in serials])["offers"]
    return offers


def _finish(fleet: Fleet, owner: dict[str, str], offers: list[dict[str, Any]], cid: int) -> None:
    for offer in offers:
        if offer["state"] != "offered":
            continue
        for state in HAPPY:
            fleet.report(owner[offer["device_serial"]], offer["device_serial"], cid, state)


def _campaign(fleet: Fleet, cid: int) -> dict[str, Any]:
    return fleet.call("GET", f"/api/v1/campaigns/{cid}", "viewer")


PHASES = [
    {"name": "canary", "devices": 5, "soak_s": 3600, "success_threshold_pct": 100},
    {"name": "10%", "percent": 10, "soak_s": 3600, "success_threshold_pct": 95},
    {"name": "50%", "percent": 50, "soak_s": 7200, "success_threshold_pct": 95},
    {"name": "100%", "percent": 100, "soak_s": 0, "success_threshold_pct": 95},
]


def test_phases_advance_only_after_soak_and_reach_100_percent(fleet: Fleet, pki) -> None:
    owner = _site(fleet)
    release = fleet.upload(make_release(pki))
    c = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={"name": "spring", "release_id": release["id"], "phases": PHASES},
    )
    cid = c["id"]
    assert c["targets"] == 30
    assert [p["cumulative_devices"] for p in c["phases"]] == [5, 5, 15, 30]

    offers = _poll_all(fleet, owner)
    assert len(offers) == 5  # only the canary
    assert {o["sha256"] for o in offers} == {release["sha256"]}
    _finish(fleet, owner, offers, cid)
    assert _campaign(fleet, cid)["current_phase"] == 0
    assert _poll_all(fleet, owner) == []  # nothing new while the canary soaks

    fleet.clock.advance(3599)
    fleet.service.tick()
    assert _campaign(fleet, cid)["current_phase"] == 0
    fleet.clock.advance(1)
    fleet.service.tick()
    # canary done -> phase "10%" releases nobody new (3 < 5), so it soaks on its own.
    assert _campaign(fleet, cid)["current_phase"] == 1
    fleet.clock.advance(3600)
    fleet.service.tick()
    assert _campaign(fleet, cid)["current_phase"] == 2

    offers = _poll_all(fleet, owner)
    assert len(offers) == 10
    _finish(fleet, owner, offers, cid)
    fleet.clock.advance(7199)
    fleet.service.tick()
    assert _campaign(fleet, cid)["current_phase"] == 2
    fleet.clock.advance(1)
    fleet.service.tick()
    assert _campaign(fleet, cid)["current_phase"] == 3

    offers = _poll_all(fleet, owner)
    assert len(offers) == 15
    _finish(fleet, owner, offers, cid)
    final = _campaign(fleet, cid)
    assert final["status"] == "completed"
    assert final["states"]["succeeded"] == 30

    devices = fleet.call("GET", f"/api/v1/campaigns/{cid}/devices", "viewer")
    history = [e["state"] for e in devices[0]["history"]]
    assert history == ["offered", *HAPPY]
    actions = [e["action"] for e in fleet.call("GET", "/api/v1/audit", params={"limit": 1000})]
    assert actions.count("campaign.advance") == 3 and "campaign.complete" in actions


def test_error_threshold_pauses_and_stops_offers(fleet: Fleet, pki) -> None:
    owner = _site(fleet)
    release = fleet.upload(make_release(pki))
    cid = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "bad",
            "release_id": release["id"],
            "error_threshold_pct": 20,
            "phases": [
                {"name": "canary", "devices": 10, "soak_s": 0},
                {"name": "all", "percent": 100, "soak_s": 0},
            ],
        },
    )["id"]
    offers = _poll_all(fleet, owner)
    assert len(offers) == 10
    for i, offer in enumerate(offers):
        serial, gateway = offer["device_serial"], owner[offer["device_serial"]]
        for state in ("downloading", "downloaded", "installing", "verifying"):
            fleet.report(gateway, serial, cid, state)
        if i < 2:
            answer = fleet.report(
                gateway,
                serial,
                cid,
                "rolled_back",
                error_code="BMSFW-E511",
                detail="self-test failed",
            )
        else:
            answer = fleet.report(gateway, serial, cid, "succeeded")
        if i == 0:
            assert answer["campaign_status"] == "running"  # 1 of 10: below 20 %
    c = _campaign(fleet, cid)
    assert c["status"] == "paused"
    assert "error threshold" in c["pause_reason"]
    assert c["states"]["rolled_back"] == 2
    assert _poll_all(fleet, owner) == []  # paused: no offers at all

    failed = [
        d
        for d in fleet.call("GET", f"/api/v1/campaigns/{cid}/devices", "viewer")
        if d["state"] == "rolled_back"
    ]
    assert {d["error_code"] for d in failed} == {"BMSFW-E511"}
    assert all(d["finished_at"] for d in failed)

    # Resume: the two known failures are acknowledged, the campaign carries on.
    fleet.call("POST", f"/api/v1/campaigns/{cid}/resume", "operator")
    c = _campaign(fleet, cid)
    assert c["status"] == "running" and c["current_phase"] == 1
    assert len(_poll_all(fleet, owner)) == 20


@pytest.mark.req("SEED-OTA-NOT-SAFETY-CRITICAL", "IEC61508-SAFETY-UPDATE")
def test_safety_critical_release_is_refused_for_ota(fleet: Fleet, pki) -> None:
    _site(fleet, gateways=1)
    release = fleet.upload(make_release(pki, "1.2.0", safety_class="safety-critical"))
    assert release["ota_allowed"] is False
    response = fleet.client.post(
        "/api/v1/campaigns",
        headers=fleet.h("admin"),
        json={"name": "sc", "release_id": release["id"]},
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "BMSFW-E606"
    assert fleet.call("GET", "/api/v1/campaigns", "viewer") == []
    audit = fleet.call("GET", "/api/v1/audit")
    assert any(e["action"] == "campaign.refused" for e in audit)


def test_pause_cancel_and_invalid_transitions(fleet: Fleet, pki) -> None:
    owner = _site(fleet, gateways=2)
    release = fleet.upload(make_release(pki))
    cid = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "c",
            "release_id": release["id"],
            "phases": [{"name": "all", "percent": 100, "soak_s": 0}],
        },
    )["id"]
    offer = _poll_all(fleet, owner)[0]
    serial, gateway = offer["device_serial"], owner[offer["device_serial"]]
    bad = fleet.client.post(
        "/api/v1/agent/reports",
        headers=fleet.h(gateway),
        json={"device_serial": serial, "campaign_id": cid, "state": "succeeded"},
    )
    assert bad.status_code == 409 and bad.json()["error"]["code"] == "BMSFW-E607"

    fleet.call("POST", f"/api/v1/campaigns/{cid}/pause", "operator", json={"reason": "storm"})
    assert _campaign(fleet, cid)["pause_reason"] == "storm"
    assert _poll_all(fleet, owner) == []
    again = fleet.client.post(f"/api/v1/campaigns/{cid}/pause", headers=fleet.h("operator"))
    assert again.json()["error"]["code"] == "BMSFW-E608"
    fleet.call("POST", f"/api/v1/campaigns/{cid}/cancel", "operator", json={"reason": "abort"})
    assert _campaign(fleet, cid)["status"] == "cancelled"
    resume = fleet.client.post(f"/api/v1/campaigns/{cid}/resume", headers=fleet.h("operator"))
    assert resume.status_code == 409
    # Devices are free for a new campaign once the old one is cancelled.
    c2 = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "c2",
            "release_id": release["id"],
            "phases": [{"name": "all", "percent": 100, "soak_s": 0}],
        },
    )
    assert c2["targets"] == 6


def test_selector_filters_targets(fleet: Fleet, pki) -> None:
    fleet.add_gateway("gwA", "north", tags=["pilot"])
    fleet.add_gateway("gwB", "south")
    fleet.check_in(
        "gwA", [bms("A1", "1.0.0"), bms("A2", "0.9.0"), bms("A3", "1.0.0", hw_revision="C")]
    )
    fleet.check_in(
        "gwB", [bms("B1", "1.0.0"), bms("B2", "1.1.0"), bms("B3", "1.0.0", security_counter=9)]
    )
    release = fleet.upload(make_release(pki))  # 1.1.0, counter 2, BMS-48V rev A/B

    def targets(selector: dict[str, Any]) -> list[str]:
        c = fleet.call(
            "POST",
            "/api/v1/campaigns",
            "operator",
            json={
                "name": "t",
                "release_id": release["id"],
                "selector": selector,
                "phases": [{"name": "all", "percent": 100}],
            },
        )
        fleet.call("POST", f"/api/v1/campaigns/{c['id']}/cancel", "operator")
        return sorted(
            d["device_serial"] for d in fleet.call("GET", f"/api/v1/campaigns/{c['id']}/devices")
        )

    # rev C, already on 1.1.0, and a higher security counter are never targets.
    assert targets({}) == ["A1", "A2", "B1"]
    assert targets({"version_range": ">=1.0.0,<1.1.0"}) == ["A1", "B1"]
    assert targets({"sites": ["north"]}) == ["A1", "A2"]
    assert targets({"tags": ["pilot"]}) == ["A1", "A2"]
    none = fleet.client.post(
        "/api/v1/campaigns",
        headers=fleet.h("operator"),
        json={"name": "t", "release_id": release["id"], "selector": {"sites": ["mars"]}},
    )
    assert none.json()["error"]["code"] == "BMSFW-E610"


# ---- pure rules -----------------------------------------------------------


def _phase(**kw: Any) -> PhaseSpec:
    return PhaseSpec(name=kw.pop("name", "p"), **kw)


@pytest.mark.parametrize(
    ("phases", "total", "expected"),
    [
        (
            [_phase(devices=5), _phase(percent=10), _phase(percent=50), _phase(percent=100)],
            1000,
            [5, 100, 500, 1000],
        ),
        ([_phase(devices=5), _phase(percent=10), _phase(percent=100)], 30, [5, 5, 30]),
        ([_phase(devices=5), _phase(percent=100)], 3, [3, 3]),
        ([_phase(percent=33), _phase(percent=100)], 10, [4, 10]),
    ],
)
def test_cumulative_sizes(phases: list[PhaseSpec], total: int, expected: list[int]) -> None:
    sizes = cumulative_sizes(phases, total)
    assert sizes == expected
    order = rollout_order("7", [f"s{i}" for i in range(total)])
    assignment = assign_phases(order, sizes)
    for index, size in enumerate(sizes):
        assert sum(1 for p in assignment.values() if p <= index) == size


def test_last_phase_must_cover_everything() -> None:
    with pytest.raises(InvalidCampaignSpecError):
        cumulative_sizes([_phase(devices=5), _phase(percent=50)], 100)


def _snap(**kw: Any) -> CampaignSnapshot:
    base: dict[str, Any] = {
        "status": "running",
        "current_phase": 0,
        "phases": (_phase(devices=5, soak_s=60, success_threshold_pct=80), _phase(percent=100)),
        "error_threshold_pct": 20.0,
        "phase_threshold_met_at": None,
        "acknowledged_failures": 0,
    }
    base.update(kw)
    return CampaignSnapshot(**base)


T0 = START


@pytest.mark.parametrize(
    ("snap", "counts", "now", "action"),
    [
        (_snap(), CampaignCounts(5, 0, 0, 0), T0, "none"),
        (_snap(), CampaignCounts(5, 3, 1, 4), T0, "pause"),  # 1/5 = 20 % >= 20 %
        (_snap(acknowledged_failures=1), CampaignCounts(5, 4, 1, 5), T0, "threshold_met"),
        (_snap(), CampaignCounts(5, 4, 0, 4), T0, "threshold_met"),
        (
            _snap(phase_threshold_met_at=T0),
            CampaignCounts(5, 4, 0, 4),
            T0 + dt.timedelta(seconds=59),
            "none",
        ),
        (
            _snap(phase_threshold_met_at=T0),
            CampaignCounts(5, 4, 0, 4),
            T0 + dt.timedelta(seconds=60),
            "advance",
        ),
        (_snap(current_phase=1), CampaignCounts(50, 49, 0, 49), T0, "none"),
        (_snap(current_phase=1), CampaignCounts(50, 50, 0, 50), T0, "complete"),
        (_snap(status="paused"), CampaignCounts(5, 0, 5, 5), T0, "none"),
        (_snap(error_threshold_pct=50), CampaignCounts(5, 3, 2, 5), T0, "pause"),  # below 80 %
    ],
)
def test_decide(
    snap: CampaignSnapshot, counts: CampaignCounts, now: dt.datetime, action: str
) -> None:
    assert decide(snap, counts, now).action == action


def test_maintenance_windows() -> None:
    night = [MaintenanceWindow(days=[0, 1, 2, 3, 4], start="22:00", end="04:00")]
    monday_noon = dt.datetime(2025, 1, 6, 12, 0, tzinfo=dt.UTC)
    assert window_open([], "UTC", monday_noon)
    assert not window_open(night, "UTC", monday_noon)
    assert window_open(night, "UTC", monday_noon.replace(hour=23))
    assert window_open(night, "UTC", monday_noon + dt.timedelta(hours=15))  # Tue 03:00
    saturday_3am = dt.datetime(2025, 1, 11, 3, 0, tzinfo=dt.UTC)
    assert window_open(night, "UTC", saturday_3am)  # Friday's window runs into Saturday
    assert not window_open(night, "UTC", saturday_3am + dt.timedelta(days=1))
    # 22:30 in Amsterdam is 21:30 UTC in winter.
    assert window_open(night, "Europe/Amsterdam", monday_noon.replace(hour=21, minute=30))


def test_campaigns_created_at_the_same_time_never_claim_the_same_device(
    fleet: Fleet, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creation B resolves its targets only after creation A committed its claims (a
    PostgreSQL advisory lock; SQLite serialises writers), so B finds nobody left."""
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms("S1"), bms("S2")])
    release = fleet.upload(make_release(pki))
    service = fleet.service
    operator = service.load_principal(hash_token(fleet.tokens["operator"]))
    spec = CampaignSpec.model_validate(
        {"name": "x", "release_id": release["id"], "phases": [{"name": "all", "percent": 100}]}
    )
    resolve = service._resolve_targets
    a_resolved, a_may_commit = threading.Event(), threading.Event()

    def a_pauses_after_resolving(*args: Any, **kwargs: Any) -> Any:
        targets = resolve(*args, **kwargs)
        if threading.current_thread().name == "create-a":
            a_resolved.set()
            a_may_commit.wait(10)
        return targets

    monkeypatch.setattr(service, "_resolve_targets", a_pauses_after_resolving)
    outcome: dict[str, Any] = {}

    def create(name: str) -> None:
        try:
            outcome[name] = service.create_campaign(
                operator, spec.model_copy(update={"name": name})
            )
        except FleetError as exc:
            outcome[name] = exc

    a = threading.Thread(target=create, args=("a",), name="create-a")
    b = threading.Thread(target=create, args=("b",), name="create-b")
    a.start()
    assert a_resolved.wait(10)
    b.start()
    b.join(0.5)
    assert b.is_alive()  # waiting for A, not resolving from A's snapshot
    a_may_commit.set()
    a.join(10)
    b.join(40)
    assert outcome["a"]["targets"] == 2, outcome
    assert isinstance(outcome["b"], NoTargetDevicesError), outcome
