"""No route answers without a valid credential of an allowed role; audit and access review."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount

from bmsfw.fleet.auth import ALL_ROLES

from .conftest import Fleet, bms

ANONYMOUS = ("/healthz", "/readyz", "/api/v1/openapi.json", "/api/v1/docs")


def _api_routes(fleet: Fleet) -> list[tuple[str, str, frozenset[str]]]:
    routes = []
    for route in fleet.app.routes:
        if isinstance(route, Mount) and route.path == "/ui":
            continue  # the dashboard: session cookies, not bearer tokens (tests/web)
        if isinstance(route, Mount) and route.path == "/api/v1/docs/assets":
            continue  # Swagger UI's script and style (test_api_docs.py)
        # Anything that is not one of our guarded API routes (e.g. FastAPI's stock
        # /docs or /openapi.json) would be an anonymous endpoint: fail loudly.
        assert isinstance(route, APIRoute), f"unguarded route {route.path}"
        if (route.openapi_extra or {}).get("x-bmsfw-anonymous"):
            # the only ones (the API description: test_api_docs.py)
            assert route.path in ANONYMOUS, route.path
            continue
        roles = (route.openapi_extra or {}).get("x-bmsfw-roles")
        assert roles, f"{route.path} declares no roles"
        path = re.sub(r"\{[^}]+\}", "999999", route.path)  # nothing real is touched
        for method in route.methods:
            routes.append((method, path, frozenset(roles)))
    return routes


@pytest.mark.req("IEC62443-CR1.1", "IEC62443-CR1.2", "IEC62443-CR2.1")
def test_every_route_refuses_missing_bad_and_wrong_role_credentials(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    routes = _api_routes(fleet)
    assert len(routes) >= 25
    for method, path, allowed in routes:
        none = fleet.client.request(method, path)
        assert none.status_code == 401, (method, path, none.text)
        assert none.json()["error"]["code"] == "BMSFW-E601"
        bad = fleet.client.request(method, path, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "BMSFW-E602"
        basic = fleet.client.request(method, path, headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401
        for role in ALL_ROLES:
            who = "gw" if role == "gateway" else role
            response = fleet.client.request(method, path, headers=fleet.h(who))
            code = (
                response.json().get("error", {}).get("code")
                if response.content
                and response.headers.get("content-type", "").startswith("application/json")
                and isinstance(response.json(), dict)
                else None
            )
            if role in allowed:
                assert response.status_code not in (401,), (method, path, role)
                assert code != "BMSFW-E603", (method, path, role)
            else:
                assert response.status_code == 403, (method, path, role, response.text)
                assert code == "BMSFW-E603"


def test_openapi_spec_names_roles(fleet: Fleet) -> None:
    assert fleet.client.get("/openapi.json").status_code == 404
    assert fleet.client.get("/docs").status_code == 404
    spec = fleet.client.get("/api/v1/openapi.json").json()
    check_in = spec["paths"]["/api/v1/agent/check-in"]["post"]
    assert check_in["x-bmsfw-roles"] == ["gateway"]
    upload = spec["paths"]["/api/v1/releases"]["post"]
    assert upload["x-bmsfw-roles"] == ["admin", "release_manager"]


@pytest.mark.req("SEED-ACCESS-REVIEW")
def test_revoked_token_is_refused_and_access_review_lists_everyone(fleet: Fleet) -> None:
    created = fleet.call("POST", "/api/v1/tokens", json={"name": "alice", "role": "operator"})
    alice = {"Authorization": f"Bearer {created['token']}"}
    assert fleet.client.get("/api/v1/whoami", headers=alice).json()["role"] == "operator"
    fleet.call("POST", f"/api/v1/tokens/{created['id']}/revoke")
    refused = fleet.client.get("/api/v1/whoami", headers=alice)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "BMSFW-E602"

    fleet.add_gateway("gw", "site")
    review = fleet.call("GET", "/api/v1/access-review")
    by_name = {r["name"]: r for r in review}
    assert set(by_name) >= {"admin", "test-viewer", "alice", "gateway:gw"}
    assert by_name["alice"]["revoked_at"] and not by_name["alice"]["active"]
    assert by_name["admin"]["last_used_at"] is not None
    assert by_name["test-viewer"]["last_used_at"] is None  # never used yet
    assert by_name["gateway:gw"]["role"] == "gateway"
    assert all(len(str(r["token_prefix"])) < 20 for r in review)  # no clear token leaks


@pytest.mark.req("IEC62443-CR1.5")
def test_tokens_are_stored_hashed(fleet: Fleet) -> None:
    from sqlalchemy import create_engine, select

    from bmsfw.fleet.models import Credential

    token = fleet.tokens["operator"]
    engine = create_engine(fleet.db_url)
    with engine.connect() as conn:
        hashes = list(conn.execute(select(Credential.token_hash)).scalars())
    engine.dispose()
    assert token not in hashes and all(len(h) == 64 for h in hashes)


@pytest.mark.req("IEC62443-CR2.8")
def test_changes_are_audited(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    fleet.call(
        "PUT",
        "/api/v1/sites/site/maintenance-windows",
        "operator",
        json={
            "timezone": "Europe/Amsterdam",
            "windows": [{"days": [5, 6], "start": "01:00", "end": "05:00"}],
        },
    )
    entries = fleet.call("GET", "/api/v1/audit")
    actions = {(e["action"], e["actor"]) for e in entries}
    assert ("gateway.create", "operator:admin") in actions
    assert ("device.register", "gateway:gateway:gw") in actions
    assert ("site.windows", "operator:test-operator") in actions
    assert fleet.client.get("/api/v1/audit", headers=fleet.h("operator")).status_code == 403
