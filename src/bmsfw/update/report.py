"""The update report: JSON for machines and the audit trail, text for the technician.

A report always answers the four questions of a failed update: which step
failed, what the device runs now, the error code, and what to do (diagnosis
and remedy). It is built while the pipeline runs (:class:`ReportBuilder`) and
frozen at the end (:class:`UpdateReport`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bmsfw.errors import BmsfwError, retry_helps_for
from bmsfw.update.errors import ReportUnreadableError
from bmsfw.update.record import write_atomic

__all__ = [
    "REPORT_FORMAT",
    "Outcome",
    "StepRecord",
    "UpdateReport",
    "load_report",
    "render_text",
    "write_report",
]

REPORT_FORMAT = "bmsfw-update-report/1"
Outcome = Literal["updated", "already-installed", "rolled-back", "paused", "failed", "refused"]


@dataclass(frozen=True)
class StepRecord:
    step: str
    ok: bool
    started_at: float
    duration_s: float
    detail: str = ""


@dataclass
class UpdateReport:
    """Everything one node's update did. Mutable while the pipeline runs."""

    node: str
    kind: Literal["update", "rollback"] = "update"
    outcome: Outcome = "failed"
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    operator: str = ""
    device_before: dict[str, Any] = field(default_factory=dict)
    device_now: dict[str, Any] = field(default_factory=dict)
    running_version: str = ""
    package: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    preflight: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)
    confirmations: list[dict[str, Any]] = field(default_factory=list)
    backup: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    self_test: dict[str, Any] = field(default_factory=dict)
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    config_restored: bool = False
    warnings: list[str] = field(default_factory=list)
    failed_step: str = ""
    error: dict[str, str] = field(default_factory=dict)
    cause: dict[str, str] = field(default_factory=dict)
    audit_hash: str = ""
    report_path: str = ""
    # What the decision core (bmsfw.update.core) decided: "start", "after-boot", "rollback"
    # -> the verdict, and "<name>-reason" -> why.
    decisions: dict[str, str] = field(default_factory=dict)
    # The report or audit record could not be written (the outcome above still holds).
    record_error: dict[str, str] = field(default_factory=dict)
    # The exception itself, for the CLI's exit code; not serialised.
    exception: BmsfwError | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """The run did what was asked (an update installed, a rollback rolled back)."""
        if self.kind == "rollback":
            return self.outcome == "rolled-back"
        return self.outcome in ("updated", "already-installed")

    def fail(self, step: str, error: BmsfwError, cause: BaseException | None = None) -> None:
        self.failed_step = step
        self.error = error.to_dict()
        self.exception = error
        if isinstance(cause, BmsfwError) and cause is not error:
            self.cause = cause.to_dict()

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "exception"}
        data["steps"] = [asdict(s) for s in self.steps]
        data["format"] = REPORT_FORMAT
        data["ok"] = self.ok
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpdateReport:
        if data.get("format") != REPORT_FORMAT:
            raise ReportUnreadableError(f"format is {data.get('format')!r}, not {REPORT_FORMAT}")
        known = {f for f in cls.__dataclass_fields__ if f != "exception"}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["steps"] = [StepRecord(**s) for s in data.get("steps", [])]
            return cls(**values)
        except TypeError as exc:
            raise ReportUnreadableError(f"report fields do not match: {exc}") from exc


def write_report(report: UpdateReport, directory: str | Path) -> Path:
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(report.started_at))
    serial = str(report.device_before.get("serial", "unknown"))
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{serial}_{stamp}")
    path = folder / f"{report.kind}_{safe}.json"
    write_atomic(path, report.to_json())
    return path


def load_report(path: str | Path) -> UpdateReport:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportUnreadableError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise ReportUnreadableError(f"{path} is not a JSON text: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportUnreadableError(f"{path} is not a JSON object")
    return UpdateReport.from_dict(data)


_HEADLINE: dict[str, str] = {
    "updated": "UPDATED",
    "already-installed": "ALREADY INSTALLED",
    "rolled-back": "FAILED - ROLLED BACK to the previous firmware",
    "paused": "PAUSED - resumable",
    "failed": "FAILED",
    "refused": "NOT STARTED - nothing written",
}


def _retry_text(code: str) -> str:
    if retry_helps_for(code):
        return "yes - the same command continues from what the BMS holds"
    return "not until the cause above is fixed"


def _headline(report: UpdateReport) -> str:
    if report.kind == "rollback":
        return {
            "rolled-back": "ROLLED BACK to the confirmed firmware",
            "refused": "NOTHING CHANGED",
        }.get(report.outcome, report.outcome.upper())
    return _HEADLINE.get(report.outcome, report.outcome)


def _lines_for_checks(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for c in checks:
        verdict = "pass" if c["passed"] else ("OVERRIDDEN" if c.get("overridden") else "FAIL")
        reason = f" (reason: {c['override_reason']})" if c.get("overridden") else ""
        lines.append(
            f"    {verdict:<10} {c['name']:<17} {c['measured']}  [limit {c['limit']}]{reason}"
        )
    return lines


def render_text(report: UpdateReport) -> str:
    """The human-readable report (plain text; the CLI adds colour on a terminal)."""
    dev = report.device_before
    pkg = report.package
    lines = [
        f"bmsfw {report.kind} report - {report.node}",
        f"  result:          {_headline(report)}",
        f"  device:          {dev.get('model', '?')} rev {dev.get('hw_revision', '?')} "
        f"serial {dev.get('serial', '?')}",
        f"  firmware before: {dev.get('app_version', '?')}",
        f"  package:         {pkg.get('product', '?')} {pkg.get('version', '?')} "
        f"(security counter {pkg.get('security_counter', '?')})",
        f"  device runs now: {report.running_version or 'unknown'}",
    ]
    for name in ("start", "after-boot", "rollback"):
        if name in report.decisions:
            why = report.decisions.get(f"{name}-reason", "")
            lines.append(
                f"  decision:        {name}: {report.decisions[name]}"
                + (f" ({why})" if why else "")
            )
    if pkg.get("payload_reason"):
        lines.append(f"  sent:            {pkg['payload_reason']}")
    if report.operator:
        lines.append(f"  operator:        {report.operator}")
    if report.error:
        lines += [
            f"  failed step:     {report.failed_step}",
            f"  error:           {report.error['code']}: {report.error['message']}",
            f"  diagnosis:       {report.error['diagnosis']}",
            f"  remedy:          {report.error['remedy']}",
            f"  run it again:    {_retry_text(report.error['code'])}",
        ]
        if report.cause:
            lines.append(f"  cause:           {report.cause['code']}: {report.cause['message']}")
    if report.steps:
        lines.append("  steps:")
        for s in report.steps:
            mark = "ok  " if s.ok else "FAIL"
            detail = f"  {s.detail}" if s.detail else ""
            lines.append(f"    {mark} {s.step:<15} {s.duration_s:6.2f} s{detail}")
    if report.preflight:
        lines.append("  preflight:")
        lines += _lines_for_checks(report.preflight)
    if report.confirmations:
        lines.append("  confirmations:")
        lines += [f"    {c['how']:<11} {c['text']}" for c in report.confirmations]
    if report.backup:
        lines.append(f"  backup:          {report.backup.get('path')} (read back ok)")
    if report.transfer:
        t = report.transfer
        resumed = f", resumed at {t['resumed_from']}" if t.get("resumed_from") else ""
        encoding = t.get("encoding", "raw")
        stored = (
            f" {encoding} (image {t.get('image_bytes', '?')} bytes)" if encoding != "raw" else ""
        )
        lines.append(
            f"  transfer:        {t.get('offset', 0)}/{t.get('total', 0)} bytes{stored}"
            f" in {t.get('duration_s', 0):.2f} s{resumed}"
        )
    if report.self_test:
        st = report.self_test
        lines.append(f"  self-test:       {'passed' if st.get('passed') else 'FAILED'}")
        for check in st.get("checks", []):
            mark = "pass" if check["passed"] else "FAIL"
            lines.append(
                f"    {mark:<10} {check['name']:<17} {check.get('value', '')}"
                f"  [limit {check.get('limit', '')}] {check.get('detail', '')}".rstrip()
            )
    if report.config_changes:
        verb = "restored" if report.config_restored else "CHANGED"
        lines.append(f"  configuration:   {len(report.config_changes)} value(s) {verb}:")
        lines += [
            f"    {c['path']}: {c['before']!r} -> {c['after']!r}" for c in report.config_changes
        ]
    elif any(s.step == "config-compare" and s.ok for s in report.steps):
        lines.append("  configuration:   unchanged (compared with the backup)")
    for warning in report.warnings:
        lines.append(f"  warning:         {warning}")
    if report.audit_hash:
        lines.append(f"  audit record:    {report.audit_hash[:16]}…")
    if report.record_error:
        lines.append(f"  RECORD NOT WRITTEN: {report.record_error['message']}")
    return "\n".join(lines) + "\n"
