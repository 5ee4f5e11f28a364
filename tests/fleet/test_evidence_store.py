"""The server's evidence store refuses what it cannot keep as a record, and stores nothing
then: a forged or truncated bundle (E690 naming E544/E543), a bundle for another
gateway's device (E613), one larger than the route's limit (E631); it keeps a verified
bundle once (an agent's retry is the same record) and serves it unchanged to operators
only. SQLite always, PostgreSQL when BMSFW_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from bmsfw.evidence.bundle import EvidenceInputs, build_bundle, verify_bundle
from bmsfw.fleet.models import EvidenceBundle
from bmsfw.protocol.session import DeviceIdentity
from bmsfw.update.report import PackageRecord, StepRecord, UpdateReport

from .conftest import Fleet, bms

UPLOAD = "/api/v1/agent/evidence"


def _bundle(serial: str = "EV-1", *, outcome: str = "updated") -> bytes:
    report = UpdateReport(
        node=serial,
        outcome=outcome,
        started_at=1_790_000_000.0,
        device_before=DeviceIdentity("vendor", "BMS-48V", "A", serial, "1.0", "1.0.0", 1, "A"),
        running_version="1.1.0",
        package=PackageRecord(sha256="ab" * 32, version="1.1.0"),
        steps=[StepRecord("verify-package", True, 1_790_000_000.5, 0.1, "signed")],
    )
    return build_bundle(EvidenceInputs(report, created_at=1_790_000_100.0, bmsfw_version="t"))


def _stored(fleet: Fleet) -> int:
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(EvidenceBundle)).scalar_one())
    finally:
        engine.dispose()


def _audit(fleet: Fleet, action: str) -> list[dict[str, Any]]:
    entries = fleet.call("GET", "/api/v1/audit", params={"limit": 1000})
    return [e for e in entries if e["action"] == action]


def _upload(fleet: Fleet, gateway: str, data: bytes, path: str = UPLOAD, **params: Any) -> Any:
    return fleet.client.post(
        path,
        headers={**fleet.h(gateway), "Content-Type": "application/zip"},
        content=data,
        params=params or None,
    )


@pytest.fixture
def site(fleet: Fleet) -> Fleet:
    fleet.add_gateway("gw-a", "north")
    fleet.add_gateway("gw-b", "south")
    fleet.check_in("gw-a", [bms("EV-1")])
    fleet.check_in("gw-b", [bms("EV-2")])
    return fleet


@pytest.mark.req("R156-FLEET-RECORD", "IEC62443-CR3.4")
def test_a_forged_or_truncated_bundle_is_refused_and_nothing_is_stored(site: Fleet) -> None:
    good = _bundle()
    forged = bytearray(good)
    forged[len(forged) // 2] ^= 0x01  # one byte inside a listed file
    for data, cause in (
        (bytes(forged), "BMSFW-E544"),
        (good[: len(good) - 100], "BMSFW-E544"),  # truncated: the central directory is cut
        (good[:-1], "BMSFW-E544"),
        (b"not a zip at all", "BMSFW-E543"),
        (b"", "BMSFW-E543"),
    ):
        answer = _upload(site, "gw-a", data)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["code"] == "BMSFW-E690" and cause in error["message"], error
    assert _stored(site) == 0
    assert site.call("GET", "/api/v1/devices/EV-1/evidence", "operator") == []
    refused = _audit(site, "evidence.refused")
    assert len(refused) == 5 and all(e["detail"]["code"] == "BMSFW-E690" for e in refused)
    assert not _audit(site, "evidence.store")


def test_a_compressed_entry_is_refused_before_it_is_inflated(site: Fleet) -> None:
    # A deflated entry of a megabyte of zeros fits in a few KiB of upload: refused unread.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", b"{}")
        archive.writestr("report.json", bytes(1 << 20))
    answer = _upload(site, "gw-a", buffer.getvalue())
    assert answer.status_code == 422
    assert "compressed entries" in answer.json()["error"]["message"]
    assert _stored(site) == 0


@pytest.mark.req("R156-FLEET-RECORD", "IEC62443-CR2.1")
def test_a_gateway_cannot_file_evidence_for_another_gateways_device(site: Fleet) -> None:
    for serial in ("EV-2", "UNKNOWN-9"):  # gw-b's device; a device nobody reported
        answer = _upload(site, "gw-a", _bundle(serial))
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "BMSFW-E613"
    assert _stored(site) == 0
    assert site.call("GET", "/api/v1/devices/EV-2/evidence", "operator") == []
    assert not _audit(site, "evidence.store")


def test_a_bundle_over_the_limit_is_refused_at_the_edge(site: Fleet) -> None:
    config = site.app.state.config
    answer = _upload(site, "gw-a", _bundle() + bytes(config.max_evidence_bytes))
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "BMSFW-E631"
    assert _stored(site) == 0


@pytest.mark.req("R156-FLEET-RECORD")
def test_a_verified_bundle_is_kept_once_and_served_unchanged_to_operators(site: Fleet) -> None:
    data = _bundle()
    first = _upload(site, "gw-a", data)
    assert first.status_code == 201, first.text
    record = first.json()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert (record["device_serial"], record["outcome"]) == ("EV-1", "updated")
    again = _upload(site, "gw-a", data)  # the agent's retry after a lost answer
    assert again.status_code == 200 and again.json()["id"] == record["id"]
    assert _stored(site) == 1
    (store,) = _audit(site, "evidence.store")
    assert store["target"] == "device:EV-1" and store["detail"]["sha256"] == record["sha256"]

    listed = site.call("GET", "/api/v1/devices/EV-1/evidence", "operator")
    assert [r["id"] for r in listed] == [record["id"]]
    path = f"/api/v1/evidence/{record['id']}"
    download = site.client.get(path, headers=site.h("operator"))
    assert download.status_code == 200 and download.content == data
    assert download.headers["x-content-sha256"] == record["sha256"]
    assert verify_bundle(download.content).manifest["device"]["serial"] == "EV-1"
    # configuration before/after is in a bundle: read like backups, operator and up
    for role in ("viewer", "gw-a"):
        for route in (path, "/api/v1/devices/EV-1/evidence"):
            refused = site.client.get(route, headers=site.h(role))
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "BMSFW-E603"
    assert site.client.get("/api/v1/evidence/999", headers=site.h("operator")).status_code == 404


def test_a_campaign_named_with_the_bundle_must_target_the_device(site: Fleet) -> None:
    answer = _upload(site, "gw-a", _bundle(), campaign_id=77)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "BMSFW-E604"
    assert _stored(site) == 0


FILE = "/api/v1/evidence"  # an operator files the bundle of an update done on site


def _file(fleet: Fleet, role: str, data: bytes, **params: Any) -> Any:
    return _upload(fleet, role, data, path=FILE, **params)


@pytest.mark.req("R156-FLEET-RECORD", "IEC62443-CR2.1")
def test_an_operator_files_a_bundle_only_of_a_fleet_device_and_only_with_that_role(
    site: Fleet,
) -> None:
    good = _bundle("EV-1")
    refusals = (
        (_file(site, "viewer", good), 403, "BMSFW-E603"),
        (_file(site, "gw-a", good), 403, "BMSFW-E603"),  # a gateway uploads its own route
        (_file(site, "operator", good, serial="EV-2"), 422, "BMSFW-E695"),
        (_file(site, "operator", _bundle("UNKNOWN-9")), 404, "BMSFW-E696"),
        (_file(site, "operator", good[:-1]), 422, "BMSFW-E690"),
    )
    for answer, status, code in refusals:
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == code
    assert _stored(site) == 0
    refused = sorted(e["detail"]["code"] for e in _audit(site, "evidence.refused"))
    assert refused == ["BMSFW-E690", "BMSFW-E695", "BMSFW-E696"]  # the 403s: at the guard
    assert not _audit(site, "evidence.store")


@pytest.mark.req("R156-FLEET-RECORD", "IEC62443-CR2.8")
def test_a_filed_bundle_says_which_operator_filed_it_next_to_the_gateways_uploads(
    site: Fleet,
) -> None:
    by_gateway = _upload(site, "gw-a", _bundle("EV-1"))
    assert by_gateway.status_code == 201, by_gateway.text
    on_site = _bundle("EV-1", outcome="rolled-back")
    filed = _file(site, "operator", on_site, serial="EV-1")
    assert filed.status_code == 201, filed.text
    assert _file(site, "operator", on_site).json() == filed.json()  # again: that record
    listed = site.call("GET", "/api/v1/devices/EV-1/evidence", "operator")
    assert [(r["filed_by"], r["outcome"]) for r in listed] == [
        ("operator", "rolled-back"),
        ("gateway", "updated"),
    ]
    assert listed[0]["uploaded_by"] != listed[1]["uploaded_by"]
    assert _stored(site) == 2
    entries = _audit(site, "evidence.store")
    assert sorted(e["detail"]["filed_by"] for e in entries) == ["gateway", "operator"]
    operator_entry = next(e for e in entries if e["detail"]["filed_by"] == "operator")
    assert operator_entry["actor"] == f"operator:{listed[0]['uploaded_by']}"
    download = site.client.get(f"/api/v1/evidence/{listed[0]['id']}", headers=site.h("operator"))
    assert download.content == on_site
    assert verify_bundle(download.content).manifest["outcome"] == "rolled-back"
