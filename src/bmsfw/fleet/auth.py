"""Credentials: operator API tokens with roles, and one token per gateway.

Tokens are 256-bit random strings shown once at creation; the database keeps
only their SHA-256 (a slow password hash buys nothing for a 256-bit secret, and
a fast one keeps the per-request check cheap). Operator roles are ordered
``viewer < operator < release_manager < admin``; a route names the lowest
operator role it admits and whether gateways may call it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bmsfw.fleet.models import AuditEntry, Credential

__all__ = [
    "GATEWAY_ROLE",
    "OPERATOR_ROLES",
    "ROLE_RANK",
    "CredentialCache",
    "Principal",
    "hash_token",
    "issue_token",
    "new_token",
    "roles_at_least",
]

OPERATOR_ROLES: tuple[str, ...] = ("viewer", "operator", "release_manager", "admin")
ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(OPERATOR_ROLES)}
GATEWAY_ROLE = "gateway"
ALL_ROLES: tuple[str, ...] = (*OPERATOR_ROLES, GATEWAY_ROLE)
_TOKEN_PREFIX = {"operator": "bmsfw_op_", "gateway": "bmsfw_gw_"}


def roles_at_least(minimum: str) -> frozenset[str]:
    """Every operator role ranked at or above ``minimum``."""
    return frozenset(r for r in OPERATOR_ROLES if ROLE_RANK[r] >= ROLE_RANK[minimum])


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved from the bearer token on every request."""

    credential_id: int
    name: str
    kind: str  # "operator" | "gateway"
    role: str
    gateway_id: int | None
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


class CredentialCache:
    """A short-lived per-process map of token hash -> principal, and last-use bookkeeping.

    Every request is still authenticated; the cache only saves the database look-up
    for a token resolved less than ``ttl_s`` ago. A credential revoked through this
    process is dropped at once (:meth:`invalidate`); one revoked by another process
    (or directly in the database) stops working here at most ``ttl_s`` after the
    revocation commits, because an entry is never used once it is ``ttl_s`` old.
    Unknown and revoked tokens are not cached, so a new credential works at once.

    Last use is written at most once per ``last_use_resolution`` per credential and
    process (:meth:`claim_last_use`), which is the resolution the access review shows.
    Times come from the server's clock (injectable), so tests move them.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        last_use_resolution: timedelta = timedelta(seconds=60),
        max_entries: int = 100_000,
    ) -> None:
        self.ttl = timedelta(seconds=ttl_s)
        self.last_use_resolution = last_use_resolution
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal, datetime]] = {}
        self._last_use: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str, now: datetime) -> Principal | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        principal, checked_at = entry
        # A negative age (the clock went back) counts as expired, never as fresh.
        if not timedelta(0) <= now - checked_at < self.ttl or principal.expired(now):
            self._entries.pop(token_hash, None)
            return None
        return principal

    def put(
        self, token_hash: str, principal: Principal, now: datetime, last_used_at: datetime | None
    ) -> None:
        with self._lock:
            if self.ttl > timedelta(0):
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()  # bounded memory; the next requests refill it
                self._entries[token_hash] = (principal, now)
            known = self._last_use.get(principal.credential_id)
            if last_used_at is not None and (known is None or last_used_at > known):
                self._last_use[principal.credential_id] = last_used_at

    def invalidate(self, credential_id: int) -> None:
        with self._lock:
            for key in [
                k for k, (p, _) in self._entries.items() if p.credential_id == credential_id
            ]:
                del self._entries[key]

    def claim_last_use(self, credential_id: int, now: datetime) -> bool:
        """True (once per resolution period) when this request should write last use."""
        with self._lock:
            last = self._last_use.get(credential_id)
            if last is not None and timedelta(0) <= now - last < self.last_use_resolution:
                return False
            self._last_use[credential_id] = now
            return True


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(kind: str) -> str:
    return _TOKEN_PREFIX[kind] + secrets.token_urlsafe(32)


def issue_token(
    session: Session,
    *,
    name: str,
    role: str,
    created_by: str,
    now: datetime,
    gateway_id: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[Credential, str]:
    """Create a credential row; returns it with the clear-text token (shown once)."""
    if role not in ALL_ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ALL_ROLES)}")
    kind = "gateway" if role == GATEWAY_ROLE else "operator"
    if (kind == "gateway") != (gateway_id is not None):
        raise ValueError("a gateway token needs a gateway id, an operator token must not have one")
    token = new_token(kind)
    credential = Credential(
        name=name,
        kind=kind,
        role=role,
        token_hash=hash_token(token),
        token_prefix=token[: len(_TOKEN_PREFIX[kind]) + 4],
        gateway_id=gateway_id,
        created_at=now,
        created_by=created_by,
        last_used_at=None,
        revoked_at=None,
        expires_at=expires_at,
    )
    session.add(credential)
    session.flush()
    return credential, token


def access_review(session: Session, now: datetime) -> list[dict[str, object]]:
    """Every credential with role, creation, last use, revocation and its refused requests
    (failed attempts: 401/403/413/429 recorded against it) (IEC 62443 access review)."""
    rows: Iterable[Credential] = session.scalars(select(Credential).order_by(Credential.id))
    failed: dict[int, int] = {}
    last_failed: dict[int, str] = {}
    for actor_id, detail in session.execute(
        select(AuditEntry.actor_id, AuditEntry.detail).where(
            AuditEntry.action == "access.refused", AuditEntry.actor_id.is_not(None)
        )
    ):
        failed[actor_id] = failed.get(actor_id, 0) + int(detail.get("count", 1))
        last_failed[actor_id] = max(last_failed.get(actor_id, ""), str(detail.get("last_at", "")))
    return [
        {
            "id": c.id,
            "name": c.name,
            "kind": c.kind,
            "role": c.role,
            "token_prefix": c.token_prefix,
            "gateway_id": c.gateway_id,
            "created_at": c.created_at.isoformat(),
            "created_by": c.created_by,
            "last_used_at": c.last_used_at.isoformat() if c.last_used_at else None,
            "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None,
            "expires_at": c.expires_at.isoformat() if c.expires_at else None,
            "active": c.revoked_at is None and (c.expires_at is None or c.expires_at > now),
            "failed_attempts": failed.get(c.id, 0),
            "last_failed_at": last_failed.get(c.id),
        }
        for c in rows
    ]
