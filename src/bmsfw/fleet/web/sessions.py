"""Dashboard sessions: server-side records behind an opaque cookie.

The browser holds only a random 256-bit session id (cookie ``__Host-bmsfw_session``:
HttpOnly, Secure, SameSite=Strict, path ``/``); the server keeps, under the id's
SHA-256, the hash of the credential that signed in, the session's CSRF token and its
expiry. Every request re-resolves the credential through the fleet service, so a
revoked or expired token ends its sessions within the credential cache's TTL.

Sessions live in the memory of the server process (bounded; a restart signs everyone
out). Several server processes behind one address need sticky routing for the
dashboard (the API itself shares nothing but the database): docs/fleet.md, "Dashboard".
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

__all__ = ["SessionPolicy", "SessionStore", "WebSession"]


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lives: ``idle`` without a request, ``absolute`` at most."""

    idle: timedelta = timedelta(minutes=30)
    absolute: timedelta = timedelta(hours=8)
    max_sessions: int = 10_000


@dataclass(frozen=True)
class WebSession:
    token_hash: str  # of the credential that signed in
    csrf: str
    created_at: datetime
    last_seen_at: datetime

    def expired(self, now: datetime, policy: SessionPolicy) -> bool:
        # A clock that went back counts as expired, never as fresh.
        return not (
            timedelta(0) <= now - self.last_seen_at < policy.idle
            and now - self.created_at < policy.absolute
        )

    def csrf_matches(self, presented: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), presented.encode())


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class SessionStore:
    """Session id -> :class:`WebSession` (thread-safe; handlers run in threads)."""

    def __init__(self, policy: SessionPolicy | None = None) -> None:
        self.policy = policy or SessionPolicy()
        self._sessions: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def create(self, token_hash: str, now: datetime) -> tuple[str, WebSession]:
        """A new session for the credential; returns the id for the cookie and the record."""
        session_id = secrets.token_urlsafe(32)
        record = WebSession(token_hash, secrets.token_urlsafe(32), now, now)
        with self._lock:
            if len(self._sessions) >= self.policy.max_sessions:
                self._drop_expired(now)
            if len(self._sessions) >= self.policy.max_sessions:
                # Bounded memory: the oldest session goes (its user signs in again).
                oldest = min(self._sessions, key=lambda k: self._sessions[k].created_at)
                del self._sessions[oldest]
            self._sessions[_key(session_id)] = record
        return session_id, record

    def get(self, session_id: str, now: datetime) -> WebSession | None:
        """The live session (its idle timer restarted), or None (ended ones are dropped)."""
        key = _key(session_id)
        with self._lock:
            record = self._sessions.get(key)
            if record is None:
                return None
            if record.expired(now, self.policy):
                del self._sessions[key]
                return None
            record = replace(record, last_seen_at=now)
            self._sessions[key] = record
            return record

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(_key(session_id), None)

    def _drop_expired(self, now: datetime) -> None:
        for key in [k for k, s in self._sessions.items() if s.expired(now, self.policy)]:
            del self._sessions[key]
