"""Four eyes for every safety-relevant action (ServerConfig.four_eyes), on SQLite and
PostgreSQL: asking stores a request and changes nothing else; the requester cannot approve
it (E650), a lower role cannot (E654); a second person with the role runs it; a decided
request answers E652, an expired one E653 (a campaign waiting on it is cancelled); the
requester may withdraw it; every step is in the audit log."""

from __future__ import annotations

from typing import Any

import pytest

from web.test_routes import _sign_in

from .conftest import Fleet, bms, make_release
from .test_retire import _state, running

__all__ = ["running"]

TTL_S = 3600


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"four_eyes": True, "approval_above_devices": 2, "approval_ttl_s": TTL_S}


def _second(fleet: Fleet, role: str) -> str:
    """A second person with ``role`` (their own token), usable as fleet.h(f"{role}-2")."""
    name = f"{role}-2"
    fleet.tokens[name] = fleet.call("POST", "/api/v1/tokens", json={"name": name, "role": role})[
        "token"
    ]
    return name


def _ask(fleet: Fleet, role: str, path: str, body: Any = None) -> dict[str, Any]:
    before = _state(fleet)
    response = fleet.client.post(path, headers=fleet.h(role), json=body)
    assert response.status_code == 202, response.text
    waiting = response.json()
    assert waiting["status"] == "waiting" and waiting["requested_by"].endswith(role)
    after = _state(fleet)
    assert after == before  # nothing done yet
    return dict(waiting)


def _decide(fleet: Fleet, role: str, approval: int, verb: str = "approve") -> Any:
    return fleet.client.post(f"/api/v1/approvals/{approval}/{verb}", headers=fleet.h(role))


def _refused(fleet: Fleet, role: str, approval: int, status: int, code: str) -> None:
    before = _state(fleet), fleet.call("GET", f"/api/v1/approvals/{approval}")
    response = _decide(fleet, role, approval)
    assert response.status_code == status, (role, response.text)
    assert response.json()["error"]["code"] == code, role
    assert (_state(fleet), fleet.call("GET", f"/api/v1/approvals/{approval}")) == before


@pytest.mark.req("IEC62443-CR2.1")
def test_each_safety_action_waits_for_a_second_person_with_its_role(
    running: tuple[Fleet, int, int],
) -> None:
    fleet, release, campaign = running
    admin2, manager2 = _second(fleet, "admin"), _second(fleet, "release_manager")
    operator = next(
        c["id"] for c in fleet.call("GET", "/api/v1/access-review") if c["name"] == "test-operator"
    )
    asked = {
        "deactivate": _ask(
            fleet,
            "release_manager",
            f"/api/v1/releases/{release}/deactivate",
            {"reason": "bricks rev B", "running": "finish"},
        ),
        "revoke": _ask(fleet, "admin", f"/api/v1/tokens/{operator}/revoke"),
        "gateway": _ask(fleet, "admin", "/api/v1/gateways/gw2/decommission", {"reason": "x"}),
        "device": _ask(fleet, "operator", "/api/v1/devices/B1/decommission"),
    }
    assert asked["deactivate"]["running"] == "finish"
    assert "let finish its running campaigns" in asked["deactivate"]["summary"]
    # Asking twice finds the same request.
    again = fleet.client.post(f"/api/v1/tokens/{operator}/revoke", headers=fleet.h("admin"))
    assert again.status_code == 202 and again.json()["id"] == asked["revoke"]["id"]
    waiting = fleet.call("GET", "/api/v1/approvals", "viewer")
    assert [w["id"] for w in waiting] == [a["id"] for a in asked.values()]
    assert [w["min_role"] for w in waiting] == ["release_manager", "admin", "admin", "operator"]
    # A device with open work is refused when asked, not after an approval.
    busy = fleet.client.post("/api/v1/devices/A1/decommission", headers=fleet.h("operator"))
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "BMSFW-E645"

    for key, requester in (
        ("deactivate", "release_manager"),
        ("revoke", "admin"),
        ("gateway", "admin"),
        ("device", "operator"),
    ):
        _refused(fleet, requester, asked[key]["id"], 403, "BMSFW-E650")
    _refused(fleet, "operator", asked["deactivate"]["id"], 403, "BMSFW-E654")
    _refused(fleet, "release_manager", asked["revoke"]["id"], 403, "BMSFW-E654")
    _refused(fleet, "viewer", asked["device"]["id"], 403, "BMSFW-E603")

    done = _decide(fleet, manager2, asked["deactivate"]["id"]).json()
    assert done["approval"]["status"] == "approved"
    assert done["approval"]["decided_by"] == f"operator:{manager2}"
    assert done["result"]["deactivated_at"]
    # "finish": the running campaign goes on, its devices may still download the file.
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign}")["status"] == "running"
    offers = fleet.check_in("gw1", [bms("A1"), bms("A2")])["offers"]
    assert len(offers) == 2
    assert fleet.client.get(offers[0]["artifact_url"], headers=fleet.h("gw1")).status_code == 200

    assert fleet.client.get("/api/v1/whoami", headers=fleet.h("operator")).status_code == 200
    assert _decide(fleet, admin2, asked["revoke"]["id"]).status_code == 200
    assert fleet.client.get("/api/v1/whoami", headers=fleet.h("operator")).status_code == 401
    assert _decide(fleet, admin2, asked["gateway"]["id"]).status_code == 200
    gone = fleet.client.post("/api/v1/agent/check-in", headers=fleet.h("gw2"), json={})
    assert gone.status_code == 403 and gone.json()["error"]["code"] == "BMSFW-E660"
    assert _decide(fleet, "release_manager", asked["device"]["id"]).status_code == 200
    device = fleet.call("GET", "/api/v1/devices/B1")
    assert device["decommissioned_at"]

    _refused(fleet, admin2, asked["gateway"]["id"], 409, "BMSFW-E652")
    assert fleet.call("GET", "/api/v1/approvals") == []
    decided = fleet.call("GET", "/api/v1/approvals", params={"status": "approved"})
    assert len(decided) == 4
    entries = fleet.call("GET", "/api/v1/audit", params={"limit": 1000})
    trail = [(e["action"], e["target"], e["actor"]) for e in entries]
    release_target = f"release:{release}"
    assert ("approval.request", release_target, "operator:test-release_manager") in trail
    assert ("approval.refused", release_target, "operator:test-release_manager") in trail
    assert ("approval.refused", release_target, "operator:test-operator") in trail
    assert ("approval.approve", release_target, f"operator:{manager2}") in trail
    assert ("release.deactivate", release_target, f"operator:{manager2}") in trail
    assert ("token.revoke", f"credential:{operator}", f"operator:{admin2}") in trail


def test_a_request_expires_is_withdrawn_or_rejected(fleet: Fleet, pki: Any) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms(f"SN{i}") for i in range(3)])
    release = fleet.upload(make_release(pki))["id"]
    spec = {"name": "big", "release_id": release}
    campaign = fleet.call("POST", "/api/v1/campaigns", "operator", json=spec)
    assert campaign["status"] == "needs_approval"
    (start,) = fleet.call("GET", "/api/v1/approvals")
    assert start["action"] == "campaign.start" and start["target"] == f"campaign:{campaign['id']}"
    deactivate = _ask(fleet, "release_manager", f"/api/v1/releases/{release}/deactivate")

    fleet.clock.advance(TTL_S + 1)
    fleet.service.tick()
    expired = fleet.call("GET", "/api/v1/approvals", params={"status": "expired"})
    assert [e["id"] for e in expired] == [start["id"], deactivate["id"]]
    # An expired campaign start cancelled its campaign: its devices are free again.
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign['id']}")["status"] == "cancelled"
    _refused(fleet, "admin", start["id"], 409, "BMSFW-E653")
    assert fleet.call("GET", f"/api/v1/releases/{release}")["deactivated_at"] is None

    # The requester withdraws; someone without the role cannot reject.
    again = _ask(fleet, "release_manager", f"/api/v1/releases/{release}/deactivate")
    assert again["id"] != deactivate["id"]
    operator_reject = _decide(fleet, "operator", again["id"], "reject")
    assert operator_reject.json()["error"]["code"] == "BMSFW-E654"
    withdrawn = _decide(fleet, "release_manager", again["id"], "reject").json()
    assert withdrawn["status"] == "withdrawn"
    third = _ask(fleet, "release_manager", f"/api/v1/releases/{release}/deactivate")
    assert _decide(fleet, "admin", third["id"], "reject").json()["status"] == "rejected"
    assert fleet.call("GET", f"/api/v1/releases/{release}")["deactivated_at"] is None
    trail = [e["action"] for e in fleet.call("GET", "/api/v1/audit", params={"limit": 1000})]
    assert trail.count("approval.expire") == 2 and trail.count("approval.reject") == 2


def test_resuming_after_the_error_threshold_waits(running: tuple[Fleet, int, int]) -> None:
    fleet, _release, campaign = running
    fleet.check_in("gw1", [bms("A1"), bms("A2")])
    fleet.report("gw1", "A1", campaign, "downloading")
    fleet.report("gw1", "A1", campaign, "failed", error_code="BMSFW-E401")
    paused = fleet.call("GET", f"/api/v1/campaigns/{campaign}")
    assert paused["status"] == "paused" and "error threshold" in paused["pause_reason"]
    waiting = _ask(fleet, "operator", f"/api/v1/campaigns/{campaign}/resume")
    assert waiting["action"] == "campaign.resume_after_failures"
    _refused(fleet, "operator", waiting["id"], 403, "BMSFW-E650")
    resumed = _decide(fleet, "release_manager", waiting["id"]).json()["result"]
    assert resumed["status"] == "running"
    # A pause by hand is resumed at once.
    fleet.call("POST", f"/api/v1/campaigns/{campaign}/pause", "operator", json={"reason": "x"})
    assert fleet.call("POST", f"/api/v1/campaigns/{campaign}/resume", "operator")["status"] == (
        "running"
    )


def test_a_downgrade_campaign_is_explicit_and_approved_by_a_release_manager(
    fleet: Fleet, pki: Any
) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("NEW", version="1.2.0"), bms("OLD", version="1.0.0")])
    release = fleet.upload(make_release(pki))["id"]  # 1.1.0
    # Without a reason, a device that runs a higher version is no target (the version rule).
    plain = fleet.call(
        "POST", "/api/v1/campaigns", "operator", json={"name": "up", "release_id": release}
    )
    assert plain["status"] == "running" and plain["targets"] == 1
    assert [
        d["device_serial"] for d in fleet.call("GET", f"/api/v1/campaigns/{plain['id']}/devices")
    ] == ["OLD"]
    spec = {
        "name": "back",
        "release_id": release,
        "selector": {"serials": ["NEW"], "downgrade_reason": "1.2.0 drains cells in storage"},
    }
    down = fleet.call("POST", "/api/v1/campaigns", "operator", json=spec)
    # One device, below approval_above_devices: a downgrade waits all the same.
    assert down["status"] == "needs_approval" and down["targets"] == 1
    (waiting,) = fleet.call("GET", "/api/v1/approvals")
    assert waiting["action"] == "campaign.start_downgrade"
    assert waiting["min_role"] == "release_manager"
    assert waiting["reason"] == "1.2.0 drains cells in storage"
    assert "start downgrade campaign" in waiting["summary"]
    _refused(fleet, _second(fleet, "operator"), waiting["id"], 403, "BMSFW-E654")
    # Its dashboard page says so and offers an operator no button.
    fleet.client.base_url = "https://testserver"  # type: ignore[assignment]
    _sign_in(fleet, "operator-2")
    page = fleet.client.get(f"/ui/campaigns/{down['id']}").text
    assert "this is a downgrade campaign (1.2.0 drains cells in storage)" in page
    assert 'data-testid="approve"' not in page
    _sign_in(fleet, "release_manager")
    assert 'data-testid="approve"' in fleet.client.get(f"/ui/campaigns/{down['id']}").text
    started = fleet.call("POST", f"/api/v1/campaigns/{down['id']}/approve", "release_manager")
    assert started["status"] == "running"
    offers = fleet.check_in("gw", [bms("NEW", version="1.2.0")])["offers"]
    assert [(o["device_serial"], o["version"]) for o in offers] == [("NEW", "1.1.0")]
    # The offer says it is a downgrade, why, and who asked (a gateway that accepts approved
    # downgrades passes it on as the reason, docs/fleet.md); the plain campaign's does not.
    assert offers[0]["downgrade"] == {
        "reason": "1.2.0 drains cells in storage",
        "requested_by": down["created_by"],
    }
    (plain_offer,) = fleet.check_in("gw", [bms("OLD", version="1.0.0")])["offers"]
    assert plain_offer["campaign_id"] == plain["id"] and plain_offer["downgrade"] is None
