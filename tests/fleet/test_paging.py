"""Cursor paging and filters of the list routes, on SQLite and PostgreSQL: every row once
across the pages, ``limit`` bounded, cursors opaque and refused when not ours (E642), and
the device filters select exactly the matching devices."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmsfw.fleet.paging import MAX_PAGE_SIZE, decode_cursor, encode_cursor

from .conftest import Fleet, bms, make_release

LISTS = ("devices", "releases", "gateways", "campaigns", "flags", "audit")


def _pages(fleet: Fleet, path: str, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    """Follow the ``Link: rel="next"`` headers from the first page to the last."""
    pages = []
    url: str | None = f"/api/v1/{path}"
    query: dict[str, Any] | None = {"limit": limit, **params}
    while url is not None:
        response = fleet.client.get(url, params=query, headers=fleet.h("admin"))
        assert response.status_code == 200, response.text
        pages.append(response.json())
        link = response.headers.get("link")
        if link is None:
            assert "x-next-cursor" not in response.headers
            url = None
        else:
            assert link.endswith('>; rel="next"') and link.startswith("</api/v1/")
            url, query = link[1 : link.index(">")], None
            assert response.headers["x-next-cursor"] in url
        assert len(pages) < 100
    return pages


@pytest.fixture
def stocked(fleet: Fleet, pki: Any) -> Fleet:
    """7 gateways, 23 devices (two sites, tags, two models), 3 releases, 2 campaigns, flags."""
    for g in range(7):
        fleet.add_gateway(f"gw{g}", "north" if g % 2 else "south", tags=["roof"] if g == 3 else [])
    for n in range(23):
        gateway = f"gw{n % 7}"
        fleet.check_in(gateway, [bms(f"S{n:02d}", "1.0.0" if n % 3 else "0.9.0")])
    for version, counter in (("1.1.0", 2), ("1.2.0", 3), ("1.3.0", 4)):
        fleet.upload(make_release(pki, version, security_counter=counter))
    for name, serials in (("one", ["S00", "S01"]), ("two", ["S02"])):
        fleet.call(
            "POST",
            "/api/v1/campaigns",
            "operator",
            json={
                "name": name,
                "release_id": 1,
                "selector": {"serials": serials},
                "phases": [{"name": "all", "percent": 100}],
            },
        )
    # A version change outside any campaign flags the device.
    fleet.check_in("gw4", [bms("S04", "1.9.0")])
    fleet.check_in("gw5", [bms("S05", "1.9.0")])
    return fleet


def test_pages_hold_every_row_once(stocked: Fleet) -> None:
    for path in LISTS:
        everything = _pages(stocked, path, MAX_PAGE_SIZE)
        assert len(everything) == 1
        (rows,) = everything
        assert len(rows) >= 2, path
        for limit in (1, 2, 5):
            pages = _pages(stocked, path, limit)
            assert all(len(p) == limit for p in pages[:-1]) and 1 <= len(pages[-1]) <= limit
            assert [r for p in pages for r in p] == rows, (path, limit)


def test_device_pages_stay_consistent_when_devices_arrive(stocked: Fleet) -> None:
    first = stocked.client.get("/api/v1/devices", params={"limit": 10}, headers=stocked.h("viewer"))
    stocked.check_in("gw0", [bms("S000")])  # sorts before the cursor: not on later pages
    stocked.check_in("gw0", [bms("S99")])  # sorts after it: on the last page
    rest = _pages(stocked, "devices", 10, cursor=first.headers["x-next-cursor"])
    serials = [d["serial"] for d in first.json()] + [d["serial"] for p in rest for d in p]
    assert serials == sorted(serials) and len(serials) == len(set(serials))
    assert "S99" in serials and "S000" not in serials


def test_default_and_maximum_page_size(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms(f"S{n:03d}") for n in range(105)])
    default = fleet.client.get("/api/v1/devices", headers=fleet.h("viewer"))
    assert len(default.json()) == 100 and "link" in default.headers
    too_many = fleet.client.get(
        "/api/v1/devices", params={"limit": MAX_PAGE_SIZE + 1}, headers=fleet.h("viewer")
    )
    assert too_many.status_code == 422
    assert too_many.json()["error"]["code"] == "BMSFW-E630"


DEVICE_FILTERS = [
    ({"site": "north"}, {f"S{n:02d}" for n in range(23) if (n % 7) % 2}),
    ({"version": "0.9.0"}, {f"S{n:02d}" for n in range(23) if n % 3 == 0}),
    ({"tag": "roof"}, {"S03", "S10", "S17"}),
    ({"flagged": "true"}, {"S04", "S05"}),
    ({"flagged": "true", "site": "north"}, {"S05"}),
    ({"model": "BMS-48V", "revision": "A", "site": "nowhere"}, set()),
    ({"online": "false"}, set()),
]


def test_device_filters(stocked: Fleet) -> None:
    for params, serials in DEVICE_FILTERS:
        (rows,) = _pages(stocked, "devices", MAX_PAGE_SIZE, **params)
        assert {d["serial"] for d in rows} == serials, params


def test_flagged_false_and_online_filters(stocked: Fleet) -> None:
    (all_rows,) = _pages(stocked, "devices", MAX_PAGE_SIZE)
    (unflagged,) = _pages(stocked, "devices", MAX_PAGE_SIZE, flagged="false")
    assert {d["serial"] for d in unflagged} == {d["serial"] for d in all_rows} - {"S04", "S05"}
    stocked.clock.advance(10 * 60)  # three poll intervals (60 s) later: all offline
    stocked.check_in("gw1", [bms("S01")])
    (online,) = _pages(stocked, "devices", MAX_PAGE_SIZE, online="true")
    (offline,) = _pages(stocked, "devices", MAX_PAGE_SIZE, online="false")
    assert [d["serial"] for d in online] == ["S01"]
    assert len(offline) == len(all_rows) - 1


def _refused(fleet: Fleet, path: str, params: dict[str, Any]) -> str:
    response = fleet.client.get(f"/api/v1/{path}", params=params, headers=fleet.h("admin"))
    assert response.status_code == 422, (path, params, response.text)
    return str(response.json()["error"]["code"])


def test_cursors_of_another_list_or_edited_are_refused(stocked: Fleet) -> None:
    for path in LISTS:
        _refusals(stocked, path)


def _refusals(stocked: Fleet, path: str) -> None:
    other = "releases" if path != "releases" else "campaigns"
    foreign = encode_cursor(other, "S01" if other == "devices" else 1)
    assert _refused(stocked, path, {"cursor": foreign}) == "BMSFW-E642"
    wrong_type = encode_cursor(path, 7 if path in ("devices", "gateways") else "7")
    assert _refused(stocked, path, {"cursor": wrong_type}) == "BMSFW-E642"
    for junk in ("AAAA", "x", base64.urlsafe_b64encode(b"[]").decode().rstrip("=")):
        assert _refused(stocked, path, {"cursor": junk}) == "BMSFW-E642"
    for bad in ({"limit": 0}, {"limit": -1}, {"limit": 10**30}, {"limit": "ten"}):
        assert _refused(stocked, path, bad) == "BMSFW-E630"
    assert _refused(stocked, path, {"cursor": "a" * 10_000}) == "BMSFW-E630"
    assert _refused(stocked, path, {"cursor": "%%%"}) == "BMSFW-E630"
    assert _refused(stocked, path, {"no_such_filter": "x"}) == "BMSFW-E630"


def test_device_filter_values_are_bounded(fleet: Fleet) -> None:
    for bad in ({"site": "x" * 121}, {"flagged": "maybe"}, {"online": "2"}, {"tag": "a\x00"}):
        assert _refused(fleet, "devices", bad) in ("BMSFW-E630",)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=600))
def test_decoding_any_text_gives_a_key_or_e642(text: str) -> None:
    from bmsfw.fleet.errors import InvalidCursorError

    for key_type in (int, str):
        try:
            key = decode_cursor("devices", text, key_type)
        except InvalidCursorError:
            continue
        assert isinstance(key, key_type)
        assert decode_cursor("devices", encode_cursor("devices", key), key_type) == key


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(0, (1 << 63) - 1), st.text(max_size=120)))
def test_cursor_round_trip(key: int | str) -> None:
    cursor = encode_cursor("devices", key)
    assert cursor.replace("-", "").replace("_", "").isalnum()
    assert decode_cursor("devices", cursor, type(key)) == key
