"""The cheap check-in path keeps its guarantees: the credential cache's revocation
bound, last use at one-minute resolution, and one transaction per check-in."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, update

from bmsfw.fleet.auth import hash_token
from bmsfw.fleet.models import AuditEntry, CampaignDevice, Credential, Device, Gateway

from .conftest import Fleet, bms, make_release


def _db(fleet: Fleet) -> Any:
    return create_engine(fleet.db_url)


def _revoke_behind_the_servers_back(fleet: Fleet, token: str) -> None:
    """What another server process (or `bmsfw fleet` on another host) does: commit a revocation."""
    engine = _db(fleet)
    with engine.begin() as conn:
        conn.execute(
            update(Credential)
            .where(Credential.token_hash == hash_token(token))
            .values(revoked_at=fleet.clock.now())
        )
    engine.dispose()


def _status(fleet: Fleet, role: str) -> int:
    return fleet.client.get("/api/v1/whoami", headers=fleet.h(role)).status_code


def test_revocation_by_another_process_takes_effect_within_the_cache_ttl(fleet: Fleet) -> None:
    ttl_s = fleet.service.settings.credential_cache_ttl_s
    assert ttl_s == 5.0  # the bound docs/fleet.md promises
    fleet.add_gateway("gw", "harbour")
    assert _status(fleet, "gw") == 200 and _status(fleet, "operator") == 200  # now cached
    _revoke_behind_the_servers_back(fleet, fleet.gateways["gw"])
    _revoke_behind_the_servers_back(fleet, fleet.tokens["operator"])
    # Inside the bound the process may still accept the token it resolved ...
    fleet.clock.advance(ttl_s - 0.5)
    assert _status(fleet, "gw") == 200
    # ... and from the bound on it never does, for any route.
    fleet.clock.advance(0.5)
    assert _status(fleet, "gw") == 401 and _status(fleet, "operator") == 401
    refused = fleet.client.post(
        "/api/v1/agent/check-in", headers=fleet.h("gw"), json={"devices": [bms("S1")]}
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "BMSFW-E602"


def test_revocation_through_this_process_is_immediate_and_unknown_tokens_are_not_cached(
    fleet: Fleet,
) -> None:
    created = fleet.call("POST", "/api/v1/tokens", json={"name": "bob", "role": "viewer"})
    bob = {"Authorization": f"Bearer {created['token']}"}
    assert fleet.client.get("/api/v1/whoami", headers=bob).status_code == 200
    fleet.call("POST", f"/api/v1/tokens/{created['id']}/revoke")
    assert fleet.client.get("/api/v1/whoami", headers=bob).status_code == 401
    # A token is refused before it exists and works the moment it does (no negative cache).
    assert fleet.service.cached_principal(hash_token("bmsfw_op_nope")) is None
    fresh = fleet.call("POST", "/api/v1/tokens", json={"name": "carol", "role": "viewer"})
    carol = {"Authorization": f"Bearer {fresh['token']}"}
    assert fleet.client.get("/api/v1/whoami", headers=carol).status_code == 200


def test_last_use_is_written_once_a_minute_including_by_check_ins(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "harbour")
    engine = _db(fleet)

    def last_used() -> Any:
        with engine.connect() as conn:
            return conn.execute(
                select(Credential.last_used_at).where(
                    Credential.token_hash == hash_token(fleet.gateways["gw"])
                )
            ).scalar_one()

    assert last_used() is None
    first = fleet.check_in("gw", [bms("S1")])
    t0 = fleet.clock.now()
    assert last_used() == t0 and first["gateway"] == "gw"
    fleet.clock.advance(30)
    fleet.check_in("gw", [bms("S1")])
    assert last_used() == t0  # within the minute: no write
    fleet.clock.advance(31)
    fleet.check_in("gw", [bms("S1")])
    assert last_used() == fleet.clock.now()
    engine.dispose()


def _snapshot(fleet: Fleet) -> dict[str, Any]:
    engine = _db(fleet)
    with engine.connect() as conn:
        state = {
            "gateways": conn.execute(
                select(Gateway.name, Gateway.last_seen_at, Gateway.agent_version)
            ).all(),
            "devices": conn.execute(
                select(
                    Device.serial,
                    Device.soc_pct,
                    Device.temperature_c,
                    Device.firmware_version,
                    Device.last_seen_at,
                ).order_by(Device.serial)
            ).all(),
            "audit": conn.execute(select(AuditEntry.id).order_by(AuditEntry.id)).all(),
            "campaign_devices": conn.execute(
                select(CampaignDevice.id, CampaignDevice.state).order_by(CampaignDevice.id)
            ).all(),
        }
    engine.dispose()
    return state


@pytest.mark.parametrize("path", ["telemetry only", "audited"])
def test_a_check_in_that_fails_midway_leaves_nothing_written(
    fleet: Fleet, pki: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms("S1"), bms("S2")])
    release = fleet.upload(make_release(pki))
    fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "c",
            "release_id": release["id"],
            "phases": [{"name": "all", "percent": 100}],
        },
    )
    fleet.clock.advance(60)
    before = _snapshot(fleet)
    # Fail at the last step of the check-in: after the gateway, the inventory (and,
    # on the audited path, a new device with its audit entry) were written in the
    # transaction, just as the pending devices would be offered.
    calls: list[int] = []

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        calls.append(1)
        raise RuntimeError("database went away mid check-in")

    monkeypatch.setattr(fleet.service, "_offers", fail)
    devices = [bms("S1", soc_pct=12.0), bms("S2", temperature_c=40.0)]
    extra: dict[str, Any] = {}
    if path == "audited":
        # A new device, a firmware change and a new agent version: all audited or kept.
        devices = [bms("S1", "1.0.5", soc_pct=12.0), bms("S2", temperature_c=40.0), bms("S3")]
        extra = {"agent_version": "9.9"}
    with pytest.raises(RuntimeError, match="mid check-in"):
        fleet.client.post(
            "/api/v1/agent/check-in", headers=fleet.h("gw"), json={"devices": devices, **extra}
        )
    assert calls == [1]
    failed = _snapshot(fleet)
    if fleet.service.single_statement_check_in:
        # PostgreSQL commits liveness and telemetry in the check-in's first statement
        # (one round trip); what is audited or changes campaign state is all or nothing.
        for key in ("audit", "campaign_devices"):
            assert failed[key] == before[key]
        assert [(d.serial, d.firmware_version) for d in failed["devices"]] == [
            (d.serial, d.firmware_version) for d in before["devices"]
        ]
        assert failed["gateways"][0].last_seen_at == fleet.clock.now()
        assert [(d.soc_pct, d.temperature_c) for d in failed["devices"]] == [
            (12.0, 24.5),
            (55.0, 40.0),
        ]
    else:
        assert failed == before
    # And the same check-in, once the fault is gone, writes all of it.
    monkeypatch.undo()
    answer = fleet.check_in("gw", devices, **extra)
    after = _snapshot(fleet)
    assert {o["device_serial"] for o in answer["offers"]} == {"S1", "S2"}
    assert after["gateways"][0].last_seen_at == fleet.clock.now()
    assert after["devices"][0].soc_pct == 12.0 and after["devices"][1].temperature_c == 40.0
    assert {cd.state for cd in after["campaign_devices"]} == {"offered"}
    if path == "audited":
        assert after["gateways"][0].agent_version == "9.9"
        assert [d.serial for d in after["devices"]] == ["S1", "S2", "S3"]
        assert after["devices"][0].firmware_version == "1.0.5"
        assert len(after["audit"]) > len(before["audit"])


def test_a_new_agent_version_is_recorded_on_the_telemetry_path(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms("S1")], agent_version="1.0")
    audited = len(_snapshot(fleet)["audit"])

    def audited_path(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("an agent upgrade alone must not take the audited ORM path")

    # A fleet-wide agent upgrade must not send every gateway down the ORM path.
    monkeypatch.setattr(fleet.service, "_update_inventory", audited_path)
    fleet.check_in("gw", [bms("S1", soc_pct=30.0)], agent_version="1.1")
    after = _snapshot(fleet)
    assert after["gateways"][0].agent_version == "1.1"
    assert after["devices"][0].soc_pct == 30.0
    # An agent that does not say its version leaves the recorded one alone.
    fleet.check_in("gw", [bms("S1")])
    after = _snapshot(fleet)
    assert after["gateways"][0].agent_version == "1.1"
    assert len(after["audit"]) == audited


def test_check_in_body_errors_answer_422_after_the_credential_check(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "harbour")
    url = "/api/v1/agent/check-in"
    bad = {"devices": [{"serial": "S1"}]}
    # A token this process has not cached is resolved first: no body detail leaks to it.
    refused = fleet.client.post(url, headers={"Authorization": "Bearer nope"}, json=bad)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "BMSFW-E602"
    fleet.clock.advance(fleet.service.settings.credential_cache_ttl_s)  # nothing cached now
    for _miss_then_hit in range(2):
        invalid = fleet.client.post(url, headers=fleet.h("gw"), json=bad)
        assert invalid.status_code == 422, invalid.text
        assert invalid.json()["detail"][0]["loc"][:3] == ["body", "devices", 0]
    not_json = fleet.client.post(url, headers=fleet.h("gw"), content=b"{nope")
    assert not_json.status_code == 422
    spec = fleet.call("GET", "/api/v1/openapi.json", "viewer")
    body = spec["paths"][url]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CheckIn"}
    assert "devices" in spec["components"]["schemas"]["CheckIn"]["properties"]
    assert "serial" in spec["components"]["schemas"]["BmsReport"]["properties"]


def test_a_telemetry_check_in_on_postgresql_is_one_statement_and_refusals_write_nothing(
    fleet: Fleet,
) -> None:
    if not fleet.service.single_statement_check_in:
        pytest.skip("the one-statement check-in is PostgreSQL's")
    fleet.add_gateway("gw", "harbour")
    fleet.check_in("gw", [bms("S1"), bms("S2")])  # registers the devices (audited path)
    engine = fleet.service.engine
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        fleet.clock.advance(10)
        answer = fleet.check_in("gw", [bms("S1", soc_pct=33.0), bms("S2", temperature_c=31.0)])
        assert answer["gateway"] == "gw" and answer["offers"] == []
        assert len(statements) == 1 and statements[0].lstrip().startswith("WITH cred AS")
        seen = _snapshot(fleet)
        assert seen["gateways"][0].last_seen_at == fleet.clock.now()
        assert [(d.soc_pct, d.temperature_c) for d in seen["devices"]] == [
            (33.0, 24.5),
            (55.0, 31.0),
        ]
        # Refused credentials write nothing: a revoked gateway token (read fresh from the
        # database by this path, whatever the cache holds) and an operator token.
        fleet.clock.advance(10)
        _revoke_behind_the_servers_back(fleet, fleet.gateways["gw"])
        for role, code in (("gw", "BMSFW-E602"), ("operator", "BMSFW-E603")):
            refused = fleet.client.post(
                "/api/v1/agent/check-in",
                headers=fleet.h(role),
                json={"devices": [bms("S1", soc_pct=1.0)]},
            )
            assert refused.status_code in (401, 403)
            assert refused.json()["error"]["code"] == code
        assert _snapshot(fleet) == seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
