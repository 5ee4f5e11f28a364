"""A decommissioned device, or any device of a decommissioned gateway, that still checks
in: refused with a stable code, nothing about it applied, flagged
``decommissioned_check_in`` (on the flags list and the dashboard's overview) and audited;
on SQLite and PostgreSQL (the single-statement check-in included)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, select

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import GatewayDecommissionedError
from bmsfw.fleet.models import Device, Gateway
from bmsfw.fleet.protocol import CheckIn
from fleet import conftest as fleet_fixtures
from fleet.conftest import Fleet, bms

from .test_routes import _sign_in, https_fleet

db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
fleet = fleet_fixtures.fleet
config_overrides = fleet_fixtures.config_overrides
__all__ = ["https_fleet"]

KIND = "decommissioned_check_in"


def _rows(fleet: Fleet) -> dict[str, Any]:
    """The device and gateway rows as stored (what a refused check-in must not change)."""
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            devices = {r.serial: tuple(r) for r in conn.execute(select(Device.__table__))}
            gateways = {r.name: tuple(r) for r in conn.execute(select(Gateway.__table__))}
            return {"devices": devices, "gateways": gateways}
    finally:
        engine.dispose()


def _flags(fleet: Fleet) -> list[tuple[str, str]]:
    return sorted((f["device_serial"], f["kind"]) for f in fleet.call("GET", "/api/v1/flags"))


def _refusals(fleet: Fleet) -> list[dict[str, Any]]:
    entries = fleet.call("GET", "/api/v1/audit", params={"limit": 1000})
    return [
        {"action": e["action"], "actor": e["actor"], **e["detail"]}
        for e in entries
        if e["action"] in ("device.check_in_refused", "gateway.check_in_refused")
    ]


def test_a_decommissioned_device_checking_in_is_refused_flagged_and_audited(
    https_fleet: Fleet,
) -> None:
    fleet = https_fleet
    fleet.add_gateway("gw1", "north")
    fleet.check_in("gw1", [bms("A1", soc_pct=50.0), bms("A2")])
    fleet.call("POST", "/api/v1/devices/A1/decommission", "operator", json={"reason": "scrap"})
    before = _rows(fleet)["devices"]
    fleet.clock.advance(60)

    for _ in range(2):  # the second check-in finds the flag open: no second flag
        answer = fleet.check_in("gw1", [bms("A1", "9.9.9", soc_pct=1.0), bms("A2")])
        assert answer["refused_serials"] == ["A1"]
        assert answer["refusals"] == [{"serial": "A1", "code": "BMSFW-E661"}]
        assert answer["offers"] == []

    rows = _rows(fleet)["devices"]
    assert rows["A1"] == before["A1"]  # no telemetry, no firmware, no last-seen
    assert rows["A2"] != before["A2"]  # the other device was applied (seen again)
    assert _flags(fleet) == [("A1", KIND)]
    assert (
        _refusals(fleet)
        == [
            {
                "action": "device.check_in_refused",
                "actor": "gateway:gateway:gw1",
                "reason": "decommissioned devices",
                "serials": ["A1"],
                "count": 1,
            }
        ]
        * 2
    )
    _sign_in(fleet, "viewer")
    overview = fleet.client.get("/ui/").text
    assert f'<span class="flag">{KIND}: 1</span>' in overview


def test_a_decommissioned_gateway_checking_in_is_refused_and_its_devices_flagged(
    https_fleet: Fleet,
) -> None:
    fleet = https_fleet
    fleet.add_gateway("gw1", "north")
    fleet.add_gateway("gw2", "south")
    fleet.check_in("gw1", [bms("A1")])
    fleet.check_in("gw2", [bms("B1"), bms("B2")])
    fleet.call("POST", "/api/v1/gateways/gw2/decommission", "admin", json={"reason": "replaced"})
    before = _rows(fleet)
    fleet.clock.advance(60)

    # It names its own devices and another gateway's: only its own are flagged.
    body = {"devices": [bms("B1", soc_pct=3.0), bms("A1"), bms("NEW")], "site": "elsewhere"}
    for _ in range(2):
        refused = fleet.check_in_raw("gw2", body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "BMSFW-E660"
    assert _rows(fleet) == before  # nothing applied: no telemetry, no site, no new device
    assert _flags(fleet) == [("B1", KIND)]
    assert _refusals(fleet) == [  # once per flag raised, not once per poll
        {
            "action": "gateway.check_in_refused",
            "actor": "gateway:gateway:gw2",
            "reason": "gateway decommissioned",
            "serials": ["B1"],
            "count": 1,
        }
    ]
    # A body that does not validate is refused the same way and flags nothing more.
    bad = fleet.check_in_raw("gw2", {"devices": [{"serial": "B2"}]})
    assert bad.status_code == 403 and bad.json()["error"]["code"] == "BMSFW-E660"
    assert _flags(fleet) == [("B1", KIND)]
    # A process that still holds the credential in its cache (revoked elsewhere less
    # than the cache's TTL ago) refuses it by the gateway's row, changing nothing.
    gateway_id = next(g[0] for name, g in before["gateways"].items() if name == "gw2")
    cached = Principal(0, "gateway:gw2", "gateway", "gateway", gateway_id, None)
    with pytest.raises(GatewayDecommissionedError):
        fleet.service.check_in(cached, CheckIn.model_validate(body))
    assert _rows(fleet) == before
    # Any other refused token still answers E602 and flags nothing.
    stranger = fleet.client.post(
        "/api/v1/agent/check-in",
        headers={"Authorization": "Bearer " + "x" * 43},
        json={"devices": [bms("B2")]},
    )
    assert stranger.status_code == 401 and stranger.json()["error"]["code"] == "BMSFW-E602"
    assert _flags(fleet) == [("B1", KIND)]
