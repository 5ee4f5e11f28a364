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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from bmsfw.fleet.models import Credential

__all__ = [
    "GATEWAY_ROLE",
    "OPERATOR_ROLES",
    "ROLE_RANK",
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

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


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
    )
    session.add(credential)
    session.flush()
    return credential, token


def access_review(session: Session) -> list[dict[str, object]]:
    """Every credential with role, creation, last use and revocation (IEC 62443 access review)."""
    rows: Iterable[Credential] = session.scalars(select(Credential).order_by(Credential.id))
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
            "active": c.revoked_at is None,
        }
        for c in rows
    ]
