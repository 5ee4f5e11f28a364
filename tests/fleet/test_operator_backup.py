"""Backups filed by a technician's laptop (operator token): POST /devices/{serial}/backups."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import text

from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.fleet.db import make_engine, schema_revision, upgrade_database
from bmsfw.fleet.errors import FleetServerError

from .conftest import Fleet, bms

CONFIG: dict[str, Any] = {
    "format": "bmsfw-config-backup/1",
    "identity": {"serial": "S1", "model": "BMS-48V"},
    "snapshot": {"config": {"cell_ov_mv": 3650}, "calibration": {"v_gain": [1.0021, 0.998]}},
}


def _canonical_sha256(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _upload(fleet: Fleet, serial: str, role: str, body: dict[str, Any]) -> Any:
    return fleet.client.post(f"/api/v1/devices/{serial}/backups", headers=fleet.h(role), json=body)


def test_operator_uploads_a_backup_listed_with_who_uploaded_it(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    response = _upload(fleet, "S1", "operator", {"reason": "on-site service", "config": CONFIG})
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["device_serial"] == "S1"
    assert info["uploaded_by"] == "test-operator"
    assert info["reason"] == "on-site service"
    assert info["sha256"] == _canonical_sha256(CONFIG)
    # The gateway's own backups keep working and name the gateway's credential.
    by_gateway = fleet.call(
        "POST", "/api/v1/agent/backups", "gw", json={"device_serial": "S1", "config": {"a": 1}}
    )
    assert by_gateway["uploaded_by"] == "gateway:gw"

    listed = fleet.call("GET", "/api/v1/devices/S1/backups", "operator")
    assert [(b["id"], b["uploaded_by"]) for b in listed] == [
        (by_gateway["id"], "gateway:gw"),
        (info["id"], "test-operator"),
    ]
    stored = fleet.call("GET", f"/api/v1/backups/{info['id']}", "operator")
    assert stored["config"] == CONFIG and stored["uploaded_by"] == "test-operator"
    # The device's gateway may read a technician's backup of its own device (restore on site).
    assert fleet.call("GET", f"/api/v1/backups/{info['id']}", "gw")["config"] == CONFIG

    entries = fleet.call("GET", "/api/v1/audit", "admin")
    stores = [
        e for e in entries if e["action"] == "backup.store" and e["detail"]["backup"] == info["id"]
    ]
    assert len(stores) == 1
    assert stores[0]["actor"] == "operator:test-operator"
    assert stores[0]["target"] == "device:S1"
    assert stores[0]["detail"]["sha256"] == info["sha256"]


def test_admin_may_upload_but_viewer_and_gateway_may_not(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    body = {"config": CONFIG}
    assert _upload(fleet, "S1", "admin", body).status_code == 201
    for role in ("viewer", "gw"):
        refused = _upload(fleet, "S1", role, body)
        assert refused.status_code == 403, (role, refused.text)
        assert refused.json()["error"]["code"] == "BMSFW-E603"
    assert len(fleet.call("GET", "/api/v1/devices/S1/backups", "operator")) == 1


def test_unknown_serial_is_refused_and_nothing_is_stored(fleet: Fleet) -> None:
    refused = _upload(fleet, "NOPE", "operator", {"config": CONFIG})
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "BMSFW-E604"
    assert "NOPE" in refused.json()["error"]["message"]
    entries = fleet.call("GET", "/api/v1/audit", "admin")
    assert not [e for e in entries if e["action"] == "backup.store"]


def test_backup_over_the_size_limit_is_refused(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    limit = fleet.service.settings.max_backup_bytes
    big = {"blob": "x" * limit}
    refused = _upload(fleet, "S1", "operator", {"config": big})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "BMSFW-E614"
    assert str(limit) in refused.json()["error"]["message"]
    # Just under the limit is accepted: the limit is on the canonical JSON.
    fits = {"blob": "x" * (limit - len('{"blob":""}'))}
    assert _upload(fleet, "S1", "operator", {"config": fits}).status_code == 201
    assert len(fleet.call("GET", "/api/v1/devices/S1/backups", "operator")) == 1


def test_migration_keeps_gateway_backups_and_names_their_uploader(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade_database(engine, "0001")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO gateways (id, name, site, tags, agent_version, created_at) "
                    "VALUES (1, 'gw', 'site', '[]', '', '2025-01-06 12:00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO devices (id, serial, gateway_id, model, hw_revision, "
                    "bootloader_version, firmware_version, firmware_sha256, security_counter, "
                    "site, tags, integrity_ok, integrity_detail, first_seen_at, last_seen_at) "
                    "VALUES (1, 'S1', 1, 'BMS-48V', 'A', '1.0.0', '1.0.0', '', 1, 'site', '[]', "
                    "true, '', '2025-01-06 12:00:00', '2025-01-06 12:00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO config_backups (id, device_id, gateway_id, created_at, reason, "
                    "sha256, size_bytes, content) VALUES (1, 1, 1, '2025-01-06 12:00:00', "
                    "'pre-update', 'ab', 2, '{}')"
                )
            )
        upgrade_database(engine, "0002")
        assert schema_revision(engine) == "0002"
        with engine.begin() as conn:
            row = conn.execute(
                text("SELECT gateway_id, uploaded_by, reason FROM config_backups")
            ).one()
            assert tuple(row) == (1, "gateway:gw", "pre-update")
            # An operator backup (no gateway) now fits the schema.
            conn.execute(
                text(
                    "INSERT INTO config_backups (id, device_id, gateway_id, uploaded_by, "
                    "created_at, reason, sha256, size_bytes, content) VALUES (2, 1, NULL, "
                    "'alice', '2025-01-06 12:00:00', '', 'cd', 2, '{}')"
                )
            )
    finally:
        engine.dispose()


def test_the_route_is_guarded_for_operator_and_above(fleet: Fleet) -> None:
    # The all-routes auth test walks app.routes; this pins that it sees this route.
    routes = {
        (method, route.path): (route.openapi_extra or {}).get("x-bmsfw-roles")
        for route in fleet.app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert routes[("POST", "/api/v1/devices/{serial}/backups")] == [
        "admin",
        "operator",
        "release_manager",
    ]


def test_client_refuses_a_server_copy_with_another_digest() -> None:
    # A unit test of the client's check alone: the server answers with a wrong digest.
    def answer(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        assert request.url.raw_path == b"/api/v1/devices/S%201/backups"
        assert sent == {"reason": "r", "config": CONFIG}
        return httpx.Response(
            201,
            json={
                "id": 7,
                "device_serial": "S 1",
                "created_at": "2025-01-06T12:00:00Z",
                "reason": "r",
                "sha256": "0" * 64,
                "size_bytes": 10,
                "uploaded_by": "x",
            },
        )

    http = httpx.Client(base_url="https://fleet.test", transport=httpx.MockTransport(answer))
    client = FleetClient(ClientConfig("https://fleet.test", "t"), http=http)
    with pytest.raises(FleetServerError, match=_canonical_sha256(CONFIG)):
        client.upload_device_backup("S 1", CONFIG, "r")
