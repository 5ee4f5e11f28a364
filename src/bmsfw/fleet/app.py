"""The fleet server's HTTP API (FastAPI): thin over :class:`~bmsfw.fleet.service.FleetService`.

Every route is registered through :func:`_route`, which attaches the role guard
and records the admitted roles in the OpenAPI spec (``x-bmsfw-roles``). Anonymous are
only ``/healthz``, ``/readyz``, the OpenAPI document and its Swagger UI page (with the
page's own script and style). A test walks ``app.routes`` and checks every other one
refuses missing and wrong-role credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute, APIRouter
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute
from starlette.types import Scope

from bmsfw.errors import FleetError
from bmsfw.fleet.artifacts import ArtifactStore, parse_range
from bmsfw.fleet.audit_chain import seal_audit_log
from bmsfw.fleet.auth import GATEWAY_ROLE, Principal, hash_token, roles_at_least
from bmsfw.fleet.check_in_route import CHECK_IN_BODY, CheckInEndpoint, DirectRoute
from bmsfw.fleet.clock import Clock, SystemClock
from bmsfw.fleet.db import (
    head_revision,
    make_engine,
    make_session_factory,
    read_only_engine,
    upgrade_database,
)
from bmsfw.fleet.device_query import DeviceFilter
from bmsfw.fleet.edge import (
    BodyTooLargeError,
    EdgeMiddleware,
    RateLimiter,
    Refusal,
    RefusalLog,
    address_of,
    route_of,
    too_large_response,
)
from bmsfw.fleet.errors import (
    CredentialMissingError,
    FleetConfigError,
    FleetNotFoundError,
    InvalidCredentialError,
    RateLimitedError,
    ReleaseRejectedError,
    RequestInvalidError,
    RequestTooLargeError,
    RoleNotAllowedError,
    http_status_for,
)
from bmsfw.fleet.events import FleetEvents, event_stream_response
from bmsfw.fleet.metrics import CONTENT_TYPE, FleetMetrics, MetricsMiddleware
from bmsfw.fleet.paging import Listing, PageRequest, decode_cursor, encode_cursor
from bmsfw.fleet.protocol import (
    INT32_MAX,
    BackupInfo,
    BackupUpload,
    CheckIn,
    CheckInResponse,
    OperatorBackupUpload,
    StateReport,
    StateReportResponse,
)
from bmsfw.fleet.rate_limits import SharedBuckets
from bmsfw.fleet.releases import TrustRoot, safe_filename
from bmsfw.fleet.schemas import (
    ApprovalQuery,
    AuditQuery,
    CampaignSpec,
    Deactivation,
    DeviceMove,
    DeviceQuery,
    FlagQuery,
    GatewayCreate,
    PageQuery,
    Retirement,
    SiteWindowSpec,
    TokenCreate,
)
from bmsfw.fleet.service import FleetService, ServiceSettings
from bmsfw.fleet.service.approvals import Outcome, SafetyAction
from bmsfw.fleet.telemetry import TelemetryHistory, TelemetryPolicy
from bmsfw.fleet.tuf_repo import TufRelease, TufRepository, TufSettings, tuf_releases
from bmsfw.fleet.views import (
    AccessReviewEntry,
    ApprovalDecision,
    ApprovalView,
    AuditEntryView,
    BackupContent,
    CampaignDeviceView,
    CampaignView,
    DeviceDetail,
    DeviceUpdate,
    DeviceView,
    FlagView,
    GatewayCreated,
    GatewayView,
    ReleaseView,
    SiteView,
    TokenCreated,
    TokenRevoked,
    WhoAmI,
)
from bmsfw.fleet.web import PREFIX, create_dashboard

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger(__name__)

API = "/api/v1"
VIEWER = roles_at_least("viewer")
OPERATOR = roles_at_least("operator")
RELEASE_MANAGER = roles_at_least("release_manager")
ADMIN = roles_at_least("admin")
GATEWAY = frozenset({GATEWAY_ROLE})


# Path parameters bounded as the database columns are (INTEGER ids, VARCHAR(120) names):
# anything else is a 422 before it reaches a query.
IdPath = Annotated[int, Path(ge=1, le=INT32_MAX)]
SerialPath = Annotated[str, Path(min_length=1, max_length=120)]
SitePath = Annotated[str, Path(min_length=1, max_length=120)]
GatewayNamePath = Annotated[str, Path(min_length=1, max_length=120)]
# At most this many validation errors, each location part and message cut short, are
# answered: a 422 never echoes the (possibly huge) input back.
_MAX_REPORTED_ERRORS = 20
# Distinct keys (sources, tokens) whose failed authentications are counted between two
# flushes for the shared buckets; beyond that only this process's buckets count them.
_MAX_FAILED_KEYS = 10_000
_MAX_ERROR_TEXT = 200


@dataclass(frozen=True)
class ServerConfig:
    db_url: str
    trust_root_pem: bytes
    poll_interval_s: int = 60
    # Telemetry history (docs/fleet.md, "Telemetry history"): how often each device's
    # latest values are sampled (also sent to the agents, who check in at least that
    # often) and how long samples are kept; both clamped to their documented ranges.
    telemetry_interval_s: int = 600
    telemetry_keep_s: int = 3 * 86_400
    # How often each process re-evaluates running campaigns (soak times end
    # without any device report); 0 disables it (tests drive ``service.tick()``).
    tick_interval_s: float = 15.0
    # Body limits per route, enforced while reading (413 before the body is buffered).
    # A release upload streams to a temporary file; a BMS package is a few hundred KiB.
    max_upload_bytes: int = 32 * 1024 * 1024
    # A backup's config (canonical JSON); its request may be up to twice that.
    max_backup_bytes: int = 1024 * 1024
    max_check_in_bytes: int = 512 * 1024  # 512 devices of ~400 bytes each, with room
    # One update's evidence bundle (CAN bus trace included; docs/fleet.md, "Evidence").
    max_evidence_bytes: int = 16 * 1024 * 1024
    max_body_bytes: int = 1024 * 1024  # every other route
    # Per credential and process: check-ins (an agent polls every poll_interval_s),
    # and failed authentications (per credential and per source address).
    check_ins_per_s: float = 5.0
    check_in_burst: float = 30.0
    auth_failures_per_min: float = 30.0
    # How often refused requests counted in memory are written to the audit log.
    refusal_flush_interval_s: float = 5.0
    db_pool_size: int = 10
    # How long a process reuses a resolved token without reading it again: the
    # bound on how late a revocation made through another process takes effect.
    credential_cache_ttl_s: float = 5.0
    # Four eyes: campaigns of more devices than this wait for a second person's approval
    # (None: never; 0: every campaign). docs/fleet.md, "Four eyes".
    approval_above_devices: int | None = None
    # Four eyes for every other safety-relevant action (fleet/four_eyes.py): release
    # deactivation, token revocation, gateway and device decommissioning, resuming a
    # campaign its error threshold paused. How long a request waits before it expires.
    four_eyes: bool = False
    approval_ttl_s: float = 24 * 3600.0
    migrate: bool = True
    # GET /metrics (Prometheus): "token" needs a viewer token or above (Prometheus sends
    # it with `authorization: {credentials_file: ...}`), "open" answers anyone (only
    # behind a network boundary you control), "off" serves none.
    metrics: str = "token"
    extra: dict[str, Any] = field(default_factory=dict)
    # TUF metadata for the agents (/api/v1/tuf/...): None publishes none.
    tuf: TufSettings | None = None

    def body_limit(self, method: str, path: str) -> int:
        """The body limit of the route ``method path`` (docs/fleet.md, "Limits")."""
        if method == "POST":
            if path == f"{API}/agent/check-in":
                return self.max_check_in_bytes
            if path == f"{API}/releases":
                return self.max_upload_bytes
            if path == "/ui/releases/upload":  # the same file in a form (multipart)
                return self.max_upload_bytes + 64 * 1024
            if path == f"{API}/agent/backups" or (
                path.startswith(f"{API}/devices/") and path.endswith("/backups")
            ):
                return 2 * self.max_backup_bytes
            if path in {f"{API}/agent/evidence", f"{API}/evidence"}:
                return self.max_evidence_bytes
        return self.max_body_bytes


class _Edge:
    """This app's limits and refusal bookkeeping (the mechanisms are in :mod:`.edge` and
    :mod:`.rate_limits`).

    Check-ins per credential: one bucket per credential in the database, taken once
    per check-in (exact across processes). Failed authentications: counted at once in
    this process's buckets (a flood is refused here without a database write), and at
    every :meth:`flush` spent in the database's buckets, whose keys without a token are
    then read back: a source or token that failed through several processes is refused
    by all of them within one flush interval.
    """

    def __init__(self, config: ServerConfig, service: FleetService, engine: Engine) -> None:
        self.service = service
        self.shared = SharedBuckets(engine)
        self.check_in_rate = (config.check_ins_per_s, config.check_in_burst)
        self.failure_rate = (config.auth_failures_per_min / 60.0, config.auth_failures_per_min)
        self.failures = RateLimiter(*self.failure_rate)
        self._failed: dict[str, int] = {}  # failures since the last flush, per key
        self._blocked: dict[str, float] = {}  # key -> until (monotonic), from the database
        self._lock = threading.Lock()
        self.refusals = RefusalLog()
        self.routes: list[BaseRoute] = []  # the app's, for refusals before routing
        self.metrics: FleetMetrics | None = None

    def refuse_if_failing(self, request: Request, token_hash: str | None) -> None:
        """429 for a source address (``token_hash`` None) or a presented token that
        failed authentication more than the limit allows (here or in another process)."""
        if not self.failures.enabled:
            return
        key = f"tok:{token_hash}" if token_hash else f"addr:{address_of(request.scope)}"
        wait = max(self.failures.wait_s(key), self._blocked.get(key, 0.0) - time.monotonic())
        if wait > 0:
            raise RateLimitedError(
                f"too many failed authentications from this "
                f"{'credential' if token_hash else 'address'}; retry in {math.ceil(wait)} s",
                retry_after_s=wait,
            )

    def limit_check_in(self, token_hash: str, conn: Connection | None = None) -> None:
        """Take a check-in token of this credential from the database, in ``conn``'s
        transaction when given (blocking I/O: call it from a worker thread)."""
        rate, burst = self.check_in_rate
        if rate <= 0:
            return
        wait = self.shared.take(f"check-in:{token_hash}", rate, burst, conn)
        if wait > 0:
            raise RateLimitedError(
                f"more check-ins than this credential may send; retry in {math.ceil(wait)} s",
                retry_after_s=wait,
            )

    def refused(self, scope: Scope, status: int, code: str) -> None:
        """Count one refused request (written to the audit log by :meth:`flush`); a 401 or
        403 also spends a failed-authentication token of its source and credential."""
        state = scope.get("state") or {}
        principal: Principal | None = state.get("principal")
        token_hash = _bearer_hash(scope)
        if principal is None and token_hash is not None:
            principal = self.service.cached_principal(token_hash)
        address = address_of(scope)
        if status in (401, 403) and self.failures.enabled:
            keys = [f"addr:{address}"] + ([f"tok:{token_hash}"] if token_hash else [])
            with self._lock:
                for key in keys:
                    self.failures.take(key)
                    if key in self._failed or len(self._failed) < _MAX_FAILED_KEYS:
                        self._failed[key] = self._failed.get(key, 0) + 1
        if self.metrics is not None:
            self.metrics.count_refusal(status, code)
        self.refusals.record(
            Refusal(
                credential_id=principal.credential_id if principal else None,
                credential=principal.label if principal else ("unknown" if token_hash else "none"),
                route=route_of(scope, self.routes),
                address=address,
                reason=code,
                status=status,
            ),
            self.service.clock.now(),
        )

    def flush(self) -> int:
        """Write the refusals counted so far to the audit log and the failed
        authentications to the shared buckets, and read back which sources and tokens
        are refused; returns how many audit entries were written."""
        entries, overflow = self.refusals.drain()
        if entries or overflow:
            self.service.record_refusals(entries, overflow)
        if self.failures.enabled:
            with self._lock:
                failed, self._failed = self._failed, {}
            rate, burst = self.failure_rate
            self.shared.spend({f"auth-failures:{k}": n for k, n in failed.items()}, rate, burst)
            now = time.monotonic()
            self._blocked = {
                key.removeprefix("auth-failures:"): now + wait
                for key, wait in self.shared.blocked("auth-failures:", rate, burst).items()
            }
        return len(entries) + (1 if overflow else 0)


def _bearer_hash(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return hash_token(token.strip())
            return None
    return None


class _Guard:
    """Resolves the bearer token to a principal and checks its role (a FastAPI dependency).

    Async, so that a token this process resolved within the credential cache's TTL
    costs no thread hop and no database round trip; a miss reads the credential
    by its hash (one indexed query) in the thread pool. When last use is due (once
    a minute per credential and process) it is written here. The check-in does not
    call the guard as a dependency: its endpoint (:mod:`.check_in_route`) uses
    :meth:`token_hash` and :meth:`admit`, and writes last use in its own statement.
    """

    def __init__(self, roles: frozenset[str]) -> None:
        self.roles = roles

    @staticmethod
    def token_hash(request: Request) -> str:
        """The hash of the request's bearer token; refuses a missing or malformed header,
        and a source or token that failed authentication too often (429)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        edge: _Edge = request.app.state.edge
        edge.refuse_if_failing(request, None)
        if not header:
            raise CredentialMissingError(f"{request.method} {request.url.path} needs a credential")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidCredentialError("the Authorization header is not 'Bearer TOKEN'")
        token_hash = hash_token(token.strip())
        edge.refuse_if_failing(request, token_hash)
        return token_hash

    async def __call__(self, request: Request) -> Principal:
        service: FleetService = request.app.state.service
        token_hash = self.token_hash(request)
        principal = service.cached_principal(token_hash)
        if principal is None:
            principal = await run_in_threadpool(service.load_principal, token_hash)
        touch = self.admit(service, principal, request)
        assert principal is not None  # admit refused None
        if touch:
            await run_in_threadpool(service.touch_last_used, principal)
        request.state.principal = principal
        return principal

    def admit(self, service: FleetService, principal: Principal | None, request: Request) -> bool:
        """Refuse unknown/revoked tokens and roles not admitted; True when last use is due."""
        if principal is None:
            raise InvalidCredentialError("the token is unknown or revoked")
        if principal.role not in self.roles:
            request.state.principal = principal  # the refusal is recorded against it
            raise RoleNotAllowedError(
                f"role {principal.role!r} may not use {request.method} {request.url.path}; "
                f"allowed: {', '.join(sorted(self.roles))}"
            )
        return service.claim_last_use(principal)


class ErrorInfo(BaseModel):
    code: str
    type: str
    message: str
    diagnosis: str
    remedy: str
    package_code: str | None = None  # a refused release: the package's own error code


class ErrorBody(BaseModel):
    """Every error answer: ``error``; a 422 also lists the problems in ``detail``."""

    error: ErrorInfo
    detail: list[dict[str, Any]] | None = None


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


def _error_responses(method: str, path: str) -> dict[int | str, dict[str, Any]]:
    """The error statuses a guarded route can answer (declared in the OpenAPI document)."""
    responses: dict[int | str, dict[str, Any]] = {
        401: _error("no credential, or an unknown, revoked or expired one (E601, E602)"),
        403: _error("the credential's role may not use this route, or not for this object"),
        413: _error("the request body exceeds this route's limit (E631)"),
        422: _error("invalid path, query or body (E630; E605, E609, E610, E614 by route)"),
        429: _error("rate limited (E632); see Retry-After"),
    }
    if "{" in path or method in ("POST", "PUT"):
        responses[404] = _error("a release, campaign, device, gateway, backup or flag named "
                                "does not exist (E604)")  # fmt: skip
    if method in ("POST", "PUT"):
        responses[409] = _error(
            "conflicts with the current state (E606, E607, E608, E612; E633 an upload)"
        )
    if path.endswith("/artifact"):
        responses[500] = _error("the stored file is missing or damaged (E611)")
    return responses


def _route(
    router: APIRouter,
    method: str,
    path: str,
    roles: frozenset[str],
    *,
    guard: _Guard | None = None,
    openapi_extra: dict[str, Any] | None = None,
    route_class: type[APIRoute] | None = None,
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    guard = guard or _Guard(roles)
    assert guard.roles == roles

    responses = {**_error_responses(method, path), **kwargs.pop("responses", {})}

    def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        router.add_api_route(
            API + path,
            endpoint,
            methods=[method],
            dependencies=[Depends(guard)],
            openapi_extra={
                "security": [{"bearer": []}],
                **(openapi_extra or {}),
                "x-bmsfw-roles": sorted(roles),
            },
            route_class_override=route_class,
            responses=responses,
            **kwargs,
        )
        return endpoint

    return register


def _principal(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


def _service(request: Request) -> FleetService:
    service: FleetService = request.app.state.service
    return service


# The 200 answer of a list route: the page as a JSON array, the next page in headers.
_PAGED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "one page (a JSON array); more follow when the headers name the next",
        "headers": {
            "Link": {
                "description": 'the next page: `<PATH?...&cursor=C>; rel="next"` (RFC 8288); '
                "absent on the last page",
                "schema": {"type": "string"},
            },
            "X-Next-Cursor": {
                "description": "the cursor of the next page; absent on the last page",
                "schema": {"type": "string"},
            },
        },
    }
}


def _page(query: PageQuery, kind: str, key_type: type[int] | type[str]) -> PageRequest:
    after = None if query.cursor is None else decode_cursor(kind, query.cursor, key_type)
    return PageRequest(limit=query.limit, after=after)


def _paged(request: Request, response: Response, kind: str, page: Listing) -> list[dict[str, Any]]:
    """The page's rows; the next page's cursor in ``Link`` and ``X-Next-Cursor``."""
    if page.next_after is not None:
        cursor = encode_cursor(kind, page.next_after)
        url = request.url.include_query_params(cursor=cursor)
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        response.headers["X-Next-Cursor"] = cursor
    return page.items


def create_app(
    config: ServerConfig,
    *,
    clock: Clock | None = None,
    trust: TrustRoot | None = None,
) -> FastAPI:
    """Build the app: engine, migrations (unless ``config.migrate`` is off), routes."""
    clock = clock or SystemClock()
    trust = trust or TrustRoot(config.trust_root_pem)
    engine = make_engine(config.db_url, pool_size=config.db_pool_size)
    if config.migrate:
        upgrade_database(engine)
    policy = TelemetryPolicy.clamped(config.telemetry_interval_s, config.telemetry_keep_s)
    service = FleetService(
        make_session_factory(engine),
        ArtifactStore(engine),
        clock,
        ServiceSettings(
            poll_interval_s=config.poll_interval_s,
            telemetry_interval_s=policy.interval_s,
            max_backup_bytes=config.max_backup_bytes,
            max_evidence_bytes=config.max_evidence_bytes,
            artifact_url_prefix=f"{API}/releases",
            credential_cache_ttl_s=config.credential_cache_ttl_s,
            online_after_s=3.0 * config.poll_interval_s,
            approval_above_devices=config.approval_above_devices,
            four_eyes=config.four_eyes,
            approval_ttl_s=config.approval_ttl_s,
        ),
    )

    edge = _Edge(config, service, engine)
    if config.metrics not in ("token", "open", "off"):
        raise FleetConfigError(f"metrics must be token, open or off, not {config.metrics!r}")
    metrics = FleetMetrics(service.sessions, clock, 3.0 * config.poll_interval_s)
    edge.metrics = metrics
    # Sampled and pruned by the tick, drawn by the dashboard.
    telemetry = TelemetryHistory(engine, policy)
    # The check-in's own threads (as many as database connections): a plain executor
    # hand-off costs less than anyio's (capacity limiter, cancel scope, checkpoints).
    check_in_threads = ThreadPoolExecutor(
        max_workers=max(1, config.db_pool_size), thread_name_prefix="bmsfw-check-in"
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Handlers run in the thread pool; more threads than database connections
        # only queue for the pool, and dozens of threads convoy on the GIL.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(1, config.db_pool_size)
        tasks = []
        if config.tick_interval_s > 0:
            tasks.append(
                asyncio.create_task(_tick_forever(service, telemetry, config.tick_interval_s))
            )
        if config.refusal_flush_interval_s > 0:
            tasks.append(asyncio.create_task(_flush_forever(edge, config.refusal_flush_interval_s)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            try:
                await run_in_threadpool(edge.flush)
            except Exception:  # shutting down: log it, but let the rest close
                log.exception("writing refused requests to the audit log failed")
            check_in_threads.shutdown(wait=True)
            edge.shared.dispose()
            engine.dispose()

    app = FastAPI(
        title="bmsfw fleet server",
        version="1",
        lifespan=lifespan,
        # The stock documentation routes are anonymous; ours below need a viewer token.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.config = config
    app.state.trust = trust
    app.state.check_in_threads = check_in_threads
    app.state.edge = edge
    edge.routes = app.router.routes

    @app.exception_handler(FleetError)
    async def _fleet_error(request: Request, exc: FleetError) -> JSONResponse:
        status = http_status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, RateLimitedError):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
        if status in (401, 403, 429):
            edge.refused(request.scope, status, exc.code)
        body = exc.to_dict()
        if isinstance(exc, ReleaseRejectedError) and exc.package_code:
            body["package_code"] = exc.package_code
        return JSONResponse({"error": body}, status_code=http_status_for(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(invalid_request_body(exc.errors()), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc, BodyTooLargeError):
            return too_large_response(exc.limit)
        if exc.status_code == 400:
            # FastAPI answers 400 for a JSON body it cannot decode (not UTF-8): to a
            # client that is the same mistake as any other invalid body.
            problem = [{"loc": ["body"], "msg": "the body is not UTF-8 JSON", "type": "json"}]
            return JSONResponse(invalid_request_body(problem), status_code=422)
        return JSONResponse(
            {"detail": _short(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    app.add_middleware(
        EdgeMiddleware,
        body_limit=config.body_limit,
        on_oversized=lambda scope, _limit: edge.refused(scope, 413, RequestTooLargeError.code),
        on_nul=lambda: JSONResponse(
            invalid_request_body(
                [{"loc": ["path"], "msg": "NUL character in path or query", "type": "nul"}]
            ),
            status_code=422,
        ),
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # Routes go straight onto the app's router (no include_router), so app.routes lists
    # every APIRoute with its guard: the auth test walks exactly what is served.
    router = app.router
    _agent_routes(router)
    _release_routes(router, config)
    if config.tuf is not None:
        _tuf_routes(router, TufRepository(config.tuf))
    _campaign_routes(router)
    _approval_routes(router)
    _inventory_routes(router)
    from bmsfw.fleet.evidence_routes import evidence_routes  # it imports this module

    evidence_routes(router)
    _admin_routes(router, app)
    _health_routes(router, engine)
    _docs_routes(router, app)
    if config.metrics != "off":
        _metrics_route(router, metrics, anonymous=config.metrics == "open")
    _document_check_in_body(app)
    app.state.telemetry = telemetry
    app.state.events = FleetEvents(engine, clock)
    app.mount(
        PREFIX,
        create_dashboard(
            service,
            edge,
            online_after_s=3 * config.poll_interval_s,
            telemetry=telemetry,
            events=app.state.events,
            trust=trust,
        ),
    )
    return app


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "..."


def invalid_request_body(errors: Sequence[Any]) -> dict[str, Any]:
    """The 422 answer: the error record and FastAPI's ``detail`` list, without the input.

    Each entry keeps its location, message and type, cut to a bounded length; the
    offending value itself is never echoed (it may be megabytes, or not text at all).
    """
    detail = []
    for error in list(errors)[:_MAX_REPORTED_ERRORS]:
        loc = [p if isinstance(p, int) else _short(p) for p in error.get("loc", ())][:10]
        detail.append(
            {"loc": loc, "msg": _short(error.get("msg", "")), "type": _short(error.get("type", ""))}
        )
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"]) or "request"
    message = f"{len(errors)} invalid value(s); {where}: {first['msg']}"
    return {"error": RequestInvalidError(message).to_dict(), "detail": detail}


def _document_check_in_body(app: FastAPI) -> None:
    """Put the check-in's request models into the OpenAPI components its route names."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()  # FastAPI caches this very dict in app.openapi_schema
            schema = CheckIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["CheckIn"] = schema
            # Swagger UI's Authorize button: one bearer token for every guarded route.
            spec["components"]["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an operator API token or a gateway's token",
                }
            }
        cached = app.openapi_schema
        assert cached is not None
        return cached

    app.openapi = openapi  # type: ignore[method-assign]


async def _flush_forever(edge: _Edge, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(edge.flush)
        except Exception:  # the next flush writes what this one could not
            log.exception("writing refused requests to the audit log failed")


async def _tick_forever(
    service: FleetService, telemetry: TelemetryHistory, interval_s: float
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(service.tick)
        except Exception:  # a failed tick must not stop later ones
            log.exception("campaign tick failed")
        try:
            await run_in_threadpool(telemetry.tick, service.clock.now())
        except Exception:
            log.exception("telemetry sampling failed")
        try:
            await run_in_threadpool(seal_audit_log, service.engine)
        except Exception:
            log.exception("sealing the audit log failed")


# The upload's body is the .bmsfw file itself, read by the endpoint as a stream.
_UPLOAD_BODY = {
    "required": True,
    "description": "the signed .bmsfw release file",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
_FILE = {
    "description": "the .bmsfw file",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


def _agent_routes(router: APIRouter) -> None:
    check_in_guard = _Guard(GATEWAY)
    check_in = CheckInEndpoint(check_in_guard)
    _route(
        router,
        "POST",
        "/agent/check-in",
        GATEWAY,
        guard=check_in_guard,
        route_class=DirectRoute,
        response_model=CheckInResponse,
        openapi_extra={"requestBody": CHECK_IN_BODY},
        summary="Check In",
        description="Gateway inventory, telemetry and integrity report; answers with offers.",
        name="check_in",
    )(check_in.__call__)

    @_route(router, "POST", "/agent/reports", GATEWAY, response_model=StateReportResponse)
    def report(request: Request, body: StateReport) -> StateReportResponse:
        """One device's state change in one campaign, with the device's error code."""
        return _service(request).report_state(_principal(request), body)

    @_route(router, "POST", "/agent/backups", GATEWAY, response_model=BackupInfo, status_code=201)
    def backup(request: Request, body: BackupUpload) -> BackupInfo:
        """A configuration backup the agent took before touching a device."""
        return _service(request).store_backup(_principal(request), body)


def _tuf_routes(router: APIRouter, repository: TufRepository) -> None:
    @_route(router, "GET", "/tuf/{name}", VIEWER | GATEWAY)
    def tuf_metadata(request: Request, name: str) -> Response:
        """Signed TUF metadata of the releases served (root, timestamp, snapshot, targets)."""
        service = _service(request)

        def served() -> list[TufRelease]:
            # A pulled release leaves the signed targets (an agent then refuses its
            # offers), unless its campaigns were let finish and one is still open.
            ids = service.served_release_ids()
            return tuf_releases([r for r in service.list_releases() if r["id"] in ids])

        data = repository.file(name, served)
        if data is None:
            raise FleetNotFoundError(f"no TUF metadata named {name[:64]!r}")
        return Response(data, media_type="application/json")


def _release_routes(router: APIRouter, config: ServerConfig) -> None:
    @_route(
        router,
        "POST",
        "/releases",
        RELEASE_MANAGER,
        status_code=201,
        openapi_extra={"requestBody": _UPLOAD_BODY},
        responses={
            200: {"model": ReleaseView, "description": "uploaded before: that release"},
            201: {"model": ReleaseView, "description": "the release, verified and stored"},
        },
    )
    async def upload_release(
        request: Request, filename: Annotated[str, Query(max_length=255)] = "release.bmsfw"
    ) -> JSONResponse:
        """Upload a `.bmsfw` as the raw request body; verified against the trust root."""
        service = _service(request)
        principal = _principal(request)
        trust: TrustRoot = request.app.state.trust
        # Streamed to a temporary file while it arrives (the edge stops it at
        # max_upload_bytes, 413), then hashed, verified and copied into the database
        # from that file a chunk at a time: the upload is never whole in memory.
        with tempfile.TemporaryFile(prefix="bmsfw-upload-") as spool:
            async for chunk in request.stream():
                await run_in_threadpool(spool.write, chunk)
            release, created, _facts = await run_in_threadpool(
                service.ingest_release, principal, trust, spool, filename
            )
        return JSONResponse(release, status_code=201 if created else 200)

    @_route(router, "GET", "/releases", VIEWER, response_model=list[ReleaseView], responses=_PAGED)
    def list_releases(
        request: Request, response: Response, query: Annotated[PageQuery, Query()]
    ) -> list[dict[str, Any]]:
        """Releases in upload order, one page."""
        listing = _service(request).release_page(_page(query, "releases", int))
        return _paged(request, response, "releases", listing)

    @_route(
        router,
        "POST",
        "/releases/{release_id}/deactivate",
        RELEASE_MANAGER,
        response_model=ReleaseView,
        responses=_WAITING,
    )
    def deactivate_release(
        request: Request, release_id: IdPath, body: Deactivation | None = None
    ) -> Any:
        """Pull a release: no new campaign may use it; its running and paused campaigns
        stop (`running: "stop"`, the default: cancelled, offers not yet taken withdrawn,
        gateways can no longer download it) or run to their end (`"finish"`); audited.
        With four eyes on, answers 202 with the approval request instead."""
        body = body or Deactivation()
        action = SafetyAction("release.deactivate", str(release_id), body.reason, body.running)
        return _done_or_waiting(_service(request).submit(_principal(request), action))

    @_route(router, "GET", "/releases/{release_id}", VIEWER, response_model=ReleaseView)
    def get_release(request: Request, release_id: IdPath) -> dict[str, Any]:
        return _service(request).get_release(release_id)

    @_route(
        router,
        "GET",
        "/releases/{release_id}/artifact",
        VIEWER | GATEWAY,
        response_class=Response,
        responses={
            200: _FILE,
            206: {**_FILE, "description": "the part named by Range"},
            416: {"description": "Range starts at or past the end of the file"},
        },
    )
    def download(request: Request, release_id: IdPath) -> Response:
        """The `.bmsfw` file; supports `Range: bytes=N-` to resume and `If-Range` with the ETag."""
        service = _service(request)
        release = service.artifact_for(_principal(request), release_id)
        etag = f'"{release.sha256}"'
        size = release.size_bytes
        part = parse_range(
            request.headers.get("range"), request.headers.get("if-range"), etag, size
        )
        headers = {
            "ETag": etag,
            "X-Content-SHA256": release.sha256,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'attachment; filename="{safe_filename(release.filename)}"',
        }
        if part.status == 416:
            headers["Content-Range"] = f"bytes */{size}"
            return Response(status_code=416, headers=headers)
        if part.status == 206:
            headers["Content-Range"] = f"bytes {part.start}-{part.end}/{size}"
        headers["Content-Length"] = str(part.end - part.start + 1)
        return StreamingResponse(
            service.store.read(release.sha256, part.start, part.end),
            status_code=part.status,
            headers=headers,
            media_type="application/octet-stream",
        )


def _campaign_routes(router: APIRouter) -> None:
    @_route(router, "POST", "/campaigns", OPERATOR, status_code=201, response_model=CampaignView)
    def create_campaign(request: Request, spec: CampaignSpec) -> dict[str, Any]:
        """Start a phased campaign; safety-critical releases are refused (BMSFW-E606)."""
        return _service(request).create_campaign(_principal(request), spec)

    @_route(
        router, "GET", "/campaigns", VIEWER, response_model=list[CampaignView], responses=_PAGED
    )
    def list_campaigns(
        request: Request, response: Response, query: Annotated[PageQuery, Query()]
    ) -> list[dict[str, Any]]:
        """Campaigns in creation order, one page."""
        listing = _service(request).campaign_page(_page(query, "campaigns", int))
        return _paged(request, response, "campaigns", listing)

    @_route(router, "GET", "/campaigns/{campaign_id}", VIEWER, response_model=CampaignView)
    def get_campaign(request: Request, campaign_id: IdPath) -> dict[str, Any]:
        return _service(request).get_campaign(campaign_id)

    @_route(
        router,
        "GET",
        "/campaigns/{campaign_id}/devices",
        VIEWER,
        response_model=list[CampaignDeviceView],
    )
    def campaign_devices(request: Request, campaign_id: IdPath) -> list[dict[str, Any]]:
        """Every target device with its state, error code and timestamped history."""
        return _service(request).campaign_devices(campaign_id)

    @_route(router, "POST", "/campaigns/{campaign_id}/pause", OPERATOR, response_model=CampaignView)
    def pause(
        request: Request, campaign_id: IdPath, reason: Annotated[str, Body(embed=True)] = ""
    ) -> dict[str, Any]:
        return _service(request).pause(_principal(request), campaign_id, reason)

    @_route(
        router,
        "GET",
        "/events",
        VIEWER,
        response_class=StreamingResponse,
        include_in_schema=False,  # a stream, not a JSON answer: docs/fleet.md, "Event stream"
    )
    async def fleet_events(request: Request) -> StreamingResponse:
        """Server-Sent Events of campaign and device state changes (bmsfw.fleet.events)."""
        service = _service(request)
        token_hash = _bearer_hash(request.scope) or ""

        def allowed() -> bool:
            p = service.load_principal(token_hash)
            return p is not None and not p.expired(service.clock.now()) and p.role in VIEWER

        return await event_stream_response(request, request.app.state.events, allowed)

    @_route(
        router, "POST", "/campaigns/{campaign_id}/approve", OPERATOR, response_model=CampaignView
    )
    def approve(request: Request, campaign_id: IdPath) -> dict[str, Any]:
        """Four eyes: start a campaign waiting for approval (not by whoever created it: E650)."""
        return _service(request).approve(_principal(request), campaign_id)

    @_route(
        router,
        "POST",
        "/campaigns/{campaign_id}/resume",
        OPERATOR,
        response_model=CampaignView,
        responses=_WAITING,
    )
    def resume(request: Request, campaign_id: IdPath) -> Any:
        """Resume; failures seen so far count as reviewed for the error threshold. With
        four eyes on, a campaign its error threshold paused answers 202 and waits."""
        outcome = _service(request).resume_or_request(_principal(request), campaign_id)
        return _done_or_waiting(outcome)

    @_route(
        router, "POST", "/campaigns/{campaign_id}/cancel", OPERATOR, response_model=CampaignView
    )
    def cancel(
        request: Request, campaign_id: IdPath, reason: Annotated[str, Body(embed=True)] = ""
    ) -> dict[str, Any]:
        return _service(request).cancel(_principal(request), campaign_id, reason)

    @_route(
        router, "POST", "/campaigns/{campaign_id}/evaluate", OPERATOR, response_model=CampaignView
    )
    def evaluate(request: Request, campaign_id: IdPath) -> dict[str, Any]:
        """Apply the progression rules now (the server also does this periodically)."""
        return _service(request).evaluate(campaign_id)


def _approval_routes(router: APIRouter) -> None:
    @_route(
        router, "GET", "/approvals", VIEWER, response_model=list[ApprovalView], responses=_PAGED
    )
    def list_approvals(
        request: Request, response: Response, query: Annotated[ApprovalQuery, Query()]
    ) -> list[dict[str, Any]]:
        """Four eyes: approval requests in the order asked (default: those waiting)."""
        status = "" if query.status == "all" else query.status
        listing = _service(request).approval_page(status, _page(query, "approvals", int))
        return _paged(request, response, "approvals", listing)

    @_route(router, "GET", "/approvals/{approval_id}", VIEWER, response_model=ApprovalView)
    def get_approval(request: Request, approval_id: IdPath) -> dict[str, Any]:
        return _service(request).get_approval(approval_id)

    @_route(
        router,
        "POST",
        "/approvals/{approval_id}/approve",
        OPERATOR,
        response_model=ApprovalDecision,
    )
    def approve_request(request: Request, approval_id: IdPath) -> dict[str, Any]:
        """Approve as a second person with the role the action needs (not its requester:
        E650; a lower role: E654); the action runs now and its answer is `result`."""
        return _service(request).approve_request(_principal(request), approval_id)

    @_route(
        router, "POST", "/approvals/{approval_id}/reject", OPERATOR, response_model=ApprovalView
    )
    def reject_request(
        request: Request,
        approval_id: IdPath,
        note: Annotated[str, Body(embed=True, max_length=2000)] = "",
    ) -> dict[str, Any]:
        """Reject a waiting request (by its requester: withdraw it); nothing is done."""
        return _service(request).reject_request(_principal(request), approval_id, note)


def _done_or_waiting(outcome: Outcome) -> Any:
    """The action's answer, or 202 with the approval request it waits on."""
    if outcome.waiting is not None:
        return JSONResponse(outcome.waiting, status_code=202)
    return outcome.result


_WAITING: dict[int | str, dict[str, Any]] = {
    202: {"model": ApprovalView, "description": "four eyes: waiting for a second person"}
}


def _inventory_routes(router: APIRouter) -> None:
    @_route(router, "GET", "/gateways", VIEWER, response_model=list[GatewayView], responses=_PAGED)
    def list_gateways(
        request: Request, response: Response, query: Annotated[PageQuery, Query()]
    ) -> list[dict[str, Any]]:
        """Gateways by name, one page."""
        listing = _service(request).gateway_page(_page(query, "gateways", str))
        return _paged(request, response, "gateways", listing)

    @_route(
        router,
        "POST",
        "/gateways/{name}/decommission",
        ADMIN,
        response_model=GatewayView,
        responses=_WAITING,
    )
    def decommission_gateway(
        request: Request, name: GatewayNamePath, body: Retirement | None = None
    ) -> Any:
        """Retire a gateway: its credentials revoked, its devices and history kept (move
        them to another gateway); audited."""
        action = SafetyAction("gateway.decommission", name, body.reason if body else "")
        return _done_or_waiting(_service(request).submit(_principal(request), action))

    @_route(router, "POST", "/gateways", ADMIN, status_code=201, response_model=GatewayCreated)
    def create_gateway(request: Request, body: GatewayCreate) -> dict[str, Any]:
        """Register a gateway; the answer holds its token, shown only this once."""
        return _service(request).create_gateway(
            _principal(request), body.name, body.site, body.tags
        )

    @_route(router, "GET", "/devices", VIEWER, response_model=list[DeviceView], responses=_PAGED)
    def list_devices(
        request: Request, response: Response, query: Annotated[DeviceQuery, Query()]
    ) -> list[dict[str, Any]]:
        """Devices in serial order, one page; every filter given must match (exact values;
        `online`: checked in within three poll intervals; `flagged`: an open flag)."""
        selection = DeviceFilter(
            model=query.model,
            hw_revision=query.revision,
            firmware_version=query.version,
            site=query.site,
            tag=query.tag,
            flagged=query.flagged,
            online=query.online,
        )
        listing = _service(request).device_page(selection, _page(query, "devices", str))
        return _paged(request, response, "devices", listing)

    @_route(router, "GET", "/devices/{serial}", VIEWER, response_model=DeviceDetail)
    def get_device(request: Request, serial: SerialPath) -> dict[str, Any]:
        return _service(request).get_device(serial)

    @_route(router, "GET", "/devices/{serial}/updates", VIEWER, response_model=list[DeviceUpdate])
    def device_updates(
        request: Request,
        response: Response,
        serial: SerialPath,
        query: Annotated[PageQuery, Query()],
    ) -> list[dict[str, Any]]:
        """The device's runs in campaigns, newest first, one page: state, error code and
        the update report its agent sent with the result (steps, preflight, error)."""
        listing = _service(request).device_update_page(serial, _page(query, "updates", int))
        return _paged(request, response, "updates", listing)

    @_route(router, "GET", "/devices/{serial}/backups", OPERATOR, response_model=list[BackupInfo])
    def list_backups(request: Request, serial: SerialPath) -> list[BackupInfo]:
        return _service(request).list_backups(serial)

    @_route(
        router,
        "POST",
        "/devices/{serial}/backups",
        OPERATOR,
        response_model=BackupInfo,
        status_code=201,
    )
    def upload_device_backup(
        request: Request, serial: SerialPath, body: OperatorBackupUpload
    ) -> BackupInfo:
        """A backup a technician took on site (`bmsfw backup --server`); the device must be
        in the inventory. The answer names the uploading credential and the SHA-256."""
        return _service(request).store_operator_backup(_principal(request), serial, body)

    @_route(
        router,
        "POST",
        "/devices/{serial}/decommission",
        OPERATOR,
        response_model=DeviceView,
        responses=_WAITING,
    )
    def decommission_device(
        request: Request, serial: SerialPath, body: Retirement | None = None
    ) -> Any:
        """Retire a device: in no new campaign, its history kept; refused (E645) while it
        has open work in a running or paused campaign; audited."""
        action = SafetyAction("device.decommission", serial, body.reason if body else "")
        return _done_or_waiting(_service(request).submit(_principal(request), action))

    @_route(router, "POST", "/devices/{serial}/move", OPERATOR, response_model=DeviceView)
    def move_device(request: Request, serial: SerialPath, body: DeviceMove) -> dict[str, Any]:
        """Move a device to another gateway (a check-in naming another gateway's device is
        refused and flagged, never a move)."""
        return _service(request).move_device(_principal(request), serial, body.gateway)

    @_route(router, "GET", "/backups/{backup_id}", OPERATOR | GATEWAY, response_model=BackupContent)
    def get_backup(request: Request, backup_id: IdPath) -> dict[str, Any]:
        """One backup with its JSON content (a gateway may read its own devices' backups)."""
        return _service(request).get_backup(_principal(request), backup_id)

    @_route(router, "GET", "/sites", VIEWER, response_model=list[SiteView])
    def list_sites(request: Request) -> list[dict[str, Any]]:
        return _service(request).list_sites()

    @_route(router, "PUT", "/sites/{site}/maintenance-windows", OPERATOR, response_model=SiteView)
    def set_windows(request: Request, site: SitePath, body: SiteWindowSpec) -> dict[str, Any]:
        return _service(request).set_site_windows(_principal(request), site, body)

    @_route(router, "GET", "/flags", VIEWER, response_model=list[FlagView], responses=_PAGED)
    def list_flags(
        request: Request, response: Response, query: Annotated[FlagQuery, Query()]
    ) -> list[dict[str, Any]]:
        """Devices flagged for integrity faults, unexpected firmware hash or version (open
        ones unless `include_acknowledged`), in the order raised, one page."""
        listing = _service(request).flag_page(
            include_acknowledged=query.include_acknowledged, page=_page(query, "flags", int)
        )
        return _paged(request, response, "flags", listing)

    @_route(router, "POST", "/flags/{flag_id}/acknowledge", OPERATOR, response_model=FlagView)
    def acknowledge(
        request: Request, flag_id: IdPath, note: Annotated[str, Body(embed=True)] = ""
    ) -> dict[str, Any]:
        return _service(request).acknowledge_flag(_principal(request), flag_id, note)


def _admin_routes(router: APIRouter, app: FastAPI) -> None:
    @_route(router, "GET", "/whoami", VIEWER | GATEWAY, response_model=WhoAmI)
    def whoami(request: Request) -> dict[str, Any]:
        p = _principal(request)
        return {"name": p.name, "kind": p.kind, "role": p.role, "gateway_id": p.gateway_id}

    @_route(router, "POST", "/tokens", ADMIN, status_code=201, response_model=TokenCreated)
    def create_token(request: Request, body: TokenCreate) -> dict[str, Any]:
        """A new operator API token; the clear text is in this answer only."""
        return _service(request).create_operator_token(
            _principal(request), body.name, body.role, body.expires_in_days
        )

    @_route(
        router,
        "POST",
        "/tokens/{credential_id}/revoke",
        ADMIN,
        response_model=TokenRevoked,
        responses=_WAITING,
    )
    def revoke_token(request: Request, credential_id: IdPath) -> Any:
        """Revoke a token (with four eyes on: 202 and the approval request)."""
        action = SafetyAction("token.revoke", str(credential_id))
        return _done_or_waiting(_service(request).submit(_principal(request), action))

    @_route(router, "GET", "/access-review", ADMIN, response_model=list[AccessReviewEntry])
    def access_review(request: Request) -> list[dict[str, object]]:
        """Every credential: role, creation, last use, revocation, expiry, failed attempts
        (IEC 62443 access review)."""
        request.app.state.edge.flush()
        return _service(request).access_review()

    @_route(router, "GET", "/audit", ADMIN, response_model=list[AuditEntryView], responses=_PAGED)
    def audit_log(
        request: Request, response: Response, query: Annotated[AuditQuery, Query()]
    ) -> list[dict[str, Any]]:
        """The audit log, newest first, one page (`before_id` is the older form of `cursor`)."""
        request.app.state.edge.flush()  # refusals counted so far are in the answer
        page = _page(query, "audit", int)
        if query.cursor is None and query.before_id is not None:
            page = PageRequest(limit=query.limit, after=query.before_id)
        return _paged(request, response, "audit", _service(request).audit_page(page))


def _docs_routes(router: APIRouter, app: FastAPI) -> None:
    """The API description and its Swagger UI page, without a credential (every API call
    made from the page still needs one: its Authorize button takes the token).

    The page's script and style are served from this server (``DOCS_ASSETS``, the Swagger
    UI build the fastapi-offline package ships): no CDN, so it loads where the server has
    no internet, and nothing else may load into it (the Content-Security-Policy)."""
    anonymous = {"x-bmsfw-roles": [], "x-bmsfw-anonymous": True, "security": []}

    @router.get(f"{API}/openapi.json", include_in_schema=False, openapi_extra=anonymous)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @router.get(f"{API}/docs", include_in_schema=False, openapi_extra=anonymous)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=f"{API}/openapi.json",
            title="bmsfw fleet API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": False},
        )
        page.headers["Content-Security-Policy"] = _DOCS_CSP
        page.headers["X-Content-Type-Options"] = "nosniff"
        return page

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(_swagger_ui_files())), name="docs-assets")


def _metrics_route(router: APIRouter, metrics: FleetMetrics, *, anonymous: bool) -> None:
    """``GET /metrics`` in the Prometheus text format (docs/fleet.md, "Metrics")."""

    def scrape() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if anonymous:
        extra = {"x-bmsfw-roles": [], "x-bmsfw-anonymous": True, "security": []}
        router.add_api_route(
            "/metrics", scrape, methods=["GET"], include_in_schema=False, openapi_extra=extra
        )
        return
    router.add_api_route(
        "/metrics",
        scrape,
        methods=["GET"],
        include_in_schema=False,
        dependencies=[Depends(_Guard(VIEWER))],
        openapi_extra={"x-bmsfw-roles": sorted(VIEWER)},
    )


DOCS_ASSETS = f"{API}/docs/assets"
# Swagger UI starts from one inline script; everything else comes from this origin.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)


def _swagger_ui_files() -> FilePath:
    import fastapi_offline

    return FilePath(fastapi_offline.__file__).parent / "static"


class Health(BaseModel):
    status: str
    schema_revision: str | None = None
    detail: str = ""


def _health_routes(router: APIRouter, engine: Engine) -> None:
    """``/healthz`` and ``/readyz`` for a load balancer: no credential, no side effect
    (the only anonymous routes; they say nothing but up/ready and the schema revision)."""
    head = head_revision()
    reader = read_only_engine(engine)
    anonymous = {"x-bmsfw-roles": [], "x-bmsfw-anonymous": True, "security": []}

    @router.get("/healthz", response_model=Health, openapi_extra=anonymous)
    async def healthz() -> Health:
        """Liveness: the process answers (no database access)."""
        return Health(status="alive")

    @router.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": Health, "description": "database unreachable or not migrated"}},
        openapi_extra=anonymous,
    )
    def readyz() -> Response:
        """Readiness: the database answers and its schema is at this server's revision."""
        try:
            with reader.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError as exc:
            detail = f"database unreachable: {type(exc).__name__}"
            return JSONResponse(Health(status="not ready", detail=detail).model_dump(), 503)
        if current != head:
            health = Health(
                status="not ready",
                schema_revision=current,
                detail=f"schema at {current}, this server needs {head}",
            )
            return JSONResponse(health.model_dump(), 503)
        return JSONResponse(Health(status="ready", schema_revision=current).model_dump())


def load_trust_root(path: FilePath) -> TrustRoot:
    try:
        return TrustRoot(path.read_bytes())
    except OSError as exc:
        raise FleetConfigError(f"cannot read trust root {path}: {exc}") from exc
