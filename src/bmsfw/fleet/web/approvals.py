"""Dashboard page for four eyes: what waits for a second person, approve or reject it
(the same service calls and rules as ``/api/v1/approvals``; docs/fleet.md, "Four eyes")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from bmsfw.fleet.auth import OPERATOR_ROLES, Principal, roles_at_least
from bmsfw.fleet.errors import FleetNotFoundError
from bmsfw.fleet.paging import PageRequest
from bmsfw.fleet.service.approvals import Outcome

if TYPE_CHECKING:
    from bmsfw.fleet.web.app import _Pages

__all__ = ["add_approval_routes", "after_action"]

_DECIDED_SHOWN = 20


def after_action(pages: _Pages, outcome: Outcome, done: str) -> RedirectResponse:
    """Where a form that asked for a safety-relevant action goes next: ``done`` when it
    was done, the approvals page when it waits for a second person."""
    target = f"{pages.prefix}/approvals" if outcome.waiting is not None else done
    return RedirectResponse(target, status_code=303)


def _approval_id(text: str) -> int:
    if not (text.isdigit() and len(text) < 11 and 0 < int(text) < 2**31):
        raise FleetNotFoundError(f"no approval request with id {text[:20]!r}")
    return int(text)


def add_approval_routes(web: FastAPI, pages: _Pages) -> None:
    @web.get("/approvals")
    def approvals(request: Request) -> Response:
        def build(_principal: Principal) -> dict[str, Any]:
            waiting = pages.service.approval_page("waiting", PageRequest(limit=200)).items
            return {
                "waiting": waiting,
                "decided": pages.service.decided_approvals(_DECIDED_SHOWN),
                "approver_roles": {r: roles_at_least(r) for r in OPERATOR_ROLES},
            }

        return pages.view(request, "approvals.html", build)

    @web.post("/approvals/{approval_id}/{verb}")
    async def decide(request: Request, approval_id: str, verb: str) -> Response:
        """Approve or reject as on the API (operator and above; the request's own role
        and the not-yourself rule are the service's)."""
        form = pages.form(request, await request.body())
        principal, session = await run_in_threadpool(pages.signed_in, request, "operator")
        pages.check_csrf(session, form)
        number = _approval_id(approval_id)
        if verb == "approve":
            await run_in_threadpool(pages.service.approve_request, principal, number)
        elif verb == "reject":
            note = form.get("note", "")[:2000]
            await run_in_threadpool(pages.service.reject_request, principal, number, note)
        else:
            raise FleetNotFoundError(f"no approval action {verb[:20]!r}")
        return RedirectResponse(f"{pages.prefix}/approvals", status_code=303)
