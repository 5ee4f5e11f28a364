"""Limits before work: body limits while reading (413 before the body is buffered), rate
limits per credential (check-ins, failed authentication); every refused request is
audited (batched) and every request access-logged."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy import create_engine, delete

from bmsfw.fleet.models import RateBucket

from .conftest import Fleet, StreamedBody, bms, make_release

MIB = 1024 * 1024


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {
        "max_check_in_bytes": 64 * 1024,
        "max_upload_bytes": 2 * MIB,
        "max_backup_bytes": 256 * 1024,
        "check_ins_per_s": 0.5,
        "check_in_burst": 3,
        "auth_failures_per_min": 6,
    }


def _too_large(status: int, body: bytes) -> None:
    assert status == 413, (status, body[:200])
    assert json.loads(body)["error"]["code"] == "BMSFW-E631"
    assert len(body) < 2_000


def _refill_failure_buckets(fleet: Fleet) -> Fleet:
    edge = fleet.app.state.edge
    edge.flush()
    engine = create_engine(fleet.db_url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(RateBucket))
    finally:
        engine.dispose()
    edge.failures._buckets.clear()
    edge._blocked.clear()
    return fleet


def _refusals(fleet: Fleet) -> list[dict[str, Any]]:
    entries = fleet.call("GET", "/api/v1/audit", params={"limit": 1000})
    return [e for e in entries if e["action"] == "access.refused"]


@pytest.mark.parametrize(
    ("path", "who", "limit"),
    [
        ("/api/v1/agent/check-in", "gw", 64 * 1024),
        ("/api/v1/agent/backups", "gw", 512 * 1024),
        ("/api/v1/devices/S1/backups", "operator", 512 * 1024),
        ("/api/v1/releases", "release_manager", 2 * MIB),
        ("/api/v1/campaigns", "operator", MIB),
    ],
)
def test_oversized_bodies_are_413_before_they_are_read(
    fleet: Fleet, path: str, who: str, limit: int
) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    headers = {**fleet.h(who), "content-type": "application/json"}
    # Declared: refused before a single byte of the 86 MB body is pulled.
    declared = StreamedBody(86 * MIB)
    _too_large(*declared.post(fleet.app, path, {**headers, "content-length": str(86 * MIB)}))
    assert declared.pulled == 0
    # Chunked (no length): reading stops at the first chunk past the limit.
    chunked = StreamedBody(86 * MIB)
    _too_large(*chunked.post(fleet.app, path, headers))
    assert chunked.pulled <= limit + chunked.chunk
    refused = [e for e in _refusals(fleet) if e["detail"]["reason"] == "BMSFW-E631"]
    assert sum(e["detail"]["count"] for e in refused) == 2
    assert {e["target"] for e in refused} == {f"POST {path.replace('S1', '{serial}')}"}


def test_a_release_below_the_limit_still_uploads(fleet: Fleet, pki: Any) -> None:
    release = fleet.upload(make_release(pki))
    assert release["size_bytes"] < 2 * MIB


def test_check_ins_are_rate_limited_per_credential(fleet: Fleet) -> None:
    fleet.add_gateway("gw1", "site")
    fleet.add_gateway("gw2", "site")
    for _ in range(3):  # the burst
        fleet.check_in("gw1", [bms("S1")])
    limited = fleet.check_in_raw("gw1", {"devices": [bms("S1")]})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "BMSFW-E632"
    assert int(limited.headers["retry-after"]) >= 1
    fleet.check_in("gw2", [bms("S2")])  # another credential is not held up
    [entry] = [e for e in _refusals(fleet) if e["detail"]["reason"] == "BMSFW-E632"]
    assert (
        entry["actor"] == "gateway:gateway:gw1" and entry["target"] == "POST /api/v1/agent/check-in"
    )


def test_failed_authentication_is_rate_limited_audited_and_in_the_access_review(
    fleet: Fleet,
) -> None:
    fleet.add_gateway("gw", "site")
    guesses = [f"bmsfw_op_guess{i}" for i in range(4)]
    for token in guesses:
        answer = fleet.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401
    assert fleet.client.get("/api/v1/whoami").status_code == 401  # no credential at all
    wrong_role = fleet.client.get("/api/v1/audit", headers=fleet.h("gw"))
    assert wrong_role.status_code == 403
    # Six failures from this address: the next attempt is refused whatever it carries.
    blocked = fleet.client.get("/api/v1/whoami", headers=fleet.h("viewer"))
    assert blocked.status_code == 429 and blocked.json()["error"]["code"] == "BMSFW-E632"

    # An admin elsewhere is not held up; here the test client's address is blocked, so
    # its buckets (this process's and the shared ones) are refilled by hand to read the
    # audit log.
    refused = _refusals(_refill_failure_buckets(fleet))
    text = json.dumps(refused)
    assert not any(token in text for token in guesses)
    assert fleet.gateways["gw"] not in text
    by_reason: dict[str, int] = {}
    for entry in refused:
        assert entry["detail"]["address"] == "testclient"
        by_reason[entry["detail"]["reason"]] = (
            by_reason.get(entry["detail"]["reason"], 0) + entry["detail"]["count"]
        )
    assert by_reason == {"BMSFW-E602": 4, "BMSFW-E601": 1, "BMSFW-E603": 1, "BMSFW-E632": 1}
    [forbidden] = [e for e in refused if e["detail"]["reason"] == "BMSFW-E603"]
    assert forbidden["actor"] == "gateway:gateway:gw" and forbidden["actor_id"] is not None
    assert forbidden["target"] == "GET /api/v1/audit"

    review = {r["name"]: r for r in fleet.call("GET", "/api/v1/access-review")}
    assert review["gateway:gw"]["failed_attempts"] == 1
    assert review["gateway:gw"]["last_failed_at"]
    assert review["test-viewer"]["failed_attempts"] == 0  # refused by address, not its own


def test_a_flood_of_refusals_is_written_in_batches(fleet: Fleet) -> None:
    fleet.app.state.edge.failures.rate_per_s = 0  # only the batching is measured here
    for i in range(300):
        fleet.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer nope{i}"})
    refused = _refusals(fleet)
    # One entry per flush (every 5 s, and when the audit log is read), not per refusal.
    assert sum(e["detail"]["count"] for e in refused) == 300
    assert len(refused) <= 3, len(refused)


def test_every_request_is_access_logged(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    fleet.add_gateway("gw", "site")
    with caplog.at_level(logging.INFO, logger="bmsfw.fleet.access"):
        fleet.check_in("gw", [bms("S1")])
        fleet.client.get("/api/v1/devices/S1", headers=fleet.h("viewer"))
        fleet.client.get("/api/v1/whoami")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "bmsfw.fleet.access"]
    assert [(line["route"], line["status"]) for line in lines] == [
        ("POST /api/v1/agent/check-in", 200),
        ("GET /api/v1/devices/{serial}", 200),
        ("GET /api/v1/whoami", 401),
    ]
    assert lines[0]["credential"] == "gateway:gateway:gw" and lines[0]["credential_id"]
    assert lines[2]["credential"] is None and lines[2]["address"] == "testclient"
    assert all(line["ms"] >= 0 for line in lines)
