"""Four eyes (ServerConfig.approval_above_devices): a campaign above the size waits for a
second person; its creator cannot approve it (E650), a viewer cannot (E603), nothing is
offered until another operator approves it from the API or the dashboard; every step is
audited, and a refused approval changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from bmsfw.package import VendorPki
from fleet import conftest as fleet_fixtures
from fleet.conftest import Fleet, bms, make_release

from .test_routes import _sign_in, https_fleet

fleet = fleet_fixtures.fleet
db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
__all__ = ["https_fleet"]


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"approval_above_devices": 2}


def _offers(fleet: Fleet, serials: list[str]) -> list[str]:
    answer = fleet.check_in("gw", [bms(s) for s in serials])
    return [o["device_serial"] for o in answer["offers"]]


@pytest.mark.req("IEC62443-CR2.1")
def test_a_large_campaign_waits_for_a_second_person(fleet: Fleet, pki: VendorPki) -> None:
    fleet.add_gateway("gw", "site")
    serials = ["SN1", "SN2", "SN3"]
    fleet.check_in("gw", [bms(s) for s in serials])
    release = fleet.upload(make_release(pki))
    spec = {"name": "big", "release_id": release["id"]}
    campaign = fleet.call("POST", "/api/v1/campaigns", "operator", json=spec)
    assert campaign["status"] == "needs_approval" and campaign["targets"] == 3
    assert _offers(fleet, serials) == []  # nothing offered before approval
    fleet.service.tick()
    path = f"/api/v1/campaigns/{campaign['id']}/approve"
    for role, status, code in (("operator", 403, "BMSFW-E650"), ("viewer", 403, "BMSFW-E603")):
        refused = fleet.client.post(path, headers=fleet.h(role))
        assert refused.status_code == status and refused.json()["error"]["code"] == code, role
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign['id']}")["status"] == "needs_approval"
    assert _offers(fleet, serials) == []
    # Its devices are claimed: a second campaign finds none to take.
    other = fleet.client.post("/api/v1/campaigns", headers=fleet.h("admin"), json=spec)
    assert other.status_code == 422 and other.json()["error"]["code"] == "BMSFW-E610"
    approved = fleet.call("POST", path, "release_manager")
    assert approved["status"] == "running"
    assert len(_offers(fleet, serials)) >= 1  # the first phase is offered now
    again = fleet.client.post(path, headers=fleet.h("admin"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "BMSFW-E608"
    actions = [
        (e["action"], e["actor"])
        for e in fleet.call("GET", "/api/v1/audit")
        if e["target"] == f"campaign:{campaign['id']}"
    ]
    assert ("approval.refused", "operator:test-operator") in actions
    assert ("campaign.approve", "operator:test-release_manager") in actions


def test_a_small_campaign_starts_at_once(fleet: Fleet, pki: VendorPki) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("SN1"), bms("SN2")])
    release = fleet.upload(make_release(pki))
    spec = {"name": "small", "release_id": release["id"]}
    assert fleet.call("POST", "/api/v1/campaigns", "operator", json=spec)["status"] == "running"


def test_approval_from_the_dashboard(https_fleet: Fleet, pki: VendorPki) -> None:
    fleet = https_fleet
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms(f"SN{i}") for i in range(3)])
    release = fleet.upload(make_release(pki))
    campaign = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={"name": "<b>big</b>", "release_id": release["id"]},
    )
    page_path = f"/ui/campaigns/{campaign['id']}"
    _sign_in(fleet, "viewer")
    assert fleet.client.get(f"/ui/campaigns/preview?release_id={release['id']}").status_code == 403
    _sign_in(fleet, "operator")
    fleet.check_in("gw", [bms(f"SN{i}") for i in range(3, 6)])  # three more, not yet claimed
    fleet.call(
        "PUT",
        "/api/v1/sites/site/maintenance-windows",
        "operator",
        json={
            "timezone": "Europe/Amsterdam",
            "windows": [{"days": [0, 1, 2, 3, 4], "start": "22:00", "end": "04:00"}],
        },
    )
    preview = fleet.client.get(
        "/ui/campaigns/preview", params={"release_id": release["id"], "sites": "site"}
    )
    assert "site (Europe/Amsterdam: Mon/Tue/Wed/Thu/Fri 22:00–04:00)" in preview.text
    assert (
        "This targets <strong>3</strong> device(s) in 1 site(s) (site 3); 0 are offline. "
        "It will wait for a second person's approval (four eyes)."
    ) in preview.text
    bad = fleet.client.get(
        "/ui/campaigns/preview", params={"release_id": release["id"], "version_range": "<<1"}
    )
    assert "BMSFW-E609" in bad.text and bad.status_code == 200
    assert len(fleet.call("GET", "/api/v1/campaigns")) == 1  # a preview creates nothing
    _sign_in(fleet, "operator")
    own = fleet.client.get(page_path)
    assert 'data-testid="approval"' in own.text and "(you created it, so not you)" in own.text
    assert 'data-testid="approve"' not in own.text
    overview = fleet.client.get("/ui/")
    assert "waiting for approval" in overview.text and "&lt;b&gt;big&lt;/b&gt;" in overview.text
    csrf = _sign_in(fleet, "operator")
    refused = fleet.client.post(f"{page_path}/approve", data={"csrf": csrf})
    assert refused.status_code == 403 and "BMSFW-E650" in refused.text
    csrf = _sign_in(fleet, "release_manager")
    assert 'data-testid="approve"' in fleet.client.get(page_path).text
    forged = fleet.client.post(f"{page_path}/approve", data={"csrf": "forged"})
    assert forged.status_code == 403 and "BMSFW-E640" in forged.text
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign['id']}")["status"] == "needs_approval"
    done = fleet.client.post(f"{page_path}/approve", data={"csrf": csrf})
    assert done.status_code == 200
    assert 'data-testid="campaign-status">running<' in done.text
