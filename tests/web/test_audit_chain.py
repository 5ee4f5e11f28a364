"""The audit log's hash chain: entries are sealed after they are written; the audit page
verifies the whole chain and names the first entry changed, or the one after an entry
removed, behind the server's back (directly in the database)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from bmsfw.fleet.audit_chain import seal_audit_log, verify_chain
from fleet import conftest as fleet_fixtures
from fleet.conftest import Fleet

from .test_routes import _sign_in, https_fleet

fleet = fleet_fixtures.fleet
db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
config_overrides = fleet_fixtures.config_overrides
__all__ = ["https_fleet"]


def _sql(fleet: Fleet, statement: str, **params: object) -> None:
    engine = create_engine(fleet.db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def _one(fleet: Fleet, statement: str, **params: object) -> object:
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(statement), params).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.req("IEC62443-CR2.8")
def test_the_audit_page_verifies_the_chain_and_names_a_tampered_entry(
    https_fleet: Fleet,
) -> None:
    fleet = https_fleet
    for name in ("gw-a", "gw-b", "gw-c"):
        fleet.add_gateway(name, "site")  # audited: gateway.create, token.create
    engine = fleet.service.engine
    assert seal_audit_log(engine) >= 3
    assert seal_audit_log(engine) == 0  # sealed once
    _sign_in(fleet, "admin")
    page = fleet.client.get("/ui/audit")
    status = verify_chain(engine)
    assert status.intact and status.sealed >= 3
    assert f"Hash chain verified: {status.sealed} entries" in page.text
    entries = fleet.call("GET", "/api/v1/audit", params={"limit": 1000})
    victim = next(e for e in entries if e["target"] == "gateway:gw-b")
    original = _one(fleet, "SELECT actor_name FROM audit_log WHERE id = :i", i=victim["id"])
    _sql(fleet, "UPDATE audit_log SET actor_name = 'someone else' WHERE id = :i", i=victim["id"])
    broken = fleet.client.get("/ui/audit")
    assert f"Hash chain BROKEN at entry #{victim['id']}" in broken.text
    _sql(fleet, "UPDATE audit_log SET actor_name = :n WHERE id = :i", n=original, i=victim["id"])
    restored = verify_chain(engine)
    assert restored.intact
    # Removing an entry breaks the chain at the entry sealed after it.
    seq = [e["id"] for e in sorted(entries, key=lambda e: e["id"])]
    removed, following = seq[1], seq[2]
    _sql(fleet, "DELETE FROM audit_log WHERE id = :i", i=removed)
    gone = verify_chain(engine)
    assert not gone.intact and gone.broken_at == following
