"""Pulling a release, decommissioning a gateway or a device, revoking a token: on SQLite and
PostgreSQL, the right roles only (the exact code for a wrong one, and nothing changed), the
effect on offers, credentials and new campaigns, and an audit entry for each."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Fleet, bms, make_release

ALL = [{"name": "all", "percent": 100}]


def _state(fleet: Fleet) -> dict[str, Any]:
    """Everything the retiring routes could change, as an admin reads it."""
    state = {
        path: fleet.call("GET", f"/api/v1/{path}", "admin", params={"limit": 1000})
        for path in ("releases", "campaigns", "gateways", "devices")
    }
    # Credentials as far as a refusal must leave them (it counts a failed attempt).
    state["credentials"] = [
        (c["id"], c["role"], c["revoked_at"], c["active"])
        for c in fleet.call("GET", "/api/v1/access-review")
    ]
    return state


def _refused(fleet: Fleet, role: str, path: str, status: int, code: str) -> None:
    before = _state(fleet)
    response = fleet.client.post(path, headers=fleet.h(role), json={"reason": "test"})
    assert response.status_code == status, (role, path, response.text)
    assert response.json()["error"]["code"] == code
    assert _state(fleet) == before, (role, path)


def _actions(fleet: Fleet) -> list[tuple[str, str]]:
    entries = fleet.call("GET", "/api/v1/audit", params={"limit": 1000})
    return [(e["action"], e["target"]) for e in entries if e["action"] != "access.refused"]


@pytest.fixture
def running(fleet: Fleet, pki: Any) -> tuple[Fleet, int, int]:
    """Two gateways with two devices each, a release and a running campaign on gw1's."""
    fleet.add_gateway("gw1", "north")
    fleet.add_gateway("gw2", "south")
    fleet.check_in("gw1", [bms("A1"), bms("A2")])
    fleet.check_in("gw2", [bms("B1"), bms("B2")])
    release = fleet.upload(make_release(pki))["id"]
    campaign = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "c",
            "release_id": release,
            "phases": ALL,
            "selector": {"serials": ["A1", "A2"]},
        },
    )["id"]
    return fleet, release, campaign


def test_release_deactivate(running: tuple[Fleet, int, int], pki: Any) -> None:
    fleet, release, campaign = running
    path = f"/api/v1/releases/{release}/deactivate"
    for role in ("viewer", "operator"):
        _refused(fleet, role, path, 403, "BMSFW-E603")
    _refused(fleet, "gw1", path, 403, "BMSFW-E603")
    _refused(fleet, "admin", "/api/v1/releases/999/deactivate", 404, "BMSFW-E604")
    offers = fleet.check_in("gw1", [bms("A1"), bms("A2")])["offers"]
    assert len(offers) == 2  # A1 and A2 are offered: gw1 may download the file
    assert fleet.client.get(offers[0]["artifact_url"], headers=fleet.h("gw1")).status_code == 200

    pulled = fleet.call("POST", path, "release_manager", json={"reason": "bricks rev B"})
    assert pulled["deactivated_at"] and pulled["deactivated_by"] == "operator:test-release_manager"
    again = fleet.call("POST", path, "admin")  # idempotent, no body needed
    assert again["deactivated_at"] == pulled["deactivated_at"]
    status = fleet.call("GET", f"/api/v1/campaigns/{campaign}")
    assert status["status"] == "cancelled" and "bricks rev B" in status["pause_reason"]
    assert fleet.check_in("gw1", [bms("A1"), bms("A2")])["offers"] == []
    download = fleet.client.get(offers[0]["artifact_url"], headers=fleet.h("gw1"))
    assert download.status_code == 409 and download.json()["error"]["code"] == "BMSFW-E643"
    assert fleet.client.get(offers[0]["artifact_url"], headers=fleet.h("viewer")).is_success
    before = _state(fleet)
    new = fleet.client.post(
        "/api/v1/campaigns",
        headers=fleet.h("operator"),
        json={"name": "again", "release_id": release, "phases": ALL},
    )
    assert new.status_code == 409 and new.json()["error"]["code"] == "BMSFW-E643"
    assert _state(fleet) == before
    actions = _actions(fleet)
    assert ("release.deactivate", f"release:{release}") in actions
    assert ("campaign.cancel", f"campaign:{campaign}") in actions
    assert actions.count(("release.deactivate", f"release:{release}")) == 1


def test_gateway_decommission(running: tuple[Fleet, int, int]) -> None:
    fleet, _, _ = running
    path = "/api/v1/gateways/gw2/decommission"
    for role in ("viewer", "operator", "release_manager"):
        _refused(fleet, role, path, 403, "BMSFW-E603")
    _refused(fleet, "gw2", path, 403, "BMSFW-E603")
    _refused(fleet, "admin", "/api/v1/gateways/nope/decommission", 404, "BMSFW-E604")
    assert fleet.check_in("gw2", [bms("B1"), bms("B2")])["gateway"] == "gw2"

    gateway = fleet.call("POST", path, "admin", json={"reason": "replaced"})
    assert gateway["decommissioned_at"] and gateway["devices"] == 2
    refused = fleet.check_in_raw("gw2", {"devices": [bms("B1")]})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "BMSFW-E660"
    review = {r["name"]: r for r in fleet.call("GET", "/api/v1/access-review")}
    assert review["gateway:gw2"]["revoked_at"] and not review["gateway:gw2"]["active"]
    assert review["gateway:gw1"]["active"]
    devices = fleet.call("GET", "/api/v1/devices", params={"site": "south"})
    assert {d["serial"] for d in devices} == {"B1", "B2"}  # kept, with their history
    assert all(d["gateway"] == "gw2" for d in devices)
    before = _state(fleet)
    moved = fleet.client.post(
        "/api/v1/devices/A1/move", headers=fleet.h("operator"), json={"gateway": "gw2"}
    )
    assert moved.status_code == 409 and moved.json()["error"]["code"] == "BMSFW-E644"
    assert _state(fleet) == before
    # Its devices move to a gateway in service, which then reports them.
    fleet.call("POST", "/api/v1/devices/B1/move", "operator", json={"gateway": "gw1"})
    fleet.check_in("gw1", [bms("A1"), bms("A2"), bms("B1")])
    assert fleet.call("GET", "/api/v1/devices/B1")["gateway"] == "gw1"
    again = fleet.call("POST", path, "admin")
    assert again["decommissioned_at"] == gateway["decommissioned_at"]
    actions = _actions(fleet)
    assert actions.count(("gateway.decommission", "gateway:gw2")) == 1


def test_device_decommission(running: tuple[Fleet, int, int]) -> None:
    fleet, release, campaign = running
    _refused(fleet, "viewer", "/api/v1/devices/B1/decommission", 403, "BMSFW-E603")
    _refused(fleet, "gw2", "/api/v1/devices/B1/decommission", 403, "BMSFW-E603")
    _refused(fleet, "operator", "/api/v1/devices/NOPE/decommission", 404, "BMSFW-E604")
    # A1 waits for its update in the running campaign: refused, nothing changed.
    _refused(fleet, "operator", "/api/v1/devices/A1/decommission", 409, "BMSFW-E645")

    device = fleet.call("POST", "/api/v1/devices/B1/decommission", "operator", json={})
    assert device["decommissioned_at"] and device["serial"] == "B1"
    fleet.call("POST", f"/api/v1/campaigns/{campaign}/cancel", "operator", json={"reason": "x"})
    fleet.call("POST", "/api/v1/devices/A1/decommission", "operator")
    # New campaigns leave decommissioned devices out.
    created = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={"name": "rest", "release_id": release, "phases": ALL},
    )
    targets = fleet.call("GET", f"/api/v1/campaigns/{created['id']}/devices")
    assert sorted(t["device_serial"] for t in targets) == ["A2", "B2"]
    assert (
        fleet.call("GET", "/api/v1/devices/B1")["decommissioned_at"] == device["decommissioned_at"]
    )
    assert ("device.decommission", "device:B1") in _actions(fleet)


def test_token_revoke_needs_an_admin(fleet: Fleet) -> None:
    created = fleet.call("POST", "/api/v1/tokens", json={"name": "bob", "role": "viewer"})
    path = f"/api/v1/tokens/{created['id']}/revoke"
    for role in ("viewer", "operator", "release_manager"):
        _refused(fleet, role, path, 403, "BMSFW-E603")
    bob = {"Authorization": f"Bearer {created['token']}"}
    assert fleet.client.get("/api/v1/whoami", headers=bob).status_code == 200
    fleet.call("POST", path, "admin")
    assert fleet.client.get("/api/v1/whoami", headers=bob).status_code == 401
    assert ("token.revoke", f"credential:{created['id']}") in _actions(fleet)


def test_release_deactivate_lets_running_campaigns_finish(
    running: tuple[Fleet, int, int], pki: Any
) -> None:
    fleet, release, campaign = running
    path = f"/api/v1/releases/{release}/deactivate"
    bad = fleet.client.post(path, headers=fleet.h("admin"), json={"running": "later"})
    assert bad.status_code == 422
    assert fleet.call("GET", f"/api/v1/releases/{release}")["deactivated_at"] is None
    offers = fleet.check_in("gw1", [bms("A1"), bms("A2")])["offers"]
    pulled = fleet.call("POST", path, "release_manager", json={"running": "finish"})
    assert pulled["deactivated_at"]
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign}")["status"] == "running"
    # Its devices still get it; no new campaign may use it.
    assert len(fleet.check_in("gw1", [bms("A1"), bms("A2")])["offers"]) == 2
    url = offers[0]["artifact_url"]
    assert fleet.client.get(url, headers=fleet.h("gw1")).status_code == 200
    assert release in fleet.service.served_release_ids()  # still in the signed TUF targets
    new = fleet.client.post(
        "/api/v1/campaigns",
        headers=fleet.h("operator"),
        json={"name": "again", "release_id": release, "phases": ALL},
    )
    assert new.status_code == 409 and new.json()["error"]["code"] == "BMSFW-E643"
    entry = next(
        e for e in fleet.call("GET", "/api/v1/audit") if e["action"] == "release.deactivate"
    )
    assert entry["detail"]["running"] == "finish" and entry["detail"]["cancelled_campaigns"] == []
    # Once its last campaign ends, no gateway may download it any more.
    for serial in ("A1", "A2"):
        fleet.report("gw1", serial, campaign, "downloading")
        fleet.report("gw1", serial, campaign, "downloaded")
        fleet.report("gw1", serial, campaign, "installing")
        fleet.report("gw1", serial, campaign, "succeeded")
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign}")["status"] == "completed"
    gone = fleet.client.get(url, headers=fleet.h("gw1"))
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "BMSFW-E643"
    assert release not in fleet.service.served_release_ids()
