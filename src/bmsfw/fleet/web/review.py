"""Dashboard pages for review: device flags (acknowledge: operator and above), the audit
log and the access review (admin only, as on the API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from bmsfw.fleet.audit_chain import seal_audit_log, verify_chain
from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import FleetNotFoundError
from bmsfw.fleet.service.approvals import SafetyAction
from bmsfw.fleet.web.approvals import after_action

if TYPE_CHECKING:
    from bmsfw.fleet.web.app import _Pages

__all__ = ["AUDIT_PAGE_SIZE", "add_review_routes"]

AUDIT_PAGE_SIZE = 50


def _positive_int(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 11 and 0 < int(text) < 2**31 else None


def add_review_routes(web: FastAPI, pages: _Pages) -> None:

    @web.get("/flags")
    def flags(request: Request) -> Response:
        everything = request.query_params.get("all", "") == "1"
        page = _positive_int(request.query_params.get("page", "")) or 1

        def build(_principal: Principal) -> dict[str, Any]:
            result = pages.queries.flags(everything, page, 25)
            keep = {"all": "1"} if everything else {}
            return {
                "result": result,
                "everything": everything,
                "query": lambda **extra: urlencode({**keep, **extra}),
            }

        return pages.view(request, "flags.html", build)

    @web.post("/flags/{flag_id}/acknowledge")
    async def acknowledge(request: Request, flag_id: str) -> Response:
        form = pages.form(request, await request.body())
        principal, session = await run_in_threadpool(pages.signed_in, request, "operator")
        pages.check_csrf(session, form)
        number = _positive_int(flag_id)
        if number is None:
            raise FleetNotFoundError(f"no flag with id {flag_id[:20]!r}")
        note = form.get("note", "")[:500]
        await run_in_threadpool(pages.service.acknowledge_flag, principal, number, note)
        return RedirectResponse(f"{pages.prefix}/flags", status_code=303)

    @web.get("/audit")
    def audit(request: Request) -> Response:
        before = _positive_int(request.query_params.get("before", ""))
        action = request.query_params.get("action", "")[:64]

        def build(_principal: Principal) -> dict[str, Any]:
            pages.edge.flush()  # the refusals counted so far are in the log
            seal_audit_log(pages.service.engine)  # then everything written so far is sealed
            chain = verify_chain(pages.service.engine)
            entries = pages.service.audit_log(AUDIT_PAGE_SIZE, before)
            older = entries[-1]["id"] if len(entries) == AUDIT_PAGE_SIZE else None
            shown = [e for e in entries if not action or e["action"].startswith(action)]
            return {"entries": shown, "older": older, "action": action, "chain": chain}

        return pages.view(request, "audit.html", build, minimum="admin")

    @web.get("/access")
    def access(request: Request) -> Response:
        def build(_principal: Principal) -> dict[str, Any]:
            pages.edge.flush()
            return {"credentials": pages.service.access_review()}

        return pages.view(request, "access.html", build, minimum="admin")

    @web.post("/access/{credential_id}/revoke")
    async def revoke(request: Request, credential_id: str) -> Response:
        """Revoke a token (admin, as on the API): refused everywhere from now on (other
        server processes within their credential cache's TTL), audited. With four eyes
        on, it waits for a second admin (the approvals page)."""
        form = pages.form(request, await request.body())
        principal, session = await run_in_threadpool(pages.signed_in, request, "admin")
        pages.check_csrf(session, form)
        ok = credential_id.isdigit() and len(credential_id) < 11 and 0 < int(credential_id) < 2**31
        if not ok:
            raise FleetNotFoundError(f"no credential with id {credential_id[:20]!r}")
        action = SafetyAction("token.revoke", str(int(credential_id)))
        outcome = await run_in_threadpool(pages.service.submit, principal, action)
        return after_action(pages, outcome, f"{pages.prefix}/access")
