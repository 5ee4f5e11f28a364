"""A device belongs to the gateway that registered it: check-ins naming another gateway's
device, reports for work never offered, and reports that contradict the firmware are
refused, flagged and audited; moving a device is an operator action."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, select

from bmsfw.fleet.models import Device

from .conftest import Fleet, bms, make_release


def _campaign(fleet: Fleet, data: bytes, serials: list[str]) -> int:
    release = fleet.upload(data)
    return int(
        fleet.call(
            "POST",
            "/api/v1/campaigns",
            "operator",
            json={
                "name": "c",
                "release_id": release["id"],
                "selector": {"serials": serials},
                "phases": [{"name": "all", "percent": 100, "soak_s": 0}],
            },
        )["id"]
    )


def _device_row(fleet: Fleet, serial: str) -> Any:
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(Device).where(Device.serial == serial)).one()
    finally:
        engine.dispose()


def _flags(fleet: Fleet, serial: str) -> list[str]:
    return [f["kind"] for f in fleet.call("GET", "/api/v1/flags") if f["device_serial"] == serial]


def _audit(fleet: Fleet, action: str) -> list[dict[str, Any]]:
    return [e for e in fleet.call("GET", "/api/v1/audit") if e["action"] == action]


def test_check_in_naming_another_gateways_device_is_refused_flagged_and_audited(
    fleet: Fleet, pki: Any
) -> None:
    fleet.add_gateway("gw1", "north")
    fleet.add_gateway("gw2", "south")
    fleet.check_in("gw1", [bms("S1", soc_pct=50.0)])
    backup = fleet.call(
        "POST", "/api/v1/agent/backups", "gw1", json={"device_serial": "S1", "config": {"a": 1}}
    )
    cid = _campaign(fleet, make_release(pki), ["S1"])
    before = _device_row(fleet, "S1")

    for _ in range(2):  # the second time takes the same path (no move happened)
        answer = fleet.check_in("gw2", [bms("S1", "9.9.9", soc_pct=1.0), bms("S2")])
        assert answer["refused_serials"] == ["S1"]
        assert answer["offers"] == []  # gw1's work is not offered to gw2

    after = _device_row(fleet, "S1")
    assert after.gateway_id == before.gateway_id
    assert (after.firmware_version, after.soc_pct, after.site) == ("1.0.0", 50.0, "north")
    assert after.last_seen_at == before.last_seen_at
    assert _flags(fleet, "S1") == ["foreign_check_in"]
    refused = _audit(fleet, "device.check_in_refused")
    assert len(refused) == 2 and refused[0]["actor"] == "gateway:gateway:gw2"
    assert refused[0]["detail"]["serials"] == ["S1"]
    assert not _audit(fleet, "device.move")
    assert fleet.call("GET", "/api/v1/devices/S2")["gateway"] == "gw2"  # its own: applied

    # gw1 keeps everything: its backup, its offer; gw2 gets none of it.
    assert fleet.call("GET", f"/api/v1/backups/{backup['id']}", "gw1")["config"] == {"a": 1}
    stolen = fleet.client.get(f"/api/v1/backups/{backup['id']}", headers=fleet.h("gw2"))
    assert stolen.status_code == 403 and stolen.json()["error"]["code"] == "BMSFW-E613"
    assert [o["device_serial"] for o in fleet.check_in("gw1", [bms("S1")])["offers"]] == ["S1"]
    forged = fleet.client.post(
        "/api/v1/agent/reports",
        headers=fleet.h("gw2"),
        json={"device_serial": "S1", "campaign_id": cid, "state": "downloading"},
    )
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "BMSFW-E613"
    assert fleet.call("GET", f"/api/v1/campaigns/{cid}")["states"]["offered"] == 1


def test_moving_a_device_is_an_operator_action(fleet: Fleet) -> None:
    fleet.add_gateway("gw1", "north")
    fleet.add_gateway("gw2", "south")
    fleet.check_in("gw1", [bms("S1")])
    denied = fleet.client.post(
        "/api/v1/devices/S1/move", headers=fleet.h("viewer"), json={"gateway": "gw2"}
    )
    assert denied.status_code == 403
    unknown = fleet.client.post(
        "/api/v1/devices/S1/move", headers=fleet.h("operator"), json={"gateway": "nope"}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "BMSFW-E604"
    moved = fleet.call("POST", "/api/v1/devices/S1/move", "operator", json={"gateway": "gw2"})
    assert (moved["gateway"], moved["site"]) == ("gw2", "south")
    [entry] = _audit(fleet, "device.move")
    assert entry["actor"] == "operator:test-operator"
    assert entry["detail"] == {"from_gateway": "gw1", "to_gateway": "gw2"}
    # Now gw2's check-ins apply to it and gw1's are refused.
    assert fleet.check_in("gw2", [bms("S1", soc_pct=10.0)])["refused_serials"] == []
    assert fleet.check_in("gw1", [bms("S1")])["refused_serials"] == ["S1"]
    assert _device_row(fleet, "S1").soc_pct == 10.0


def test_report_for_work_not_offered_is_refused(fleet: Fleet, pki: Any) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    cid = _campaign(fleet, make_release(pki), ["S1"])
    # The campaign has not offered anything yet (no check-in since it started).
    for state in ("offered", "downloading"):
        answer = fleet.client.post(
            "/api/v1/agent/reports",
            headers=fleet.h("gw"),
            json={"device_serial": "S1", "campaign_id": cid, "state": state},
        )
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "BMSFW-E613"
    assert fleet.call("GET", f"/api/v1/campaigns/{cid}")["states"]["pending"] == 1


def test_reports_that_skip_states_or_contradict_the_firmware_are_refused_and_flagged(
    fleet: Fleet, pki: Any
) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1"), bms("S2")])
    cid = _campaign(fleet, make_release(pki, "1.1.0"), ["S1", "S2"])
    fleet.check_in("gw", [bms("S1"), bms("S2")])  # offers both

    def post(serial: str, state: str, **kw: Any) -> Any:
        return fleet.client.post(
            "/api/v1/agent/reports",
            headers=fleet.h("gw"),
            json={"device_serial": serial, "campaign_id": cid, "state": state, **kw},
        )

    skipped = post("S1", "succeeded", firmware_version="1.1.0")  # offered -> succeeded
    assert skipped.status_code == 409 and skipped.json()["error"]["code"] == "BMSFW-E607"
    for state in ("downloading", "downloaded", "installing", "verifying"):
        fleet.report("gw", "S2", cid, state)
    for version in (None, "1.0.0"):  # not named, or not the release's
        body = {"firmware_version": version} if version else {}
        wrong = post("S2", "succeeded", **body)
        assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "BMSFW-E607"
    contradicted = post("S2", "rolled_back", firmware_version="1.1.0")
    assert contradicted.status_code == 409

    states = fleet.call("GET", f"/api/v1/campaigns/{cid}")["states"]
    assert (states["offered"], states["verifying"], states["succeeded"]) == (1, 1, 0)
    assert _flags(fleet, "S1") == ["invalid_report"] and _flags(fleet, "S2") == ["invalid_report"]
    refused = _audit(fleet, "device.report_refused")
    assert len(refused) == 4 and {e["detail"]["code"] for e in refused} == {"BMSFW-E607"}
    assert post("S2", "succeeded", firmware_version="1.1.0").json()["state"] == "succeeded"
