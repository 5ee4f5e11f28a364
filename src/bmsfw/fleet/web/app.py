"""The operator's dashboard: server-rendered pages under ``/ui`` of the fleet server.

Jinja2 templates (autoescaped: serials, release notes and error text are shown as
text, never markup) and one stylesheet and one small script shipped in this package;
nothing is fetched from elsewhere (the Content-Security-Policy says so to the browser).

Sign-in takes an operator API token once and opens a server-side session
(:mod:`.sessions`); every page re-checks the token's role exactly as the API does
(viewer < operator < release_manager < admin; a gateway token cannot sign in). Every
form that changes something carries the session's CSRF token.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from bmsfw.errors import FleetError
from bmsfw.fleet.auth import GATEWAY_ROLE, Principal, hash_token, roles_at_least
from bmsfw.fleet.errors import (
    FleetNotFoundError,
    InvalidCredentialError,
    RoleNotAllowedError,
    http_status_for,
)
from bmsfw.fleet.events import FleetEvents, event_stream_response
from bmsfw.fleet.paging import PageRequest
from bmsfw.fleet.releases import TrustRoot
from bmsfw.fleet.service import FleetService
from bmsfw.fleet.service.approvals import SafetyAction
from bmsfw.fleet.telemetry import TelemetryHistory
from bmsfw.fleet.web.approvals import add_approval_routes, after_action
from bmsfw.fleet.web.backups import add_backup_routes
from bmsfw.fleet.web.chart import CHART_HOURS, device_charts
from bmsfw.fleet.web.create import add_create_routes
from bmsfw.fleet.web.errors import CsrfRefusedError, SessionEndedError
from bmsfw.fleet.web.evidence import add_evidence_routes
from bmsfw.fleet.web.queries import (
    DEFAULT_PAGE_SIZE,
    DEVICE_SORTS,
    MAX_PAGE_SIZE,
    DeviceFilter,
    FleetQueries,
)
from bmsfw.fleet.web.report import add_report_routes
from bmsfw.fleet.web.review import add_review_routes
from bmsfw.fleet.web.sessions import SessionPolicy, SessionStore, WebSession
from bmsfw.fleet.web.uploads import add_upload_routes

__all__ = ["PREFIX", "SESSION_COOKIE", "create_dashboard"]

PREFIX = "/ui"
SESSION_COOKIE = "__Host-bmsfw_session"
LOGIN_COOKIE = "__Host-bmsfw_signin"
_HERE = Path(__file__).parent
_MAX_FORM_FIELDS = 20
_SECURITY_HEADERS = {
    # Only this server's own stylesheet and script; no inline script or style, no frames.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CAMPAIGN_ACTIONS = ("pause", "resume", "cancel", "approve")


class Edge(Protocol):
    """The fleet app's refusal bookkeeping (failed sign-ins are rate limited and audited
    like failed API authentications)."""

    def refuse_if_failing(self, request: Request, token_hash: str | None) -> None: ...

    def refused(self, scope: Scope, status: int, code: str) -> None: ...

    def flush(self) -> int: ...


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC") if d else "—"
    env.filters["num"] = lambda v, fmt="{:.1f}": "—" if v is None else fmt.format(v)
    env.globals["prefix"] = PREFIX
    return env


class _Pages:
    """The dashboard's request handling (one per app)."""

    def __init__(
        self,
        service: FleetService,
        edge: Edge,
        online_window: timedelta,
        policy: SessionPolicy,
        *,
        telemetry: TelemetryHistory,
        events: FleetEvents,
    ) -> None:
        self.service = service
        self.telemetry = telemetry
        self.events = events
        self.edge = edge
        self.queries = FleetQueries(service.sessions, online_window)
        self.sessions = SessionStore(service.sessions, policy)
        self.env = _environment()
        self.prefix = PREFIX

    def now(self) -> datetime:
        return self.service.clock.now()

    # ---- sessions --------------------------------------------------------

    def signed_in(
        self, request: Request, minimum: str = "viewer", *, touch: bool = True
    ) -> tuple[Principal, WebSession]:
        """The session's principal, if it may see this page; refuses otherwise."""
        session_id = request.cookies.get(SESSION_COOKIE, "")
        valid = 0 < len(session_id) <= 100
        session = self.sessions.get(session_id, self.now(), touch=touch) if valid else None
        if session is None:
            raise SessionEndedError("sign in to use the dashboard")
        principal = self.service.cached_principal(
            session.token_hash
        ) or self.service.load_principal(session.token_hash)
        if principal is None or principal.role == GATEWAY_ROLE:
            self.sessions.end(session_id)
            raise SessionEndedError("the credential of this session was revoked or expired")
        if principal.role not in roles_at_least(minimum):
            raise RoleNotAllowedError(
                f"role {principal.role!r} may not use {request.method} {request.url.path}; "
                f"it needs {minimum} or above"
            )
        return principal, session

    @staticmethod
    def form(request: Request, body: bytes) -> dict[str, str]:
        try:
            pairs = parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS
            )
        except (UnicodeDecodeError, ValueError):
            return {}
        return dict(pairs)

    @staticmethod
    def check_csrf(session: WebSession, form: dict[str, str]) -> None:
        if not session.csrf_matches(form.get("csrf", "")):
            raise CsrfRefusedError("the form's CSRF token is missing or wrong; nothing was done")

    # ---- rendering -------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        *,
        principal: Principal | None = None,
        session: WebSession | None = None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(
            principal=principal,
            csrf=session.csrf if session else "",
            path=request.url.path,
            can_operate=principal is not None and principal.role in roles_at_least("operator"),
            # Called by the menu only (full pages), so a fragment costs no count query.
            waiting_approvals=self.service.waiting_approvals,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def view(
        self,
        request: Request,
        template: str,
        build: Callable[[Principal], dict[str, Any]],
        minimum: str = "viewer",
    ) -> HTMLResponse:
        """A page for a signed-in ``minimum`` role or above: ``build`` makes its context."""
        principal, session = self.signed_in(request, minimum)
        return self.render(
            request, template, principal=principal, session=session, **build(principal)
        )

    def error_page(self, request: Request, exc: FleetError) -> Response:
        if isinstance(exc, SessionEndedError):
            if request.headers.get("x-bmsfw-fragment"):
                return Response(status_code=401)  # the page's script reloads into sign-in
            target = f"{PREFIX}/login"
            if request.method == "GET" and request.url.path != target:
                target += "?" + urlencode({"next": request.url.path})
            return RedirectResponse(target, status_code=303)
        status = http_status_for(exc)
        if status in (401, 403, 429):
            self.edge.refused(request.scope, status, exc.code)
        return self.render(request, "error.html", error=exc, status=status)


def _page_number(request: Request, name: str = "page") -> int:
    raw = request.query_params.get(name, "1")
    return int(raw) if raw.isdigit() and 0 < len(raw) < 7 else 1


def _page_size(request: Request) -> int:
    raw = request.query_params.get("size", "")
    size = int(raw) if raw.isdigit() and len(raw) < 5 else DEFAULT_PAGE_SIZE
    return max(1, min(size, MAX_PAGE_SIZE))


def _chart_hours(request: Request) -> int:
    raw = request.query_params.get("hours", "")
    return int(raw) if raw.isdigit() and int(raw) in CHART_HOURS else CHART_HOURS[0]


def _safe_next(value: str) -> str:
    """Only a path of this dashboard (never another site) after signing in."""
    ok = value.startswith(PREFIX + "/") and "//" not in value and "\\" not in value
    return value if ok and len(value) < 500 else PREFIX + "/"


def _set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )


def create_dashboard(
    service: FleetService,
    edge: Edge,
    *,
    online_after_s: float,
    policy: SessionPolicy | None = None,
    telemetry: TelemetryHistory | None = None,
    events: FleetEvents | None = None,
    trust: TrustRoot | None = None,
) -> FastAPI:
    """The dashboard app, to mount at :data:`PREFIX` of the fleet app.

    ``online_after_s``: a device that checked in less than this long ago is online.
    """
    policy = policy or SessionPolicy()
    telemetry = telemetry or TelemetryHistory(service.engine)
    events = events or FleetEvents(service.engine, service.clock)
    pages = _Pages(
        service, edge, timedelta(seconds=online_after_s), policy, telemetry=telemetry, events=events
    )
    web = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    web.state.pages = pages
    web.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")

    @web.exception_handler(FleetError)
    async def _refused(request: Request, exc: FleetError) -> Response:
        return pages.error_page(request, exc)

    @web.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    _sign_in_routes(web, pages)
    _fleet_routes(web, pages)
    _campaign_routes(web, pages)
    _release_page(web, pages)
    add_review_routes(web, pages)
    add_approval_routes(web, pages)
    add_backup_routes(web, pages)
    add_evidence_routes(web, pages)
    add_report_routes(web, pages)  # /evidence/{id} after /evidence/{id}/download
    if trust is not None:  # the server's vendor root: releases can be uploaded here
        add_upload_routes(web, pages, trust)
    return web


def _sign_in_routes(web: FastAPI, pages: _Pages) -> None:
    @web.get("/login")
    def login_form(request: Request) -> Response:
        nonce = secrets.token_urlsafe(32)
        response = pages.render(
            request,
            "login.html",
            login_csrf=nonce,
            next=_safe_next(request.query_params.get("next", "")),
            problem=None,
        )
        _set_cookie(response, LOGIN_COOKIE, nonce, max_age=1800)
        return response

    @web.post("/login")
    async def login(request: Request) -> Response:
        form = pages.form(request, await request.body())
        # Login CSRF: the form must come from a sign-in page this browser was given.
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not secrets.compare_digest(cookie, form.get("csrf", "")):
            raise CsrfRefusedError("the sign-in form's CSRF token is missing or wrong")
        pages.edge.refuse_if_failing(request, None)
        token = form.get("token", "").strip()
        token_hash = hash_token(token)
        principal = await _run(pages.service.load_principal, token_hash) if token else None
        if principal is None:
            raise InvalidCredentialError("the token is unknown, revoked or expired")
        if principal.role == GATEWAY_ROLE:
            raise RoleNotAllowedError(
                "a gateway credential cannot sign in to the dashboard; use an operator token"
            )
        session_id, _ = await _run(pages.sessions.create, token_hash, pages.now())
        response = RedirectResponse(_safe_next(form.get("next", "")), status_code=303)
        _set_cookie(response, SESSION_COOKIE, session_id, max_age=None)
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True)
        return response

    @web.post("/logout")
    async def logout(request: Request) -> Response:
        form = pages.form(request, await request.body())
        _principal, session = await _run(pages.signed_in, request)
        pages.check_csrf(session, form)
        await _run(pages.sessions.end, request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True)
        return response


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    return await run_in_threadpool(fn, *args)


def _device_filter(request: Request) -> DeviceFilter:
    q = request.query_params
    sort = q.get("sort", "serial")
    online = q.get("online", "")
    return DeviceFilter(
        model=q.get("model", "")[:120],
        version=q.get("version", "")[:64],
        site=q.get("site", "")[:120],
        flagged=q.get("flagged", "") == "1",
        online=online if online in ("yes", "no") else "",
        sort=sort if sort in DEVICE_SORTS else "serial",
        descending=q.get("desc", "") == "1",
    )


def _fleet_routes(web: FastAPI, pages: _Pages) -> None:
    @web.get("/")
    def overview(request: Request) -> Response:
        return pages.view(
            request,
            "overview.html",
            lambda _p: {
                "o": pages.queries.overview(pages.now()),
                "o_waiting": pages.service.approval_page("waiting", PageRequest(limit=20)).items,
            },
        )

    @web.get("/events")
    async def events(request: Request) -> Response:
        """The fleet event stream for this session's pages (the script refreshes the live
        parts when something happens); ends with the session."""
        await _run(pages.signed_in, request)

        def allowed() -> bool:
            try:
                pages.signed_in(request, touch=False)
            except FleetError:
                return False
            return True

        return await event_stream_response(request, pages.events, allowed)

    @web.get("/overview/live")
    def overview_live(request: Request) -> Response:
        return pages.view(
            request,
            "_campaign_bars.html",
            lambda _p: {"campaigns": pages.queries.overview(pages.now()).campaigns},
        )

    @web.get("/devices")
    def devices(request: Request) -> Response:
        f = _device_filter(request)

        def build(_principal: Principal) -> dict[str, Any]:
            size = _page_size(request)
            result = pages.queries.devices(f, _page_number(request), size, pages.now())
            keep = {
                "model": f.model,
                "version": f.version,
                "site": f.site,
                "flagged": "1" if f.flagged else "",
                "online": f.online,
                "sort": f.sort,
                "desc": "1" if f.descending else "",
                "size": str(result.size),
            }
            return {
                "f": f,
                "result": result,
                "sorts": list(DEVICE_SORTS),
                "query": lambda **extra: urlencode(
                    {k: v for k, v in {**keep, **extra}.items() if v}
                ),
                "max_page_size": MAX_PAGE_SIZE,
            }

        return pages.view(request, "devices.html", build)

    @web.get("/devices/{serial}")
    def device(request: Request, serial: str) -> Response:
        def build(principal: Principal) -> dict[str, Any]:
            if not 0 < len(serial) <= 120:
                raise FleetNotFoundError("no device with such a serial")
            info = pages.service.get_device(serial)
            operator = principal.role in roles_at_least("operator")
            last_seen = datetime.fromisoformat(info["last_seen_at"])
            hours = _chart_hours(request)
            return {
                "charts": device_charts(pages.telemetry, serial, pages.now(), hours),
                "hours": hours,
                "chart_hours": CHART_HOURS,
                "d": info,
                "online": pages.queries.is_online(last_seen, pages.now()),
                "last_seen": last_seen,
                "history": pages.queries.update_history(serial),
                "backups": pages.service.list_backups(serial) if operator else None,
                "evidence": pages.service.list_evidence(serial) if operator else None,
            }

        return pages.view(request, "device.html", build)

    @web.get("/releases")
    def releases(request: Request) -> Response:
        return pages.view(
            request,
            "releases.html",
            lambda p: {
                "releases": pages.service.list_releases(),
                "can_upload": p.role in roles_at_least("release_manager"),
            },
        )


def _release_page(web: FastAPI, pages: _Pages) -> None:
    @web.get("/releases/{release_id}")
    def release(request: Request, release_id: str) -> Response:
        def build(principal: Principal) -> dict[str, Any]:
            number = _id(release_id, "release")
            return {
                "can_deactivate": principal.role in roles_at_least("release_manager"),
                "r": pages.service.get_release(number),
                "campaigns": pages.queries.release_campaigns(number),
            }

        return pages.view(request, "release.html", build)

    @web.post("/releases/{release_id}/deactivate")
    async def deactivate(request: Request, release_id: str) -> Response:
        """Pull a release (release manager and above, as on the API); its running
        campaigns stop or finish as the form says. With four eyes on, it waits."""
        form = pages.form(request, await request.body())
        principal, session = await _run(pages.signed_in, request, "release_manager")
        pages.check_csrf(session, form)
        number = _id(release_id, "release")
        running = "finish" if form.get("running") == "finish" else "stop"
        reason = form.get("reason", "")[:500]
        action = SafetyAction("release.deactivate", str(number), reason, running)
        outcome = await _run(pages.service.submit, principal, action)
        return after_action(pages, outcome, f"{PREFIX}/releases/{number}")


def _campaign_routes(web: FastAPI, pages: _Pages) -> None:
    @web.get("/campaigns")
    def campaigns(request: Request) -> Response:
        return pages.view(
            request, "campaigns.html", lambda _p: {"campaigns": pages.queries.campaigns()}
        )

    @web.get("/campaigns/live")
    def campaigns_live(request: Request) -> Response:
        return pages.view(
            request, "_campaign_bars.html", lambda _p: {"campaigns": pages.queries.campaigns()}
        )

    add_create_routes(web, pages)  # /campaigns/new before /campaigns/{campaign_id}

    def campaign_view(template: str) -> Callable[[Request, str], Response]:
        """The campaign page, or (``_campaign_live.html``) the part of it that refreshes."""

        def handler(request: Request, campaign_id: str) -> Response:
            state = request.query_params.get("state", "")[:16]
            page = _page_number(request)

            def build(_principal: Principal) -> dict[str, Any]:
                number = _id(campaign_id)
                progress = pages.queries.campaign_progress(number)
                if progress is None:
                    raise FleetNotFoundError(f"no campaign with id {number}")
                return {
                    "c": pages.service.get_campaign(number),
                    "p": progress,
                    "devices": pages.queries.campaign_devices(
                        number, state, page, _page_size(request)
                    ),
                    "state": state,
                    "query": lambda **extra: urlencode(
                        {k: v for k, v in {"state": state, "page": str(page), **extra}.items() if v}
                    ),
                }

            return pages.view(request, template, build)

        return handler

    web.add_api_route("/campaigns/{campaign_id}", campaign_view("campaign.html"), methods=["GET"])
    web.add_api_route(
        "/campaigns/{campaign_id}/live", campaign_view("_campaign_live.html"), methods=["GET"]
    )

    @web.post("/campaigns/{campaign_id}/{action}")
    async def campaign_action(request: Request, campaign_id: str, action: str) -> Response:
        form = pages.form(request, await request.body())
        principal, session = await _run(pages.signed_in, request, "operator")
        pages.check_csrf(session, form)
        number = _id(campaign_id)
        if action not in _CAMPAIGN_ACTIONS:
            raise FleetNotFoundError(f"no campaign action {action[:20]!r}")
        reason = form.get("reason", "")[:500] or f"{action}d from the dashboard"
        service = pages.service
        if action == "resume":
            outcome = await _run(service.resume_or_request, principal, number)
            return after_action(pages, outcome, f"{PREFIX}/campaigns/{number}")
        if action == "approve":
            await _run(service.approve, principal, number)
        else:
            method = service.pause if action == "pause" else service.cancel
            await _run(method, principal, number, reason)
        return RedirectResponse(f"{PREFIX}/campaigns/{number}", status_code=303)


def _id(text: str, what: str = "campaign") -> int:
    """An id from the path; anything but 1..2^31-1 is simply not found."""
    if not (text.isdigit() and len(text) < 11 and 0 < int(text) < 2**31):
        raise FleetNotFoundError(f"no {what} with id {text[:20]!r}")
    return int(text)
