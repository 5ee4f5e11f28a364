"""The HTTP edge of the fleet server: limits before work, refusals recorded, access log.

* :class:`EdgeMiddleware` (pure ASGI, outermost) answers **422** to a path or query with
  a NUL character (``%00``) before routing, and **413** before reading a body
  whose declared ``Content-Length`` exceeds its route's limit, and stops reading one
  that grows past it (chunked): a body is never buffered beyond its limit. It writes
  one structured access-log line per request (logger ``bmsfw.fleet.access``).
* :class:`RateLimiter`: token buckets per key in process memory (a process's own count
  of failed authentications per credential and per source address); the buckets every
  server process shares are in :mod:`bmsfw.fleet.rate_limits`.
* :class:`RefusalLog`: every refused request (401/403, 413, 429) is counted in memory
  by (credential, route, source address, reason) and written to the audit log in
  batches (one ``access.refused`` entry per distinct key and flush, with its count,
  first and last time), so a flood of refusals costs the database one insert per key
  per flush, not one per request, and never touches the check-in path's transaction.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bmsfw.fleet.errors import RequestTooLargeError

__all__ = [
    "ACCESS_LOG",
    "BodyTooLargeError",
    "EdgeMiddleware",
    "RateLimiter",
    "Refusal",
    "RefusalLog",
]

ACCESS_LOG = logging.getLogger("bmsfw.fleet.access")
_MAX_LOGGED_PATH = 200


class BodyTooLargeError(StarletteHTTPException):
    """Raised from ``receive`` when a body grows past its route's limit (answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds this route's {limit}-byte limit")
        self.limit = limit


def too_large_response(limit: int, declared: int | None = None) -> JSONResponse:
    size = f"{declared} bytes" if declared is not None else "the request body"
    error = RequestTooLargeError(f"{size} exceeds this route's {limit}-byte limit")
    return JSONResponse({"error": error.to_dict()}, status_code=413)


class RateLimiter:
    """Token buckets: ``burst`` tokens per key, refilled at ``rate_per_s``; thread-safe.

    At most ``max_keys`` buckets are kept (a flood of new keys, e.g. random tokens,
    empties the table rather than growing it: those keys start full again).
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate_per_s)

    def take(self, key: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens = self._level(key, now)
            if tokens < 1.0:
                return (1.0 - tokens) / self.rate_per_s
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0

    def wait_s(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0.0: it has one now); takes nothing."""
        if not self.enabled:
            return 0.0
        with self._lock:
            tokens = self._level(key, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s


@dataclass(frozen=True)
class Refusal:
    """What a refused request is recorded by (never the token itself)."""

    credential_id: int | None
    credential: str  # the credential's label, or "unknown" / "none"
    route: str  # "POST /api/v1/agent/check-in" (the route template when one matched)
    address: str
    reason: str  # the error code, e.g. BMSFW-E602
    status: int


class RefusalLog:
    """Refusals counted in memory and written to the audit log in batches.

    ``record`` costs a dict update under a lock; ``drain`` hands the counted keys
    (with count, first and last time) to the caller, who writes them. At most
    ``max_keys`` distinct keys are held between flushes; further distinct refusals
    are only counted (``overflow``), and the next flush writes that count too.
    """

    def __init__(self, *, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._pending: dict[Refusal, list[Any]] = {}
        self._overflow = 0
        self._lock = threading.Lock()
        self.total = 0

    def record(self, refusal: Refusal, now: datetime) -> None:
        with self._lock:
            self.total += 1
            entry = self._pending.get(refusal)
            if entry is not None:
                entry[0] += 1
                entry[2] = now
            elif len(self._pending) < self.max_keys:
                self._pending[refusal] = [1, now, now]
            else:
                self._overflow += 1

    def drain(self) -> tuple[list[tuple[Refusal, int, datetime, datetime]], int]:
        with self._lock:
            pending, self._pending = self._pending, {}
            overflow, self._overflow = self._overflow, 0
        return [(r, int(c), first, last) for r, (c, first, last) in pending.items()], overflow


class EdgeMiddleware:
    """Body limits before the body is read, and the access log (pure ASGI, outermost)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_limit: Callable[[str, str], int],
        on_oversized: Callable[[Scope, int], None],
        on_nul: Callable[[], Response],
    ) -> None:
        self.app = app
        self.body_limit = body_limit
        self.on_oversized = on_oversized
        self.on_nul = on_nul

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0

        async def send_logged(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        limit = self.body_limit(scope["method"], scope["path"])
        declared = _content_length(scope)
        try:
            query = scope["query_string"]
            if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query:
                # No route parameter may carry a NUL into a query (PostgreSQL cannot
                # store or compare one): 422 before routing.
                await self.on_nul()(scope, receive, send_logged)
                return
            if declared is not None and declared > limit:
                # Refused before a byte of the body is read.
                self.on_oversized(scope, limit)
                await too_large_response(limit, declared)(scope, receive, send_logged)
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        self.on_oversized(scope, limit)
                        raise BodyTooLargeError(limit)
                return message

            await self.app(scope, receive_limited, send_logged)
        finally:
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                ACCESS_LOG.info(_access_line(scope, status, sent, started))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def route_of(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """``METHOD /template`` of the matched route (looked up in ``routes`` when the request
    was refused before routing), or the path, cut short, when none matches."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
    path = getattr(route, "path", None) or str(scope.get("path", ""))[:_MAX_LOGGED_PATH]
    return f"{scope.get('method', '?')} {path}"


def address_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _access_line(scope: Scope, status: int, sent: int, started: float) -> str:
    state = scope.get("state") or {}
    principal = state.get("principal")
    return json.dumps(
        {
            "route": route_of(scope),
            "status": status or 500,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "bytes_out": sent,
            "address": address_of(scope),
            "credential_id": getattr(principal, "credential_id", None),
            "credential": getattr(principal, "label", None),
        },
        separators=(",", ":"),
    )
