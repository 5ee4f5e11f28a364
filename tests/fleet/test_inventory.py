"""Inventory updates from check-ins, operator flags, config backups, migrations."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bmsfw.fleet.db import head_revision, make_engine, schema_revision, upgrade_database
from bmsfw.fleet.models import Base

from .conftest import Fleet, bms, make_release


def test_check_in_updates_inventory_and_telemetry(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "harbour", tags=["container"])
    answer = fleet.check_in("gw", [bms("S1", tags=["string-1"])], agent_version="0.3")
    assert answer["poll_interval_s"] == 60 and answer["gateway"] == "gw"
    fleet.clock.advance(30)
    fleet.check_in("gw", [bms("S1", soc_pct=61.5, temperature_c=31.0)])
    device = fleet.call("GET", "/api/v1/devices/S1", "viewer")
    assert (device["soc_pct"], device["temperature_c"]) == (61.5, 31.0)
    assert device["site"] == "harbour" and device["tags"] == ["container"]
    assert device["last_seen_at"] > device["first_seen_at"]
    gateways = fleet.call("GET", "/api/v1/gateways", "viewer")
    assert gateways[0]["agent_version"] == "0.3" and gateways[0]["devices"] == 1


def test_flags_for_integrity_fault_unexpected_version_and_hash(fleet: Fleet, pki) -> None:
    release = fleet.upload(make_release(pki))
    app_sha = release["components"][0]["sha256"]
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1"), bms("S2"), bms("S3")])
    assert fleet.call("GET", "/api/v1/flags", "viewer") == []
    fleet.check_in(
        "gw",
        [
            bms("S1", integrity_ok=False, integrity_detail="flash CRC mismatch in bank A"),
            bms("S2", "1.0.7"),  # changed without any campaign
            bms("S3", "1.1.0", firmware_sha256="ab" * 32),  # a known version with a foreign hash
        ],
    )
    flags = {f["device_serial"]: f for f in fleet.call("GET", "/api/v1/flags", "viewer")}
    assert flags["S1"]["kind"] == "integrity_fault" and "CRC" in flags["S1"]["detail"]
    assert flags["S2"]["kind"] == "unexpected_version"
    assert {f["kind"] for f in fleet.call("GET", "/api/v1/flags")} >= {"unexpected_hash"}
    flagged = fleet.call("GET", "/api/v1/devices", "viewer", params={"flagged": True})
    assert {d["serial"] for d in flagged} == {"S1", "S2", "S3"}
    # The genuine hash of 1.1.0 raises nothing.
    fleet.check_in("gw", [bms("S4", "1.1.0", firmware_sha256=app_sha)])
    assert all(f["device_serial"] != "S4" for f in fleet.call("GET", "/api/v1/flags"))
    # A pack whose very first check-in reports a fault is flagged too.
    fleet.check_in("gw", [bms("S5", integrity_ok=False, integrity_detail="boot ROM check")])
    s5 = [f for f in fleet.call("GET", "/api/v1/flags") if f["device_serial"] == "S5"]
    assert [(f["kind"], f["detail"]) for f in s5] == [("integrity_fault", "boot ROM check")]
    # Repeating the fault does not pile up flags; acknowledging clears it from the list.
    fleet.check_in("gw", [bms("S1", integrity_ok=False)])
    s1 = [f for f in fleet.call("GET", "/api/v1/flags") if f["device_serial"] == "S1"]
    assert len(s1) == 1
    fleet.call(
        "POST",
        f"/api/v1/flags/{s1[0]['id']}/acknowledge",
        "operator",
        json={"note": "bank A reflashed"},
    )
    assert all(f["device_serial"] != "S1" for f in fleet.call("GET", "/api/v1/flags"))


def test_version_change_through_a_campaign_is_not_flagged(fleet: Fleet, pki) -> None:
    release = fleet.upload(make_release(pki))
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    cid = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "c",
            "release_id": release["id"],
            "phases": [{"name": "all", "percent": 100}],
        },
    )["id"]
    fleet.check_in("gw", [bms("S1")])
    for state in ("downloading", "downloaded", "installing", "verifying"):
        fleet.report("gw", "S1", cid, state)
    fleet.check_in("gw", [bms("S1", "1.1.0")])
    fleet.report("gw", "S1", cid, "succeeded")
    assert fleet.call("GET", "/api/v1/flags") == []
    assert fleet.call("GET", "/api/v1/devices/S1")["firmware_version"] == "1.1.0"


def test_backups_are_stored_listed_and_downloaded(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    fleet.add_gateway("other", "site")
    fleet.check_in("gw", [bms("S1")])
    config = {"cell_ov_mv": 3650, "calibration": {"v_gain": 1.0021}}
    info = fleet.call(
        "POST",
        "/api/v1/agent/backups",
        "gw",
        json={"device_serial": "S1", "reason": "pre-update", "config": config},
    )
    listed = fleet.call("GET", "/api/v1/devices/S1/backups", "operator")
    assert [b["id"] for b in listed] == [info["id"]]
    assert fleet.call("GET", f"/api/v1/backups/{info['id']}", "operator")["config"] == config
    assert fleet.call("GET", f"/api/v1/backups/{info['id']}", "gw")["config"] == config
    foreign = fleet.client.get(f"/api/v1/backups/{info['id']}", headers=fleet.h("other"))
    assert foreign.status_code == 403
    # A gateway cannot file a backup (or a report) for a device it does not own.
    stolen = fleet.client.post(
        "/api/v1/agent/backups",
        headers=fleet.h("other"),
        json={"device_serial": "S1", "config": {}},
    )
    assert stolen.status_code == 403 and stolen.json()["error"]["code"] == "BMSFW-E613"


def test_migrations_match_the_models_and_are_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        upgrade_database(engine)  # a second process starting later
        assert schema_revision(engine) == head_revision()
        with engine.connect() as connection:
            diff = compare_metadata(
                MigrationContext.configure(connection, opts={"compare_type": True}),
                Base.metadata,
            )
        assert diff == []
    finally:
        engine.dispose()


def test_hash_check_knows_a_release_by_its_mcuboot_header_version(fleet: Fleet, pki) -> None:
    # A BMS running a plain MCUboot image reports the header version (docs/packages.md,
    # "Versions"): 1.1.0+0 is release 1.1.0, so its hash is checked against that release.
    release = fleet.upload(make_release(pki))
    app_sha = release["components"][0]["sha256"]
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("H1"), bms("H2")])
    fleet.check_in(
        "gw",
        [
            bms("H1", "1.1.0+0", firmware_sha256="ab" * 32),
            bms("H2", "1.1.0+0", firmware_sha256=app_sha),
        ],
    )
    flags = {(f["device_serial"], f["kind"]) for f in fleet.call("GET", "/api/v1/flags")}
    assert ("H1", "unexpected_hash") in flags
    assert ("H2", "unexpected_hash") not in flags  # (both changed outside a campaign: flagged)
