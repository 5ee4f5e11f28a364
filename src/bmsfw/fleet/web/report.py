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
from bmsfw.fleet.web.catalogue import Explanation, explain
from bmsfw.update.report import UpdateReport

if TYPE_CHECKING:
    from bmsfw.fleet.web.app import _Pages

__all__ = ["PreflightRow", "ReportView", "StepRow", "add_report_routes", "report_view"]


@dataclass(frozen=True)
class StepRow:
    step: str
    ok: bool
    duration_s: float
    detail: str


@dataclass(frozen=True)
class PreflightRow:
    name: str
    measured: str
    limit: str
    passed: bool
    safety: bool
    detail: str
    overridden: bool


@dataclass(frozen=True)
class ReportView:
    outcome: str
    kind: str
    node: str
    operator: str
    running_version: str
    package_version: str
    steps: tuple[StepRow, ...]
    preflight: tuple[PreflightRow, ...]
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
        report = UpdateReport.from_dict(json.loads(bundle.files["report.json"]))
    except (BmsfwError, KeyError, ValueError, TypeError) as exc:
        return _unreadable(f"the report in this bundle cannot be read: {_text(exc, 300)}")
    checks = []
    for c in report.preflight:  # the record's shape is checked; each entry's is not
        if isinstance(c, dict):
            checks.append(
                PreflightRow(
                    name=_text(c.get("name")),
                    measured=_text(c.get("measured")),
                    limit=_text(c.get("limit")),
                    passed=c.get("passed") is True,
                    safety=c.get("safety") is True,
                    detail=_text(c.get("detail")),
                    overridden=c.get("overridden") is True,
                )
            )
    code = _text(report.error.code if report.error else "", 16)
    package = report.package
    return ReportView(
        outcome=_text(report.outcome, 32),
        kind=_text(report.kind, 16),
        node=_text(report.node, 200),
        operator=_text(report.operator, 200),
        running_version=_text(report.running_version, 64),
        package_version=_text(package.get("version"), 64),
        steps=tuple(
            StepRow(
                _text(s.step, 64),
                s.ok is True,
                float(s.duration_s) if isinstance(s.duration_s, int | float) else 0.0,
                _text(s.detail),
            )
            for s in report.steps
        ),
        preflight=tuple(checks),
        failed_step=_text(report.failed_step, 64),
        error_code=code,
        error_message=_text(report.error.message if report.error else ""),
        explanation=explain(code) if code else None,
        warnings=tuple(_text(w) for w in report.warnings if isinstance(w, str)),
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
