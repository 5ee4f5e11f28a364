"""Dashboard sessions: rows in the fleet database behind an opaque cookie.

The browser holds only a random 256-bit session id (cookie ``__Host-bmsfw_session``:
HttpOnly, Secure, SameSite=Strict, path ``/``). The database keeps, under the id's
SHA-256 (table ``dashboard_sessions``), the hash of the credential that signed in, when
the session started, when it was last used and when it ends at the latest; a copy of
the database never yields a usable cookie. The session's CSRF token is an HMAC of the
session id, so it is bound to the session and stored nowhere.

Because the sessions live in the database, they survive a restart and every server
process sharing the database knows them (no sticky routing). Signing out deletes the
row. Every request re-resolves the credential through the fleet service, so a revoked
or expired token ends its sessions within the credential cache's TTL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from bmsfw.fleet.db import read_only_engine
from bmsfw.fleet.models import DashboardSession

__all__ = ["SessionPolicy", "SessionStore", "WebSession"]

_T = cast(Table, DashboardSession.__table__)
_CSRF_LABEL = b"bmsfw dashboard csrf v1"
_BY_KEY = select(_T.c.token_hash, _T.c.created_at, _T.c.last_seen_at).where(
    _T.c.id_hash == bindparam("b_key")
)


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lives: ``idle`` without a request, ``absolute`` at most.

    ``touch_every``: the last-use time is written at most this often (a page view is
    then a read, not a write); idle expiry is exact to within this much.
    ``max_per_credential``: sign-ins beyond this end the credential's oldest session.
    """

    idle: timedelta = timedelta(minutes=30)
    absolute: timedelta = timedelta(hours=8)
    touch_every: timedelta = timedelta(seconds=60)
    max_per_credential: int = 20


@dataclass(frozen=True)
class WebSession:
    token_hash: str  # of the credential that signed in
    csrf: str
    created_at: datetime
    last_seen_at: datetime

    def csrf_matches(self, presented: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), presented.encode("utf-8", "replace"))


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def _csrf(session_id: str) -> str:
    mac = hmac.new(session_id.encode("utf-8", "replace"), _CSRF_LABEL, hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def _alive(now: datetime, created_at: datetime, last_seen_at: datetime, p: SessionPolicy) -> bool:
    # A clock that went back counts as expired, never as fresh.
    return timedelta(0) <= now - last_seen_at < p.idle and now - created_at < p.absolute


class SessionStore:
    """Session id -> :class:`WebSession`, in the fleet database."""

    def __init__(self, sessions: sessionmaker[Session], policy: SessionPolicy | None = None):
        self.policy = policy or SessionPolicy()
        self._db = sessions
        self._reader = read_only_engine(sessions.kw["bind"])

    def create(self, token_hash: str, now: datetime) -> tuple[str, WebSession]:
        """A new session for the credential; returns the id for the cookie and the record.

        Ended sessions (of anyone) are deleted on the way, and the credential's oldest
        session when it already has ``max_per_credential``.
        """
        p = self.policy
        session_id = secrets.token_urlsafe(32)
        with self._db.begin() as db:
            db.execute(
                delete(_T).where(or_(_T.c.expires_at <= now, _T.c.last_seen_at <= now - p.idle))
            )
            mine = select(_T.c.id_hash).where(_T.c.token_hash == token_hash)
            count = db.execute(select(func.count()).select_from(mine.subquery())).scalar_one()
            if count >= p.max_per_credential:
                oldest = mine.order_by(_T.c.created_at).limit(count - p.max_per_credential + 1)
                db.execute(delete(_T).where(_T.c.id_hash.in_(oldest.scalar_subquery())))
            db.execute(
                _T.insert().values(
                    id_hash=_key(session_id),
                    token_hash=token_hash,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + p.absolute,
                )
            )
        return session_id, WebSession(token_hash, _csrf(session_id), now, now)

    def get(self, session_id: str, now: datetime, *, touch: bool = True) -> WebSession | None:
        """The live session (its idle timer restarted unless ``touch`` is off: an open event
        stream does not keep a session alive), or None (an ended one is deleted)."""
        key = _key(session_id)
        with self._reader.connect() as conn:  # a page view reads; it writes only now and then
            row = conn.execute(_BY_KEY, {"b_key": key}).one_or_none()
        if row is None:
            return None
        if not _alive(now, row.created_at, row.last_seen_at, self.policy):
            self.end(session_id)
            return None
        last_seen = row.last_seen_at
        if touch and now - last_seen >= self.policy.touch_every:
            with self._db.begin() as db:
                db.execute(update(_T).where(_T.c.id_hash == key).values(last_seen_at=now))
            last_seen = now
        return WebSession(row.token_hash, _csrf(session_id), row.created_at, last_seen)

    def end(self, session_id: str) -> None:
        with self._db.begin() as db:
            db.execute(delete(_T).where(_T.c.id_hash == _key(session_id)))
