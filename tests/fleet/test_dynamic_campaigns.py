"""Dynamic campaigns: devices that come to match the selector after the start (a new pack
registers, a device changes) join the last phase, with the target rule of creation;
paused campaigns keep their joiners waiting, cancelled ones take none, and a dynamic
campaign never completes. On SQLite and PostgreSQL (the ``fleet`` fixture)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from bmsfw.fleet.auth import hash_token
from bmsfw.fleet.campaigns import (
    CampaignCounts,
    CampaignSnapshot,
    DeviceFacts,
    DynamicCampaign,
    Join,
    TargetRule,
    decide,
    joins,
    refusal,
)
from bmsfw.fleet.errors import InvalidCampaignSpecError
from bmsfw.fleet.schemas import CampaignSpec, PhaseSpec, Selector

from .conftest import START, Fleet, bms, make_release

HAPPY = ("downloading", "downloaded", "installing", "verifying", "succeeded")
PHASES = [
    {"name": "canary", "devices": 1, "soak_s": 0, "success_threshold_pct": 100},
    {"name": "rest", "percent": 100, "soak_s": 0, "success_threshold_pct": 100},
]


def _offered(answer: dict[str, Any]) -> list[str]:
    return sorted(o["device_serial"] for o in answer["offers"] if o["state"] == "offered")


def _members(fleet: Fleet, cid: int) -> dict[str, tuple[int, str]]:
    rows = fleet.call("GET", f"/api/v1/campaigns/{cid}/devices", "viewer")
    return {r["device_serial"]: (r["phase"], r["state"]) for r in rows}


def _joins(fleet: Fleet) -> list[dict[str, Any]]:
    entries = fleet.call("GET", "/api/v1/audit", params={"limit": 1000})
    return [e for e in entries if e["action"] == "campaign.join"]


def _dynamic(fleet: Fleet, release_id: int, **extra: Any) -> dict[str, Any]:
    body = {"name": "packs", "release_id": release_id, "phases": PHASES, "dynamic": True}
    campaign = fleet.call("POST", "/api/v1/campaigns", "operator", json={**body, **extra})
    assert campaign["dynamic"] is True
    return campaign


def _install(fleet: Fleet, gateway: str, cid: int, serials: list[str]) -> None:
    for serial in serials:
        for state in HAPPY:
            fleet.report(gateway, serial, cid, state)


def test_a_pack_registered_after_the_start_joins_the_last_phase(fleet: Fleet, pki) -> None:
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms("S1"), bms("S2")])
    release = fleet.upload(make_release(pki))
    campaign = _dynamic(fleet, release["id"], selector={"sites": ["harbour"]})
    cid = campaign["id"]
    assert campaign["targets"] == 2 and campaign["current_phase"] == 0

    # A new pack while the canary runs: it joins the last phase and waits for it.
    events = fleet.app.state.events
    cursor = events.start()
    canary = _offered(fleet.check_in("gw", [bms("S1"), bms("S2"), bms("S3")]))
    assert len(canary) == 1 and "S3" not in canary
    assert _members(fleet, cid)["S3"] == (1, "pending")
    (joined,) = _joins(fleet)
    assert joined["target"] == f"campaign:{cid}" and joined["actor"] == "system"
    assert joined["detail"] == {"device": "S3", "phase": 1, "cause": "check-in"}
    # On the event stream: the joiner as a device event, the campaign's new counts.
    pushed = [(e.kind, e.data) for e in events.poll(cursor)[0]]
    assert (
        "device",
        {
            "campaign_id": cid,
            "serial": "S3",
            "state": "pending",
            "phase": 1,
            "joined": True,
            "at": START.isoformat(),
        },
    ) in pushed
    (counts,) = [d for k, d in pushed if k == "campaign"]
    assert counts["states"] == {"pending": 2, "offered": 1}
    _install(fleet, "gw", cid, canary)
    # The canary succeeded (soak 0): the last phase offers the rest, the joiner included.
    assert _offered(fleet.check_in("gw", [bms("S1"), bms("S2"), bms("S3")])) == sorted(
        {"S1", "S2", "S3"} - set(canary)
    )
    _install(fleet, "gw", cid, sorted({"S1", "S2", "S3"} - set(canary)))
    done = fleet.call("GET", f"/api/v1/campaigns/{cid}", "viewer")
    # Every device finished, and still running: a dynamic campaign does not complete.
    assert done["status"] == "running" and done["states"]["succeeded"] == 3
    fleet.service.tick()
    assert fleet.call("GET", f"/api/v1/campaigns/{cid}", "viewer")["status"] == "running"

    # Installed next month: offered in the answer to the check-in that registers it.
    fleet.clock.advance(30 * 86400)
    after = fleet.check_in(
        "gw", [bms("S1", "1.1.0"), bms("S2", "1.1.0"), bms("S3", "1.1.0"), bms("S4")]
    )
    assert _offered(after) == ["S4"]
    assert _members(fleet, cid)["S4"] == (1, "offered")
    # The devices that installed the release changed firmware: not members twice.
    assert len(_joins(fleet)) == 2


def test_ineligible_devices_do_not_join(fleet: Fleet, pki) -> None:
    fleet.add_gateway("gw", "harbour")
    fleet.add_gateway("other", "elsewhere")
    fleet.check_in("gw", [bms("S1")])
    release = fleet.upload(make_release(pki))
    cid = _dynamic(
        fleet,
        release["id"],
        selector={"sites": ["harbour"], "version_range": "<1.1.0", "tags": ["pilot"]},
        phases=[{"name": "all", "percent": 100, "soak_s": 0}],
    )["id"]
    assert _members(fleet, cid) == {}  # S1 lacks the tag: the campaign starts empty
    # S1 is tagged now: it matches, joins and is offered in the same answer.
    assert _offered(fleet.check_in("gw", [bms("S1", tags=["pilot"])])) == ["S1"]
    assert _members(fleet, cid) == {"S1": (0, "offered")}
    assert [e["detail"]["device"] for e in _joins(fleet)] == ["S1"]
    answer = fleet.check_in(
        "gw",
        [
            bms("S1", tags=["pilot"]),
            bms("NOTAG"),
            bms("REV-C", tags=["pilot"], hw_revision="C"),
            bms("OTHER-MODEL", tags=["pilot"], model="BMS-24V"),
            bms("NEWER", "1.2.0", tags=["pilot"]),
            bms("SAME", "1.1.0", tags=["pilot"]),
            bms("COUNTER", tags=["pilot"], security_counter=3),
        ],
    )
    fleet.check_in("other", [bms("FAR", tags=["pilot"])])  # another site
    assert _offered(answer) == ["S1"]
    assert set(_members(fleet, cid)) == {"S1"}
    assert len(_joins(fleet)) == 1

    # Decommissioned: a retired pack that is reported again with a change does not join.
    fleet.call("POST", "/api/v1/devices/NOTAG/decommission", "operator", json={})
    fleet.check_in("gw", [bms("NOTAG", tags=["pilot"])])
    # Busy in another campaign: BUSY is pending in a plain one when it comes to match.
    fleet.check_in("gw", [bms("BUSY")])
    plain = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={"name": "plain", "release_id": release["id"], "selector": {"serials": ["BUSY"]}},
    )
    fleet.check_in("gw", [bms("BUSY", tags=["pilot"])])
    assert set(_members(fleet, cid)) == {"S1"}
    assert set(_members(fleet, plain["id"])) == {"BUSY"}
    assert len(_joins(fleet)) == 1


def test_a_join_never_claims_a_device_a_creation_in_progress_takes(
    fleet: Fleet, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X comes to match a dynamic campaign while a plain creation that targets it has
    resolved but not committed: the check-in waits for the creation (PostgreSQL: the
    shared side of its advisory lock; SQLite: one writer), then sees X busy there."""
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms("X")])
    release = fleet.upload(make_release(pki))
    dynamic = _dynamic(fleet, release["id"], selector={"tags": ["pilot"]}, phases=PHASES[1:])
    service = fleet.service
    operator = service.load_principal(hash_token(fleet.tokens["operator"]))
    spec = CampaignSpec.model_validate(
        {"name": "plain", "release_id": release["id"], "selector": {"serials": ["X"]}}
    )
    resolve = service._resolve_targets
    resolved, may_commit = threading.Event(), threading.Event()

    def pause_after_resolving(*args: Any, **kwargs: Any) -> Any:
        targets = resolve(*args, **kwargs)
        resolved.set()
        may_commit.wait(10)
        return targets

    monkeypatch.setattr(service, "_resolve_targets", pause_after_resolving)
    made: dict[str, Any] = {}
    creation = threading.Thread(
        target=lambda: made.update(service.create_campaign(operator, spec)), name="create"
    )
    creation.start()
    assert resolved.wait(10)
    check_in = threading.Thread(
        target=lambda: fleet.check_in("gw", [bms("X", tags=["pilot"])]), name="check-in"
    )
    check_in.start()
    check_in.join(0.5)
    assert check_in.is_alive()  # waiting for the creation
    may_commit.set()
    creation.join(10)
    check_in.join(40)
    assert made["targets"] == 1
    assert _members(fleet, dynamic["id"]) == {}
    assert _joins(fleet) == []


def test_paused_joiners_wait_and_a_cancelled_campaign_takes_no_one(fleet: Fleet, pki) -> None:
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms("S1")])
    release = fleet.upload(make_release(pki))
    cid = _dynamic(fleet, release["id"], phases=PHASES[1:])["id"]
    fleet.call("POST", f"/api/v1/campaigns/{cid}/pause", "operator", json={"reason": "storm"})
    assert fleet.check_in("gw", [bms("S1"), bms("S2")])["offers"] == []
    assert _members(fleet, cid)["S2"] == (0, "pending")  # joined, waiting
    fleet.call("POST", f"/api/v1/campaigns/{cid}/resume", "operator")
    assert _offered(fleet.check_in("gw", [bms("S1"), bms("S2")])) == ["S1", "S2"]
    assert len(_joins(fleet)) == 1

    fleet.call("POST", f"/api/v1/campaigns/{cid}/cancel", "operator", json={"reason": "done"})
    assert fleet.check_in("gw", [bms("S1"), bms("S2"), bms("S3")])["offers"] == []
    assert set(_members(fleet, cid)) == {"S1", "S2"}
    assert len(_joins(fleet)) == 1


def test_an_empty_dynamic_campaign_takes_a_device_moved_to_its_site(fleet: Fleet, pki) -> None:
    fleet.add_gateway("gw", "harbour")
    fleet.add_gateway("new-gw", "new")
    fleet.check_in("gw", [bms("S1")])
    release = fleet.upload(make_release(pki))
    body = {"name": "none yet", "release_id": release["id"], "selector": {"sites": ["new"]}}
    refused = fleet.client.post("/api/v1/campaigns", headers=fleet.h("operator"), json=body)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "BMSFW-E610"
    assert fleet.call("GET", "/api/v1/campaigns", "viewer") == []
    preview = fleet.service.preview_campaign(CampaignSpec.model_validate({**body, "dynamic": True}))
    assert preview["targets"] == 0 and preview["dynamic"] is True
    made = fleet.call("POST", "/api/v1/campaigns", "operator", json={**body, "dynamic": True})
    assert made["status"] == "running" and made["targets"] == 0
    assert made["current_phase"] == len(made["phases"]) - 1
    fleet.call("POST", "/api/v1/devices/S1/move", "operator", json={"gateway": "new-gw"})
    assert _members(fleet, made["id"]) == {"S1": (3, "pending")}
    assert _joins(fleet)[0]["detail"] == {"device": "S1", "phase": 3, "cause": "move"}
    assert _offered(fleet.check_in("new-gw", [bms("S1")])) == ["S1"]


# The pure core: the target rule and who joins.

RULE = TargetRule.build(
    Selector(sites=["north"], tags=["pilot"], version_range="<1.1.0"),
    hw_model="BMS-48V",
    hw_revisions=("A", "B"),
    version="1.1.0",
    security_counter=2,
    active=True,
    release_id=1,
)
GOOD = DeviceFacts(
    serial="S1",
    model="BMS-48V",
    hw_revision="A",
    firmware_version="1.0.0",
    security_counter=1,
    site="north",
    tags=frozenset({"pilot", "x"}),
    decommissioned=False,
    busy=False,
)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({}, None),
        ({"model": "BMS-24V"}, "not compatible"),
        ({"hw_revision": "C"}, "not compatible"),
        ({"site": "south"}, "not selected"),
        ({"busy": True}, "busy"),
        ({"firmware_version": "1.1.0+0"}, "already runs"),
        ({"security_counter": 3}, "security counter"),
        ({"tags": frozenset({"x"})}, "lacks tag"),
        ({"firmware_version": "1.0.9-rc1"}, None),
        ({"firmware_version": "garbage"}, "not comparable"),
        ({"decommissioned": True}, "decommissioned"),
    ],
)
def test_refusal(change: dict[str, Any], why: str | None) -> None:
    answer = refusal(RULE, dataclasses.replace(GOOD, **change))
    assert answer is None if why is None else (answer is not None and why in answer), answer


def test_refusal_of_a_deactivated_release_and_a_bad_selector() -> None:
    assert "deactivated" in (refusal(dataclasses.replace(RULE, release_active=False), GOOD) or "")
    for selector in (Selector(models=["BMS-24V"]), Selector(version_range="~~1")):
        with pytest.raises(InvalidCampaignSpecError):
            TargetRule.build(
                selector,
                hw_model="BMS-48V",
                hw_revisions=("A",),
                version="1.1.0",
                security_counter=2,
                active=True,
                release_id=1,
            )


def _open(cid: int, *, dynamic: bool = True, status: str = "running") -> DynamicCampaign:
    return DynamicCampaign(cid, dynamic, status, 3, RULE)


@pytest.mark.parametrize(
    ("campaigns", "members", "expected"),
    [
        ([_open(1)], set(), [Join(1, "S1", 2)]),
        ([_open(1, dynamic=False)], set(), []),
        ([_open(1, status="paused")], set(), [Join(1, "S1", 2)]),
        ([_open(1, status="needs_approval")], set(), [Join(1, "S1", 2)]),
        ([_open(1, status="cancelled")], set(), []),
        ([_open(1, status="completed")], set(), []),
        ([_open(1)], {(1, "S1")}, []),  # once a member (even failed there), never again
        ([_open(2), _open(1)], set(), [Join(1, "S1", 2)]),  # the oldest takes it
        ([_open(1), _open(2)], {(1, "S1")}, [Join(2, "S1", 2)]),
    ],
)
def test_joins(
    campaigns: list[DynamicCampaign], members: set[tuple[int, str]], expected: list[Join]
) -> None:
    assert joins(campaigns, [GOOD], members) == expected


def test_a_dynamic_campaign_does_not_complete() -> None:
    last = PhaseSpec(name="all", percent=100, soak_s=0, success_threshold_pct=95)
    snap = CampaignSnapshot("running", 0, (last,), 10.0, None, 0)
    done = CampaignCounts(released=4, succeeded=4, failed=0, terminal=4)
    assert decide(snap, done, START).action == "complete"
    assert decide(dataclasses.replace(snap, dynamic=True), done, START).action == "none"
    # Its error threshold still pauses it (a joiner that fails counts like any device).
    failing = CampaignCounts(released=4, succeeded=3, failed=1, terminal=4)
    assert decide(dataclasses.replace(snap, dynamic=True), failing, START).action == "pause"
