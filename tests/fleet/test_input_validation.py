"""No input answers 500: ids beyond the database's integers, NUL characters, bodies that
are not UTF-8, NaN/Infinity, security counters above 2**31; a 422 never echoes its input;
file names are sanitised; a failed upload leaves no artifact behind."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import create_engine, func, select

from bmsfw.fleet.models import ArtifactChunk, ConfigBackup, Device, Release

from .conftest import Fleet, bms, make_release

HUGE_IDS = ("2147483648", "9223372036854775808", "99999999999999999999999", "0", "-1")


def _counts(fleet: Fleet) -> tuple[int, ...]:
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            return tuple(
                int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (Device, ConfigBackup, Release)
            )
    finally:
        engine.dispose()


def _invalid(response: Any) -> None:
    assert response.status_code == 422, (response.status_code, response.text[:300])
    assert response.json()["error"]["code"] == "BMSFW-E630", response.text[:300]


def test_ids_beyond_the_database_integers_are_422_on_every_route(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    tried = 0
    for route in fleet.app.routes:
        if getattr(route, "path", "") in ("/ui", "/api/v1/docs/assets"):
            continue  # the dashboard (tests/web), Swagger UI's files (test_api_docs.py)
        assert isinstance(route, APIRoute)
        names = re.findall(r"\{(\w+_id)\}", route.path)
        if not names:
            continue
        roles = route.openapi_extra["x-bmsfw-roles"]  # type: ignore[index]
        who = "admin" if "admin" in roles else "gw"
        for value in HUGE_IDS:
            path = re.sub(r"\{\w+_id\}", value, route.path)
            for method in route.methods:
                _invalid(fleet.client.request(method, path, headers=fleet.h(who), json={}))
                tried += 1
    assert tried >= 11 * len(HUGE_IDS)
    # Ids in bodies and queries too.
    fleet.check_in("gw", [bms("S1")])
    for value in (2**31, 2**63):
        _invalid(
            fleet.client.post(
                "/api/v1/agent/reports",
                headers=fleet.h("gw"),
                json={"device_serial": "S1", "campaign_id": value, "state": "downloading"},
            )
        )
        _invalid(
            fleet.client.post(
                "/api/v1/campaigns",
                headers=fleet.h("operator"),
                json={"name": "c", "release_id": value},
            )
        )
        _invalid(fleet.client.get(f"/api/v1/audit?before_id={value}", headers=fleet.h("admin")))
    _invalid(fleet.check_in_raw("gw", {"devices": [bms("S2", security_counter=2**32)]}))


def test_nul_characters_are_422_and_store_nothing(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    before = _counts(fleet)
    gw, op = fleet.h("gw"), fleet.h("operator")
    _invalid(fleet.check_in_raw("gw", {"devices": [bms("S\u00002")]}))
    _invalid(fleet.check_in_raw("gw", {"devices": [bms("S2", tags=["a\u0000"])]}))
    _invalid(fleet.check_in_raw("gw", {"site": "x\u0000y", "devices": []}))
    _invalid(
        fleet.client.post(
            "/api/v1/agent/backups",
            headers=gw,
            json={"device_serial": "S1", "config": {"k\u0000": "v"}},
        )
    )
    _invalid(
        fleet.client.post(
            "/api/v1/devices/S1/backups", headers=op, json={"reason": "a\u0000", "config": {}}
        )
    )
    _invalid(fleet.client.get("/api/v1/devices/S%001", headers=op))
    _invalid(fleet.client.get("/api/v1/devices?site=a%00b", headers=op))
    _invalid(
        fleet.client.put(
            "/api/v1/sites/a%00b/maintenance-windows", headers=op, json={"windows": []}
        )
    )
    _invalid(
        fleet.client.post(
            "/api/v1/tokens", headers=fleet.h("admin"), json={"name": "a\u0000", "role": "viewer"}
        )
    )
    assert _counts(fleet) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"devices": [{"serial": "S\xe9", "model": "m", "hw_revision": "A", '
        b'"firmware_version": "1"}]}',
        b'{"devices": [{"serial": "S\\ud800", "model": "m", "hw_revision": "A", '
        b'"firmware_version": "1"}]}',
        b'{"devices": [{"serial": "S2", "model": "m", "hw_revision": "A", '
        b'"firmware_version": "1", "soc_pct": NaN}]}',
        b'{"devices": [{"serial": "S2", "model": "m", "hw_revision": "A", '
        b'"firmware_version": "1", "temperature_c": -Infinity}]}',
        b"\xff\xfe{}",
    ],
    ids=["latin1", "lone-surrogate", "nan", "infinity", "bom-garbage"],
)
def test_check_in_bodies_that_are_not_utf8_json_or_hold_nan_are_422(
    fleet: Fleet, raw: bytes
) -> None:
    fleet.add_gateway("gw", "site")
    before = _counts(fleet)
    headers = {**fleet.h("gw"), "content-type": "application/json"}
    _invalid(fleet.client.post("/api/v1/agent/check-in", content=raw, headers=headers))
    assert _counts(fleet) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"device_serial": "S1", "config": {"a": NaN}}',
        b'{"device_serial": "S1", "config": {"a": [1, Infinity]}}',
        b'{"device_serial": "S1", "config": {"a": "\xe9"}}',
        b'{"device_serial": "S1", "config": {"a": "\\udc00"}}',
    ],
    ids=["nan", "infinity", "latin1", "lone-surrogate"],
)
def test_backups_that_are_not_utf8_json_or_hold_nan_are_422(fleet: Fleet, raw: bytes) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    before = _counts(fleet)
    for path, who in (("/api/v1/agent/backups", "gw"), ("/api/v1/devices/S1/backups", "operator")):
        body = raw if who == "gw" else raw.replace(b'"device_serial": "S1", ', b"")
        headers = {**fleet.h(who), "content-type": "application/json"}
        _invalid(fleet.client.post(path, content=body, headers=headers))
    assert _counts(fleet) == before


def test_a_422_never_echoes_a_large_input(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    big = "x" * 500_000
    for answer in (
        fleet.check_in_raw("gw", {"devices": [bms(big)]}),
        fleet.client.post("/api/v1/tokens", headers=fleet.h("admin"), json={"name": big}),
        fleet.client.post(
            "/api/v1/agent/backups",
            headers=fleet.h("gw"),
            json={"device_serial": "S1", "config": {big: 1}, "extra": big},
        ),
    ):
        _invalid(answer)
        assert len(answer.content) < 8_000, len(answer.content)
        assert answer.json()["detail"][0]["loc"]


@pytest.mark.parametrize("counter", [3_000_000_000, 2**32 - 1])
def test_a_release_with_a_32bit_unsigned_security_counter_uploads(
    fleet: Fleet, pki: Any, counter: int
) -> None:
    release = fleet.upload(make_release(pki, "2.0.0", security_counter=counter))
    assert release["security_counter"] == counter
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1", security_counter=counter)])
    assert fleet.call("GET", "/api/v1/devices/S1")["security_counter"] == counter
    assert fleet.call("GET", f"/api/v1/releases/{release['id']}")["security_counter"] == counter


def test_content_disposition_file_name_is_sanitised(fleet: Fleet, pki: Any) -> None:
    data = make_release(pki)
    answer = fleet.client.post(
        "/api/v1/releases",
        headers=fleet.h("release_manager"),
        params={"filename": '../../etc/x"y\r\nSet-Cookie: a=b;z.bmsfw'},
        content=data,
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["filename"] == "x_y__Set-Cookie__a_b_z.bmsfw"
    download = fleet.client.get(
        f"/api/v1/releases/{answer.json()['id']}/artifact", headers=fleet.h("viewer")
    )
    assert download.headers["content-disposition"] == (
        'attachment; filename="x_y__Set-Cookie__a_b_z.bmsfw"'
    )
    assert "set-cookie" not in download.headers


def test_a_failed_upload_leaves_no_artifact_behind(
    fleet: Fleet, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bmsfw.fleet.service.releases as service_module

    def fail(*_args: Any, **_kw: Any) -> Any:
        raise RuntimeError("the database went away mid-upload")

    # The release row is written, then the transaction fails before it commits.
    monkeypatch.setattr(service_module, "_release_dict", fail)
    with pytest.raises(RuntimeError):
        fleet.client.post(
            "/api/v1/releases", headers=fleet.h("release_manager"), content=make_release(pki)
        )
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(ArtifactChunk)).scalar_one() == 0
    finally:
        engine.dispose()
    assert _counts(fleet)[2] == 0  # no release row either
