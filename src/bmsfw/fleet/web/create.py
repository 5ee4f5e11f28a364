"""Creating a campaign from the dashboard (operator and above).

The form asks for what an operator decides: the release, which devices (models,
sites, tags, a version range; a reason makes it a downgrade campaign), a canary size,
then the cumulative percentages of the later phases, the soak time and the thresholds.
It is turned into the API's :class:`~bmsfw.fleet.schemas.CampaignSpec` and validated
exactly as a ``POST /api/v1/campaigns`` body; the service creates the campaign
(safety-critical releases are refused there, BMSFW-E606, as on the API).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from bmsfw.errors import FleetError
from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import InvalidCampaignSpecError
from bmsfw.fleet.schemas import CampaignSpec

if TYPE_CHECKING:
    from bmsfw.fleet.web.app import _Pages

__all__ = ["add_create_routes", "spec_from_form"]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _number(form: dict[str, str], name: str, default: str) -> float:
    text = form.get(name, "").strip() or default
    try:
        return float(text)
    except ValueError:
        raise InvalidCampaignSpecError(f"{name}: {text[:40]!r} is not a number") from None


def spec_from_form(form: dict[str, str]) -> CampaignSpec:
    """The campaign the form describes; refuses what the API would refuse (E609)."""
    soak_s = _number(form, "soak_s", "3600")
    success = _number(form, "success_pct", "95")
    phases: list[dict[str, Any]] = []
    canary = int(_number(form, "canary", "5"))
    if canary > 0:
        phases.append({"name": "canary", "devices": canary})
    for text in _names(form.get("percents", "")):
        try:
            percent = float(text.rstrip("%"))
        except ValueError:
            raise InvalidCampaignSpecError(f"phase {text[:20]!r} is not a percentage") from None
        phases.append({"name": f"{percent:g}%", "percent": percent})
    for phase in phases:
        phase.update(soak_s=soak_s, success_threshold_pct=success)
    if phases:
        phases[-1]["soak_s"] = 0  # nothing follows the last phase
    try:
        return CampaignSpec.model_validate(
            {
                "name": form.get("name", "").strip(),
                "release_id": int(_number(form, "release_id", "0")),
                "phases": phases,
                "error_threshold_pct": _number(form, "error_threshold_pct", "10"),
                "selector": {
                    "models": _names(form.get("models", "")),
                    "sites": _names(form.get("sites", "")),
                    "tags": _names(form.get("tags", "")),
                    "version_range": form.get("version_range", "").strip(),
                    # Filled in: a downgrade campaign (packs on a higher version are
                    # targets too; it waits for a release manager's approval).
                    "downgrade_reason": " ".join(form.get("downgrade_reason", "").split()),
                },
                # A checkbox: present ("on") when ticked, absent otherwise.
                "dynamic": bool(form.get("dynamic")),
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "campaign"
        raise InvalidCampaignSpecError(f"{where}: {first['msg']}"[:300]) from None


_FORM_DEFAULTS = {"canary": "5", "percents": "10, 50, 100"}  # as campaign_new.html fills it
_PREVIEW_FIELDS = frozenset(
    {
        "release_id",
        "models",
        "sites",
        "tags",
        "version_range",
        "canary",
        "percents",
        "dynamic",
        "downgrade_reason",
    }
)


def _preview(pages: _Pages, form: dict[str, str]) -> dict[str, Any]:
    """``preview`` (targets, sites, offline) or ``preview_problem`` for the form."""
    try:
        spec = spec_from_form({**form, "name": "preview"})
        return {"preview": pages.service.preview_campaign(spec), "preview_problem": None}
    except FleetError as exc:
        return {"preview": None, "preview_problem": exc}


def add_create_routes(web: FastAPI, pages: _Pages) -> None:
    """Register before ``/campaigns/{campaign_id}`` (``new`` is not an id)."""

    @web.get("/campaigns/new")
    def new_campaign(request: Request) -> Response:
        def build(_principal: Principal) -> dict[str, Any]:
            releases = [
                r
                for r in pages.service.list_releases()
                if r["ota_allowed"] and not r["deactivated_at"]
            ][::-1]
            form = {"release_id": str(releases[0]["id"]), **_FORM_DEFAULTS} if releases else {}
            return {"releases": releases, **_preview(pages, form)}

        return pages.view(request, "campaign_new.html", build, minimum="operator")

    @web.get("/campaigns/preview")
    def preview(request: Request) -> Response:
        """The live preview of the form's selector (a fragment the script fetches)."""
        form = {k: v[:500] for k, v in request.query_params.items() if k in _PREVIEW_FIELDS}
        return pages.view(
            request, "_campaign_preview.html", lambda _p: _preview(pages, form), "operator"
        )

    @web.post("/campaigns/new")
    async def create(request: Request) -> Response:
        form = pages.form(request, await request.body())
        principal, session = await run_in_threadpool(pages.signed_in, request, "operator")
        pages.check_csrf(session, form)
        spec = spec_from_form(form)
        made = await run_in_threadpool(pages.service.create_campaign, principal, spec)
        return RedirectResponse(f"{pages.prefix}/campaigns/{made['id']}", status_code=303)
