"""Credentials: authentication, operator tokens, access review, audit log."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    select,
)

from bmsfw.fleet.auth import Principal, issue_token
from bmsfw.fleet.edge import Refusal
from bmsfw.fleet.errors import (
    FleetNotFoundError,
)
from bmsfw.fleet.models import (
    AuditEntry,
    Credential,
)
from bmsfw.fleet.paging import Listing, PageRequest, keyset, listing
from bmsfw.fleet.service._base import (
    ServiceBase,
    _iso,
    audit,
)


class CredentialOps(ServiceBase):
    def authenticate(self, token_hash: str) -> Principal | None:
        """The principal of a token (cached for ``credential_cache_ttl_s``), touching last use.

        The HTTP guard uses the parts below separately so that a cache hit costs no
        thread hop and a check-in writes last use inside its own transaction.
        """
        principal = self.cached_principal(token_hash) or self.load_principal(token_hash)
        if principal is not None and self.claim_last_use(principal):
            self.touch_last_used(principal)
        return principal

    def create_operator_token(
        self, principal: Principal, name: str, role: str, expires_in_days: int | None = None
    ) -> dict[str, Any]:
        now = self.clock.now()
        expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
        with self.sessions() as session, session.begin():
            credential, token = issue_token(
                session,
                name=name,
                role=role,
                created_by=principal.label,
                now=now,
                expires_at=expires_at,
            )
            audit(
                session,
                principal,
                "token.create",
                f"credential:{credential.id}",
                now,
                role=role,
                expires_at=_iso(expires_at),
            )
            return {
                "id": credential.id,
                "name": name,
                "role": role,
                "token": token,
                "expires_at": _iso(expires_at),
            }

    def revoke_token(self, principal: Principal, credential_id: int) -> dict[str, Any]:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            credential = session.get(Credential, credential_id)
            if credential is None:
                raise FleetNotFoundError(f"no credential with id {credential_id}")
            if credential.revoked_at is None:
                credential.revoked_at = now
            audit(session, principal, "token.revoke", f"credential:{credential_id}", now)
            revoked_at = credential.revoked_at
        # This process forgets it at once; the others within their cache TTL.
        self.credentials.invalidate(credential_id)
        return {"id": credential_id, "revoked_at": revoked_at.isoformat()}

    def access_review(self) -> list[dict[str, object]]:
        from bmsfw.fleet.auth import access_review

        with self.sessions() as session:
            return access_review(session, self.clock.now())

    def record_refusals(
        self, entries: list[tuple[Refusal, int, datetime, datetime]], overflow: int
    ) -> None:
        """Write refused requests counted in memory: one ``access.refused`` entry per
        (credential, route, address, reason) with its count, first and last time."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            for refusal, count, first, last in entries:
                session.add(
                    AuditEntry(
                        at=last,
                        actor_id=refusal.credential_id,
                        actor_name=refusal.credential,
                        action="access.refused",
                        target=refusal.route,
                        detail={
                            "address": refusal.address,
                            "reason": refusal.reason,
                            "status": refusal.status,
                            "count": count,
                            "first_at": first.isoformat(),
                            "last_at": last.isoformat(),
                        },
                    )
                )
            if overflow:
                audit(
                    session,
                    None,
                    "access.refused",
                    "*",
                    now,
                    count=overflow,
                    note="refusals beyond the distinct keys held between two flushes",
                )

    def audit_page(self, page: PageRequest) -> Listing:
        """The audit log, newest first, one page."""
        with self.sessions() as session:
            rows = session.scalars(
                keyset(select(AuditEntry), AuditEntry.id, page, descending=True)
            ).all()
            return listing(
                rows,
                page,
                lambda e: int(e.id),
                lambda e: {
                    "id": e.id,
                    "at": e.at.isoformat(),
                    "actor_id": e.actor_id,
                    "actor": e.actor_name,
                    "action": e.action,
                    "target": e.target,
                    "detail": e.detail,
                },
            )

    def audit_log(self, limit: int, before_id: int | None) -> list[dict[str, Any]]:
        """The ``limit`` newest entries older than ``before_id`` (the dashboard's pages)."""
        return self.audit_page(PageRequest(limit=limit, after=before_id)).items
