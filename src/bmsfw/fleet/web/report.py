"""One update's report on the dashboard, read from its evidence bundle: the steps with
their time and outcome, every preflight check with its measured value and limit, the
failure's error code with the diagnosis and remedy from the troubleshooting catalogue,
and what the person on site was told.

The bundle was verified when its gateway uploaded it (integrity, not authorship), so
everything in it is shown as text, never markup, and a report this version cannot
read is said so instead of failing the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from bmsfw.errors import BmsfwError
from bmsfw.evidence.bundle import verify_bundle
from bmsfw.fleet.errors import FleetNotFoundError
from bmsfw.fleet.protocol import ReportCheck, ReportStep, UpdateSummary
from bmsfw.fleet.web.catalogue import Explanation, explain
from bmsfw.update.report import UpdateReport

if TYPE_CHECKING:
    from bmsfw.fleet.web.app import _Pages

__all__ = ["ReportView", "add_report_routes", "report_view", "summary_view"]


@dataclass(frozen=True)
class ReportView:
    outcome: str
    kind: str
    node: str
    operator: str
    running_version: str
    package_version: str
    steps: tuple[ReportStep, ...]
    preflight: tuple[ReportCheck, ...]
    failed_step: str
    error_code: str
    error_message: str
    explanation: Explanation | None
    warnings: tuple[str, ...]
    notice: str
    problem: str  # why the report could not be read ("" when it could)


def _text(value: Any, limit: int = 2000) -> str:
    return str(value if value is not None else "")[:limit]


def _unreadable(problem: str, notice: str = "") -> ReportView:
    blank = dict.fromkeys(
        ("outcome", "kind", "node", "operator", "running_version", "package_version"), ""
    )
    return ReportView(
        **blank,
        steps=(),
        preflight=(),
        failed_step="",
        error_code="",
        error_message="",
        explanation=None,
        warnings=(),
        notice=notice,
        problem=problem,
    )


def report_view(bundle_bytes: bytes) -> ReportView:
    """What the dashboard shows of the update report in ``bundle_bytes`` (pure)."""
    try:
        bundle = verify_bundle(bundle_bytes)
        notice = bundle.files.get("notice.txt", b"").decode("utf-8", "replace")
        data = json.loads(bundle.files["report.json"])
        UpdateReport.from_dict(data)  # refuses a report this version cannot read
    except (BmsfwError, KeyError, ValueError, TypeError) as exc:
        return _unreadable(f"the report in this bundle cannot be read: {_text(exc, 300)}")
    # Read through the report's JSON form, as the agent sends it with its result.
    return summary_view(
        UpdateSummary.from_report_json(data),
        notice=notice,
        node=_text(data.get("node"), 200),
        operator=_text(data.get("operator"), 200),
    )


def summary_view(
    summary: UpdateSummary, *, notice: str = "", node: str = "", operator: str = ""
) -> ReportView:
    """The view of an update report's typed parts (from a bundle, or as the agent sent
    them with its state report and the server stored them)."""
    code = summary.error_code
    return ReportView(
        outcome=summary.outcome,
        kind=summary.kind,
        node=node,
        operator=operator,
        running_version=summary.running_version,
        package_version=summary.package_version,
        steps=tuple(summary.steps),
        preflight=tuple(summary.preflight),
        failed_step=summary.failed_step,
        error_code=code,
        error_message=summary.error_message,
        explanation=explain(code) if code else None,
        warnings=tuple(summary.warnings),
        notice=notice,
        problem="",
    )


def add_report_routes(web: FastAPI, pages: _Pages) -> None:
    @web.get("/evidence/{evidence_id}")
    def report(request: Request, evidence_id: str) -> Response:
        def build(_principal: Any) -> dict[str, Any]:
            ok = evidence_id.isdigit() and len(evidence_id) < 11 and 0 < int(evidence_id) < 2**31
            if not ok:
                raise FleetNotFoundError(f"no evidence bundle with id {evidence_id[:20]!r}")
            info, data = pages.service.get_evidence(int(evidence_id))
            return {"e": info, "v": report_view(data)}

        # Operator and above, as the bundle's download (it holds the configuration).
        return pages.view(request, "evidence_report.html", build, minimum="operator")
