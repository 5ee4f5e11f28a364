"""The update report: JSON for machines and the audit trail, text for the technician.

A report always answers the four questions of a failed update: which step
failed, what the device runs now, the error code, and what to do (diagnosis
and remedy). The pipeline fills a :class:`ReportDraft` while it runs and hands
out a frozen :class:`UpdateReport` at the end (its outcome an :class:`Outcome`,
its errors :class:`ErrorRecord`); the JSON (format ``bmsfw-update-report/1``)
is the same either way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from bmsfw.errors import BmsfwError, retry_helps_for
from bmsfw.update.errors import ReportUnreadableError
from bmsfw.update.record import write_atomic

__all__ = [
    "REPORT_FORMAT",
    "ErrorRecord",
    "Outcome",
    "ReportDraft",
    "StepRecord",
    "UpdateReport",
    "load_report",
    "render_text",
    "write_report",
]

REPORT_FORMAT = "bmsfw-update-report/1"


class Outcome(StrEnum):
    """How a run ended; the value is what the JSON report and the audit record say."""

    UPDATED = "updated"
    ALREADY_INSTALLED = "already-installed"
    ROLLED_BACK = "rolled-back"
    PAUSED = "paused"  # stopped at a safe point; the same command resumes
    FAILED = "failed"
    REFUSED = "refused"  # nothing written to the BMS


@dataclass(frozen=True)
class StepRecord:
    step: str
    ok: bool
    started_at: float
    duration_s: float
    detail: str = ""


@dataclass(frozen=True)
class ErrorRecord:
    """A :class:`~bmsfw.errors.BmsfwError` as the report keeps it."""

    code: str
    type: str
    message: str
    diagnosis: str
    remedy: str

    @classmethod
    def of(cls, error: BmsfwError) -> ErrorRecord:
        return cls(**error.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorRecord | None:
        """``{}`` (no error) is None; a record lacking a field is refused."""
        if not data:
            return None
        try:
            return cls(**{f.name: str(data[f.name]) for f in dataclasses.fields(cls)})
        except (KeyError, TypeError) as exc:
            raise ReportUnreadableError(f"an error record lacks {exc}") from exc

    @property
    def retry_helps(self) -> bool:
        """Whether running the same command again can help (by the error's code)."""
        return retry_helps_for(self.code)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


_SEQUENCES = ("steps", "preflight", "confirmations", "config_changes", "warnings")
# The JSON type of each report field (str when not named here).
_JSON_SHAPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(_SEQUENCES, list),
    **dict.fromkeys(
        ("device_before", "device_now", "package", "profile", "overrides", "backup"), dict
    ),
    **dict.fromkeys(("transfer", "self_test", "decisions"), dict),
    **dict.fromkeys(("error", "cause", "record_error"), dict),
    **dict.fromkeys(("started_at", "finished_at"), (int, float)),
    "config_restored": bool,
}


def _shape_name(shape: type | tuple[type, ...]) -> str:
    names = {list: "a list", dict: "an object", bool: "true/false", str: "a text"}
    return "a number" if isinstance(shape, tuple) else names.get(shape, shape.__name__)


def _copied(value: Any) -> Any:
    """A draft's dict or list copied (the record must not change with the draft)."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _error_dict(record: ErrorRecord | None) -> dict[str, str]:
    return record.to_dict() if record is not None else {}


@dataclass(frozen=True)
class UpdateReport:
    """Everything one node's update (or rollback) did, as it ended. Read-only."""

    node: str
    kind: Literal["update", "rollback"] = "update"
    outcome: Outcome = Outcome.FAILED
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    operator: str = ""
    device_before: Mapping[str, Any] = field(default_factory=dict)
    device_now: Mapping[str, Any] = field(default_factory=dict)
    running_version: str = ""
    package: Mapping[str, Any] = field(default_factory=dict)
    profile: Mapping[str, Any] = field(default_factory=dict)
    steps: tuple[StepRecord, ...] = ()
    preflight: tuple[Mapping[str, Any], ...] = ()
    overrides: Mapping[str, str] = field(default_factory=dict)
    confirmations: tuple[Mapping[str, Any], ...] = ()
    backup: Mapping[str, Any] = field(default_factory=dict)
    transfer: Mapping[str, Any] = field(default_factory=dict)
    self_test: Mapping[str, Any] = field(default_factory=dict)
    config_changes: tuple[Mapping[str, Any], ...] = ()
    config_restored: bool = False
    warnings: tuple[str, ...] = ()
    failed_step: str = ""
    error: ErrorRecord | None = None
    cause: ErrorRecord | None = None
    audit_hash: str = ""
    report_path: str = ""
    # What the decision core (bmsfw.update.core) decided: "start", "after-boot", "rollback"
    # -> the verdict, and "<name>-reason" -> why.
    decisions: Mapping[str, str] = field(default_factory=dict)
    # The report or audit record could not be written (the outcome above still holds).
    record_error: ErrorRecord | None = None
    # The exception itself, for the CLI's exit code; not serialised.
    exception: BmsfwError | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # an outcome given as its text is checked; sequences are kept as tuples
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        for name in _SEQUENCES:
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def ok(self) -> bool:
        """The run did what was asked (an update installed, a rollback rolled back)."""
        if self.kind == "rollback":
            return self.outcome == Outcome.ROLLED_BACK
        return self.outcome in (Outcome.UPDATED, Outcome.ALREADY_INSTALLED)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "exception"
        }
        data.update(
            outcome=self.outcome.value,
            steps=[asdict(s) for s in self.steps],
            error=_error_dict(self.error),
            cause=_error_dict(self.cause),
            record_error=_error_dict(self.record_error),
            format=REPORT_FORMAT,
            ok=self.ok,
        )
        for name in ("device_before", "device_now", "package", "profile", "overrides"):
            data[name] = dict(data[name])
        for name in ("backup", "transfer", "self_test", "decisions"):
            data[name] = dict(data[name])
        for name in _SEQUENCES[1:]:
            data[name] = list(data[name])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpdateReport:
        if data.get("format") != REPORT_FORMAT:
            raise ReportUnreadableError(f"format is {data.get('format')!r}, not {REPORT_FORMAT}")
        known = {f.name for f in dataclasses.fields(cls) if f.name != "exception"}
        values = {k: v for k, v in data.items() if k in known}
        for name, value in values.items():
            shape = _JSON_SHAPES.get(name, str)
            if not isinstance(value, shape) or (shape is not bool and isinstance(value, bool)):
                raise ReportUnreadableError(
                    f"field {name!r} is {type(value).__name__}, not {_shape_name(shape)}"
                )
        try:
            values["steps"] = tuple(StepRecord(**s) for s in data.get("steps", []))
            for name in ("error", "cause", "record_error"):
                values[name] = ErrorRecord.from_dict(data.get(name) or {})
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ReportUnreadableError(f"report fields do not match: {exc}") from exc


@dataclass
class ReportDraft:
    """The report while the pipeline runs (mutable); :meth:`freeze` gives the record."""

    node: str
    kind: Literal["update", "rollback"] = "update"
    outcome: Outcome = Outcome.FAILED
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
    error: ErrorRecord | None = None
    cause: ErrorRecord | None = None
    audit_hash: str = ""
    decisions: dict[str, str] = field(default_factory=dict)
    record_error: ErrorRecord | None = None
    exception: BmsfwError | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.freeze().ok

    def fail(self, step: str, error: BmsfwError, cause: BaseException | None = None) -> None:
        self.failed_step = step
        self.error = ErrorRecord.of(error)
        self.exception = error
        if isinstance(cause, BmsfwError) and cause is not error:
            self.cause = ErrorRecord.of(cause)

    def freeze(self, *, report_path: str = "") -> UpdateReport:
        """The record as it stands (copies: later changes to the draft do not reach it)."""
        values = {f.name: _copied(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return UpdateReport(**values, report_path=report_path)


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
            f"  error:           {report.error.code}: {report.error.message}",
            f"  diagnosis:       {report.error.diagnosis}",
            f"  remedy:          {report.error.remedy}",
            f"  run it again:    {_retry_text(report.error.code)}",
        ]
        if report.cause:
            lines.append(f"  cause:           {report.cause.code}: {report.cause.message}")
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
        lines.append(f"  RECORD NOT WRITTEN: {report.record_error.message}")
    return "\n".join(lines) + "\n"
