"""Every dashboard route, without a browser: nothing answers without a session, forms
need the operator role and the session's CSRF token, refusals are audited."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount

from bmsfw.package import VendorPki
from fleet import conftest as fleet_fixtures
from fleet.conftest import Fleet, bms, make_release

# The in-process fleet fixtures of tests/fleet, used here as they are.
fleet = fleet_fixtures.fleet
db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
config_overrides = fleet_fixtures.config_overrides


def _dashboard_routes(fleet: Fleet) -> list[tuple[str, str]]:
    mounts = [r for r in fleet.app.routes if isinstance(r, Mount) and r.path == "/ui"]
    assert len(mounts) == 1
    routes = []
    for route in mounts[0].routes:
        if isinstance(route, Mount):
            assert route.path == "/static", route.path  # the stylesheet and script only
            continue
        assert isinstance(route, APIRoute), route
        # Not even whether an id is well-formed is told without a session.
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        routes.extend((method, "/ui" + path) for method in route.methods)
    return routes


def _campaign_on_sn1(fleet: Fleet, pki: VendorPki) -> tuple[Any, Any]:
    """Gateway gw with device SN1, a release and an operator's campaign "c" of it."""
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("SN1")])
    release = fleet.upload(make_release(pki))
    campaign = fleet.call(
        "POST", "/api/v1/campaigns", "operator", json={"name": "c", "release_id": release["id"]}
    )
    return release, campaign


def _sign_in(fleet: Fleet, role: str) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    fleet.client.cookies.clear()
    page = fleet.client.get("/ui/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert nonce
    signed = fleet.client.post(
        "/ui/login", data={"csrf": nonce.group(1), "token": fleet.tokens[role]}
    )
    assert signed.status_code == 200, signed.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', signed.text)
    assert csrf
    return csrf.group(1)


@pytest.fixture
def https_fleet(fleet: Fleet) -> Fleet:
    # The session cookie is Secure: the in-process client must speak "https".
    fleet.client.base_url = "https://testserver"  # type: ignore[assignment]
    return fleet


def test_no_dashboard_route_answers_without_a_session(https_fleet: Fleet) -> None:
    fleet = https_fleet
    routes = _dashboard_routes(fleet)
    assert len(routes) >= 12
    for method, path in routes:
        if path == "/ui/login":
            continue
        response = fleet.client.request(method, path, follow_redirects=False)
        assert response.status_code == 303, (method, path, response.status_code)
        assert response.headers["location"].startswith("/ui/login"), (method, path)
        fragment = fleet.client.request(
            method, path, headers={"X-Bmsfw-Fragment": "1"}, follow_redirects=False
        )
        assert fragment.status_code == 401, (method, path)  # the script reloads the page
        # An API bearer token is not a dashboard session.
        bearer = fleet.client.request(
            method, path, headers=fleet.h("admin"), follow_redirects=False
        )
        assert bearer.status_code == 303, (method, path)


def test_a_viewer_cannot_pause_even_with_a_valid_csrf_token(
    https_fleet: Fleet, pki: VendorPki
) -> None:
    fleet = https_fleet
    _, campaign = _campaign_on_sn1(fleet, pki)
    csrf = _sign_in(fleet, "viewer")
    refused = fleet.client.post(f"/ui/campaigns/{campaign['id']}/pause", data={"csrf": csrf})
    assert refused.status_code == 403 and "BMSFW-E603" in refused.text
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign['id']}")["status"] == "running"
    csrf = _sign_in(fleet, "operator")
    paused = fleet.client.post(f"/ui/campaigns/{campaign['id']}/pause", data={"csrf": csrf})
    assert paused.status_code == 200 and "paused" in paused.text
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign['id']}")["status"] == "paused"


def test_failed_sign_ins_are_audited_and_security_headers_set(https_fleet: Fleet) -> None:
    fleet = https_fleet
    fleet.client.cookies.clear()
    page = fleet.client.get("/ui/login")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert nonce
    bad = fleet.client.post("/ui/login", data={"csrf": nonce.group(1), "token": "bmsfw_op_nope"})
    assert bad.status_code == 401 and "BMSFW-E602" in bad.text
    no_csrf = fleet.client.post("/ui/login", data={"token": fleet.tokens["admin"]})
    assert no_csrf.status_code == 403 and "BMSFW-E640" in no_csrf.text
    assert "__Host-bmsfw_session" not in fleet.client.cookies
    entries = fleet.call("GET", "/api/v1/audit")
    refused = [e for e in entries if e["action"] == "access.refused"]
    assert any(e["detail"].get("reason") == "BMSFW-E602" for e in refused), refused


@pytest.mark.parametrize("role", ["viewer", "operator", "release_manager", "admin"])
def test_each_role_sees_what_it_may_do(https_fleet: Fleet, pki: VendorPki, role: str) -> None:
    fleet = https_fleet
    release, campaign = _campaign_on_sn1(fleet, pki)
    _sign_in(fleet, role)
    may_operate = role != "viewer"
    page = fleet.client.get(f"/ui/campaigns/{campaign['id']}")
    assert page.status_code == 200
    assert ('data-testid="pause"' in page.text) is may_operate
    assert ('data-testid="cancel"' in page.text) is may_operate
    device = fleet.client.get("/ui/devices/SN1")
    assert device.status_code == 200
    assert ("Backups are shown to operators" in device.text) is not may_operate
    for path in ("/ui/", "/ui/devices", "/ui/campaigns", "/ui/releases", "/ui/flags"):
        assert fleet.client.get(path, follow_redirects=False).status_code == 200, (role, path)
    shown = fleet.client.get(f"/ui/releases/{release['id']}")
    assert shown.status_code == 200 and 'data-testid="version">1.1.0<' in shown.text
    assert release["sha256"] in shown.text and f"/ui/campaigns/{campaign['id']}" in shown.text
    for missing in ("/ui/releases/999", "/ui/releases/0", "/ui/releases/x"):
        absent = fleet.client.get(missing)
        assert absent.status_code == 404 and "BMSFW-E604" in absent.text, missing


def test_flags_are_acknowledged_from_the_page_and_audited(https_fleet: Fleet) -> None:
    fleet = https_fleet
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("SN<1>")])
    fleet.check_in("gw", [bms("SN<1>", "1.0.9")])  # changed outside any campaign
    (flag,) = fleet.call("GET", "/api/v1/flags")
    csrf = _sign_in(fleet, "viewer")
    page = fleet.client.get("/ui/flags")
    assert "1 flag(s)" in page.text and "SN&lt;1&gt;" in page.text
    assert f'data-testid="ack-{flag["id"]}"' not in page.text  # a viewer only looks
    refused = fleet.client.post(f"/ui/flags/{flag['id']}/acknowledge", data={"csrf": csrf})
    assert refused.status_code == 403 and "BMSFW-E603" in refused.text
    csrf = _sign_in(fleet, "operator")
    forged = fleet.client.post(f"/ui/flags/{flag['id']}/acknowledge", data={"csrf": "x"})
    assert forged.status_code == 403 and "BMSFW-E640" in forged.text
    assert fleet.call("GET", "/api/v1/flags")  # still open
    done = fleet.client.post(
        f"/ui/flags/{flag['id']}/acknowledge", data={"csrf": csrf, "note": "re-flashed on site"}
    )
    assert done.status_code == 200 and "0 flag(s)" in done.text
    assert fleet.call("GET", "/api/v1/flags") == []
    entries = fleet.call("GET", "/api/v1/audit")
    ack = [e for e in entries if e["action"] == "flag.acknowledge"]
    assert ack and ack[0]["detail"]["note"] == "re-flashed on site"
    assert ack[0]["actor"].endswith("operator")


def test_audit_and_access_review_are_for_admins(https_fleet: Fleet) -> None:
    fleet = https_fleet
    for role in ("viewer", "operator", "release_manager"):
        _sign_in(fleet, role)
        for path in ("/ui/audit", "/ui/access"):
            response = fleet.client.get(path)
            assert response.status_code == 403 and "BMSFW-E603" in response.text, (role, path)
        assert 'href="/ui/audit"' not in fleet.client.get("/ui/").text
    _sign_in(fleet, "admin")
    audit = fleet.client.get("/ui/audit")
    assert audit.status_code == 200
    # The refusals just counted are in the log already (flushed before the page).
    assert "access.refused" in audit.text
    filtered = fleet.client.get("/ui/audit?action=token.")
    assert "access.refused" not in filtered.text
    access = fleet.client.get("/ui/access")
    assert access.status_code == 200
    for role in ("viewer", "operator", "release_manager", "admin"):
        assert f"<td>{role}</td>" in access.text


def test_backups_are_downloaded_and_compared(https_fleet: Fleet) -> None:
    fleet = https_fleet
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("SN1"), bms("SN2")])
    made = []
    for serial, config in (
        ("SN1", {"cells": 16, "ov_mv": 3650, "note": "<script>x()</script>"}),
        ("SN1", {"cells": 16, "ov_mv": 3600, "note": "<script>x()</script>"}),
        ("SN2", {"cells": 8}),
    ):
        made.append(
            fleet.call(
                "POST", f"/api/v1/devices/{serial}/backups", "operator", json={"config": config}
            )["id"]
        )
    _sign_in(fleet, "viewer")
    assert fleet.client.get(f"/ui/backups/{made[0]}/download").status_code == 403
    _sign_in(fleet, "operator")
    device = fleet.client.get("/ui/devices/SN1")
    assert f"/ui/backups/{made[0]}/download" in device.text and "Compare" in device.text
    download = fleet.client.get(f"/ui/backups/{made[0]}/download")
    assert download.status_code == 200
    assert (
        download.headers["content-disposition"] == f'attachment; filename="backup-{made[0]}.json"'
    )
    assert download.json() == {"cells": 16, "ov_mv": 3650, "note": "<script>x()</script>"}
    diff = fleet.client.get(f"/ui/devices/SN1/backups/diff?a={made[0]}&b={made[1]}")
    assert diff.status_code == 200
    assert '<span class="del">-  &#34;ov_mv&#34;: 3650</span>' in diff.text
    assert '<span class="add">+  &#34;ov_mv&#34;: 3600</span>' in diff.text
    assert "<script>" not in diff.text.split("<main>")[1]
    same = fleet.client.get(f"/ui/devices/SN1/backups/diff?a={made[0]}&b={made[0]}")
    assert "identical" in same.text
    # A backup of another device is not compared under this one's name.
    other = fleet.client.get(f"/ui/devices/SN1/backups/diff?a={made[0]}&b={made[2]}")
    assert other.status_code == 404 and "BMSFW-E604" in other.text


def test_a_campaign_is_created_from_the_form(https_fleet: Fleet, pki: VendorPki) -> None:
    fleet = https_fleet
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms(f"SN{i}") for i in range(4)])
    release = fleet.upload(make_release(pki))
    critical = fleet.upload(make_release(pki, "1.2.0", safety_class="safety-critical"))
    csrf = _sign_in(fleet, "viewer")
    assert fleet.client.get("/ui/campaigns/new").status_code == 403
    csrf = _sign_in(fleet, "operator")
    form = fleet.client.get("/ui/campaigns/new").text
    assert f'value="{release["id"]}"' in form
    assert f'value="{critical["id"]}"' not in form  # not offered: no OTA for it
    body = {
        "csrf": csrf,
        "name": "harbour <1.1>",
        "release_id": str(release["id"]),
        "sites": "harbour",
        "canary": "1",
        "percents": "50, 100",
        "soak_s": "0",
        "error_threshold_pct": "25",
    }
    for bad, code in (
        ({"percents": "50, lots"}, "BMSFW-E609"),
        ({"error_threshold_pct": "0"}, "BMSFW-E609"),
        ({"release_id": str(critical["id"])}, "BMSFW-E606"),
        ({"csrf": "forged"}, "BMSFW-E640"),
    ):
        refused = fleet.client.post("/ui/campaigns/new", data={**body, **bad})
        assert refused.status_code in (403, 409, 422) and code in refused.text, (bad, refused.text)
    assert fleet.call("GET", "/api/v1/campaigns") == []  # nothing was created
    made = fleet.client.post("/ui/campaigns/new", data=body)
    assert made.status_code == 200 and "harbour &lt;1.1&gt;" in made.text
    (campaign,) = fleet.call("GET", "/api/v1/campaigns")
    assert campaign["status"] == "running" and campaign["targets"] == 4
    assert [p["name"] for p in campaign["phases"]] == ["canary", "50%", "100%"]
    assert campaign["error_threshold_pct"] == 25
    assert campaign["created_by"].endswith("operator")


def test_a_downgrade_campaign_is_created_from_the_form(https_fleet: Fleet, pki: VendorPki) -> None:
    """A reason in the form's downgrade field: the pack on a higher version is a target
    (the preview counts it), and the campaign waits for a release manager."""
    fleet = https_fleet
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms("OLD", version="1.0.0"), bms("NEW", version="1.2.0")])
    release = fleet.upload(make_release(pki))  # 1.1.0
    csrf = _sign_in(fleet, "operator")
    query = {"release_id": str(release["id"]), "canary": "0", "percents": "100"}
    plain = fleet.client.get("/ui/campaigns/preview", params=query).text
    assert "This targets <strong>1</strong> device(s)" in plain
    query["downgrade_reason"] = "1.2.0\tdrains <cells>"
    down = fleet.client.get("/ui/campaigns/preview", params=query).text
    assert "This targets <strong>2</strong> device(s)" in down
    assert "wait for a second person" in down
    body = {"csrf": csrf, "name": "back", "soak_s": "0", **query}
    made = fleet.client.post("/ui/campaigns/new", data=body)
    assert (
        made.status_code == 200
        and "this is a downgrade campaign (1.2.0 drains &lt;cells&gt;)" in made.text
    )
    (campaign,) = fleet.call("GET", "/api/v1/campaigns")
    assert (campaign["status"], campaign["targets"]) == ("needs_approval", 2)
    assert campaign["selector"]["downgrade_reason"] == "1.2.0 drains <cells>"


@pytest.mark.req("R156-FLEET-RECORD")
def test_the_device_page_shows_its_update_record_and_serves_each_bundle(
    https_fleet: Fleet,
) -> None:
    from fleet.test_evidence_store import _bundle

    fleet = https_fleet
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("EV-1")])
    data = _bundle("EV-1")
    stored = fleet.client.post(
        "/api/v1/agent/evidence",
        headers={**fleet.h("gw"), "Content-Type": "application/octet-stream"},
        content=data,
    )
    assert stored.status_code == 201, stored.text
    number = stored.json()["id"]
    _sign_in(fleet, "viewer")
    page = fleet.client.get("/ui/devices/EV-1")
    assert "Update record" in page.text and f"/ui/evidence/{number}/download" not in page.text
    assert fleet.client.get(f"/ui/evidence/{number}/download").status_code == 403
    _sign_in(fleet, "operator")
    page = fleet.client.get("/ui/devices/EV-1")
    assert f"/ui/evidence/{number}/download" in page.text and "<td>updated</td>" in page.text
    assert "<td>uploaded by gateway gw</td>" in page.text
    filed = fleet.client.post(  # an update done on site, filed by an operator
        "/api/v1/evidence",
        headers={**fleet.h("operator"), "Content-Type": "application/octet-stream"},
        content=_bundle("EV-1", outcome="rolled-back"),
    )
    assert filed.status_code == 201, filed.text
    page = fleet.client.get("/ui/devices/EV-1")
    assert f"<td>filed by operator {filed.json()['uploaded_by']}</td>" in page.text
    download = fleet.client.get(f"/ui/evidence/{number}/download")
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-type"] == "application/zip"
    assert fleet.client.get("/ui/evidence/99999/download").status_code == 404
    assert fleet.client.get("/ui/evidence/x/download").status_code == 404


def test_an_admin_revokes_a_token_from_the_access_review(https_fleet: Fleet) -> None:
    fleet = https_fleet
    who = fleet.call("GET", "/api/v1/access-review", "admin")
    (operator,) = [c for c in who if c["name"] == "test-operator"]
    csrf = _sign_in(fleet, "operator")
    refused = fleet.client.post(f"/ui/access/{operator['id']}/revoke", data={"csrf": csrf})
    assert refused.status_code == 403 and "BMSFW-E603" in refused.text
    operator_cookie = fleet.client.cookies.get("__Host-bmsfw_session")
    csrf = _sign_in(fleet, "admin")
    page = fleet.client.get("/ui/access")
    assert f'data-testid="revoke-{operator["id"]}"' in page.text
    forged = fleet.client.post(f"/ui/access/{operator['id']}/revoke", data={"csrf": "x"})
    assert forged.status_code == 403 and "BMSFW-E640" in forged.text
    assert fleet.client.get("/api/v1/whoami", headers=fleet.h("operator")).status_code == 200
    done = fleet.client.post(f"/ui/access/{operator['id']}/revoke", data={"csrf": csrf})
    assert done.status_code == 200 and "revoked" in done.text
    assert fleet.client.get("/api/v1/whoami", headers=fleet.h("operator")).status_code == 401
    # The operator's open dashboard session ends with its token.
    fleet.client.cookies.set("__Host-bmsfw_session", str(operator_cookie))
    assert fleet.client.get("/ui/", follow_redirects=False).status_code == 303
    entries = fleet.call("GET", "/api/v1/audit")
    assert any(e["action"] == "token.revoke" and e["actor"].endswith("admin") for e in entries)
