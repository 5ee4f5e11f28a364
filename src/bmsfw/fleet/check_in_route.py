"""The check-in route, end to end, behind one entry point (:class:`CheckInEndpoint`).

The hottest route does not go through FastAPI's request handling (no dependency
solving, no body parsing, no response validation): :class:`DirectRoute` hands the
request to the endpoint as it is. The endpoint then does, in this order:

1. the bearer token's hash and the failed-authentication limit (the shared guard);
2. the body, read within its limit by the edge;
3. in ONE hop to a worker thread of its own executor: the per-credential check-in rate
   limit (a token bucket in the database, shared by every server process; 429), the
   credential resolved by one
   of three ways (this process's cache; a read inside the check-in's transaction; on
   PostgreSQL the single statement of :mod:`bmsfw.fleet.service.check_in`, which reads
   it fresh and writes only for a valid one), **admitted in exactly one place**,
   :meth:`CheckInEndpoint.admit` (unknown, revoked or expired: 401; wrong role: 403 —
   the same rule every other route's guard applies), then the body validated (422
   after 401/403), the database work and the answer encoded once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy import Connection

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import GatewayDecommissionedError, InvalidCredentialError
from bmsfw.fleet.protocol import CheckIn
from bmsfw.fleet.service import FleetService

__all__ = ["CHECK_IN_BODY", "CheckInEndpoint", "DirectRoute"]

log = logging.getLogger(__name__)

# The check-in's body is parsed by the endpoint itself, so its schema is named here for
# the OpenAPI document; the models are added to its components.
CHECK_IN_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CheckIn"}}},
}


class Guard(Protocol):
    """What the check-in needs of the routes' credential guard."""

    roles: frozenset[str]

    def token_hash(self, request: Request) -> str: ...

    def admit(
        self, service: FleetService, principal: Principal | None, request: Request
    ) -> bool: ...


class CheckInLimits(Protocol):
    def limit_check_in(self, token_hash: str, conn: Connection | None = None) -> None: ...


class DirectRoute(APIRoute):
    """A route whose endpoint is called with the request as it is: no dependency solving,
    no body parsing, no response validation by FastAPI (the check-in's per-request cost).

    Its endpoint authenticates itself (:class:`CheckInEndpoint`); the guard is still
    declared as the route's dependency (OpenAPI, and the auth test checks the route
    refuses missing, bad and wrong-role credentials).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


def _log_agent_problems(body: CheckIn) -> CheckIn:
    """Answers of this server the agent refused since its last check-in (docs/agent.md)."""
    for problem in body.problems:
        log.warning(
            "a gateway refused %d answer(s) of this server: %s %r",
            problem.count,
            problem.code,
            problem.detail[:200],
        )
    return body


def _body_or_none(raw: bytes) -> CheckIn | None:
    try:
        return CheckIn.model_validate_json(raw)
    except ValidationError:
        return None


class CheckInEndpoint:
    """``POST /api/v1/agent/check-in`` (see the module text)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def admit(self, service: FleetService, principal: Principal | None, request: Request) -> bool:
        """THE check-in's authentication decision, whichever way the credential was read:
        raises for unknown, revoked, expired or wrong-role credentials; True when its
        last use is due to be written (inside the check-in's own statement/transaction)."""
        touch = self.guard.admit(service, principal, request)
        request.state.principal = principal
        return touch

    async def __call__(self, request: Request) -> Response:
        service: FleetService = request.app.state.service
        limits: CheckInLimits = request.app.state.edge
        token_hash = self.guard.token_hash(request)  # 401 for no/malformed header, 429
        request.state.principal = None
        raw = await request.body()
        threads: ThreadPoolExecutor = request.app.state.check_in_threads
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(
                threads, self._work, service, limits, request, token_hash, raw
            )
        except (InvalidCredentialError, GatewayDecommissionedError):
            # A credential refused because its gateway was decommissioned is answered
            # BMSFW-E660 instead, after its devices are flagged (in a transaction of its
            # own: the check-in's was rolled back).
            retired = await loop.run_in_executor(
                threads, lambda: service.refuse_retired_gateway(token_hash, _body_or_none(raw))
            )
            if retired is None:
                raise
            raise retired from None
        return Response(answer, media_type="application/json")

    def _work(
        self,
        service: FleetService,
        limits: CheckInLimits,
        request: Request,
        token_hash: str,
        raw: bytes,
    ) -> bytes:
        def admit(principal: Principal | None) -> bool:
            return self.admit(service, principal, request)

        def parse() -> CheckIn:
            try:
                return _log_agent_problems(CheckIn.model_validate_json(raw))
            except ValidationError as exc:
                # FastAPI's own 422 answer, as for every other route's body.
                raise RequestValidationError(
                    [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
                ) from exc

        if service.single_statement_check_in:
            # The credential's check-in rate, shared by every server process (429 first).
            limits.limit_check_in(token_hash)
            # PostgreSQL: one round trip with the credential read fresh in it.
            try:
                body = _log_agent_problems(CheckIn.model_validate_json(raw))
            except ValidationError:
                pass  # the path below answers 401/403 or 422, in that order
            else:
                answer = service.check_in_one_statement(token_hash, self.guard.roles, admit, body)
                return answer.model_dump_json().encode()

        # This process's cached principal, or the credential read inside the check-in's
        # own transaction; admitted by the same admit() either way.
        # SQLite: the rate limit (429 first) is the first statement of the check-in's
        # own transaction, which takes the write lock once (PostgreSQL took it above).
        def limit(conn: Connection) -> None:
            limits.limit_check_in(token_hash, conn)

        cached = service.cached_principal(token_hash)
        answer = service.check_in_by_token(
            cached,
            token_hash,
            admit,
            parse,
            first=None if service.single_statement_check_in else limit,
        )
        return answer.model_dump_json().encode()
