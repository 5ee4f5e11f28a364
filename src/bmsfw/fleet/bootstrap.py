"""Direct-database operations for the first start, before any admin token exists.

``bmsfw fleet init`` and ``bmsfw fleet token create`` use these: they need
access to the database itself (a server is not required to run), which is the
bootstrap trust anchor for the API's own credentials.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from bmsfw.fleet.auth import OPERATOR_ROLES, access_review, issue_token
from bmsfw.fleet.clock import Clock, SystemClock
from bmsfw.fleet.db import make_engine, make_session_factory, upgrade_database
from bmsfw.fleet.errors import FleetConfigError
from bmsfw.fleet.models import Credential
from bmsfw.fleet.service import audit

__all__ = ["access_review_report", "create_token", "init_database"]


def init_database(
    db_url: str, *, admin_name: str = "admin", clock: Clock | None = None
) -> str | None:
    """Migrate the database; create the first admin token if none exists (returned once)."""
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        with make_session_factory(engine)() as session, session.begin():
            has_admin = session.scalars(
                select(Credential.id).where(
                    Credential.role == "admin", Credential.revoked_at.is_(None)
                )
            ).first()
            if has_admin is not None:
                return None
            now = (clock or SystemClock()).now()
            credential, token = issue_token(
                session, name=admin_name, role="admin", created_by="bootstrap", now=now
            )
            audit(
                session, None, "token.bootstrap", f"credential:{credential.id}", now, role="admin"
            )
            return token
    finally:
        engine.dispose()


def create_token(
    db_url: str,
    *,
    role: str,
    name: str,
    clock: Clock | None = None,
    expires_in_days: int | None = None,
) -> dict[str, Any]:
    """Create an operator token directly in the database (bootstrap or lost admin token)."""
    if role not in OPERATOR_ROLES:
        raise FleetConfigError(f"role must be one of {', '.join(OPERATOR_ROLES)}, not {role!r}")
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        with make_session_factory(engine)() as session, session.begin():
            now = (clock or SystemClock()).now()
            expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
            credential, token = issue_token(
                session,
                name=name,
                role=role,
                created_by="cli (database access)",
                now=now,
                expires_at=expires_at,
            )
            expiry = expires_at.isoformat() if expires_at else None
            audit(
                session,
                None,
                "token.create",
                f"credential:{credential.id}",
                now,
                role=role,
                via="cli",
                expires_at=expiry,
            )
            return {
                "id": credential.id,
                "name": name,
                "role": role,
                "token": token,
                "expires_at": expiry,
            }
    finally:
        engine.dispose()


def access_review_report(db_url: str) -> list[dict[str, object]]:
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        with make_session_factory(engine)() as session:
            return access_review(session, SystemClock().now())
    finally:
        engine.dispose()
