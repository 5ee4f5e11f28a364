"""The update report: JSON for machines and the audit trail, text for the technician.

A report always answers the four questions of a failed update: which step
failed, what the device runs now, the error code, and what to do (diagnosis
and remedy). The pipeline records into a :class:`ReportDraft` (the frozen record
so far, replaced with each thing recorded) while it runs and hands out the frozen
:class:`UpdateReport` at the end (its outcome an :class:`Outcome`, its errors
:class:`ErrorRecord`, its parts typed frozen records: :class:`PackageRecord`,
the preflight's :class:`~bmsfw.update.preflight.CheckResult` rows, :class:`TransferRecord`,
:class:`SelfTestRecord`, :class:`DecisionsRecord`); the JSON (format
``bmsfw-update-report/1``) is the same either way. A part leaves out what was not
recorded (a ``None`` field), so the JSON keeps the shape the earlier dict-based report
wrote, and those files load as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from bmsfw.errors import BmsfwError, retry_helps_for
from bmsfw.protocol.session import BootStatus, DeviceIdentity, SelfTestCheck
from bmsfw.update.backup import ConfigChange
from bmsfw.update.errors import ReportUnreadableError
from bmsfw.update.preflight import CheckResult
from bmsfw.update.record import write_atomic

__all__ = [
    "REPORT_FORMAT",
    "BackupRecord",
    "ConfirmationRecord",
    "DecisionsRecord",
    "ErrorRecord",
    "Outcome",
    "PackageRecord",
    "ProfileRecord",
    "ReportDraft",
    "SelfTestRecord",
    "StepRecord",
    "TransferRecord",
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


# --- the report's parts: typed records with the JSON the dict-based report had ---------


def _wrong(where: str, value: Any, expected: str) -> ReportUnreadableError:
    return ReportUnreadableError(f"{where} is {type(value).__name__}, not {expected}")


def _load(kind: Any, value: Any, where: str) -> Any:
    """``value`` (decoded JSON) as ``kind`` (a field's type), or E515 naming ``where``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (kind,) = [k for k in options if k is not type(None)]  # only "X | None" is used
    if typing.get_origin(kind) is Literal:
        if value not in typing.get_args(kind):
            raise ReportUnreadableError(f"{where} is {value!r}, not one of {typing.get_args(kind)}")
        return value
    if typing.get_origin(kind) is tuple:  # tuple[X, ...]
        if not isinstance(value, list):
            raise _wrong(where, value, "a list")
        item = typing.get_args(kind)[0]
        return tuple(_load(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise _wrong(where, value, "an object")
        return _load_record(typing.cast("type[Any]", kind), value, where)
    if kind is Any:
        return value
    expected = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}[kind]
    if not isinstance(value, expected) or (kind is not bool and isinstance(value, bool)):
        raise _wrong(where, value, {str: "a text", bool: "true/false"}.get(kind, "a number"))
    return value  # a number stays as written (an int duration is not made a float)


@functools.cache
def _field_types(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _json_key(cls: type[Any], name: str) -> str:
    return name.replace("_", "-") if cls is DecisionsRecord else name


_T = typing.TypeVar("_T")


def _load_record(cls: type[_T], data: Mapping[str, Any], where: str) -> _T:
    """A record from its JSON object: keys it does not know are left out, a missing
    required one or a value of another type is refused."""
    kinds = _field_types(typing.cast("type", cls))
    values = {}
    for f in dataclasses.fields(typing.cast("Any", cls)):
        key = _json_key(cls, f.name)
        if key in data:
            values[f.name] = _load(kinds[f.name], data[key], f"{where}.{key}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ReportUnreadableError(f"{where} does not match: {exc}") from exc


def _dump(value: Any) -> Any:
    if isinstance(value, _Part):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_dump(v) for v in value]
    return value


class _Part:
    """A part of the report: in JSON an object without the fields never recorded (None);
    false when nothing was recorded, as its empty JSON object is."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        cls = type(self)
        return {
            _json_key(cls, f.name): _dump(value)
            for f in dataclasses.fields(typing.cast("Any", self))
            if (value := getattr(self, f.name)) is not None
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> Self:
        return _load_record(cls, data, where or cls.__name__)

    def __bool__(self) -> bool:
        return any(
            getattr(self, f.name) is not None for f in dataclasses.fields(typing.cast("Any", self))
        )


@dataclass(frozen=True, slots=True)
class PackageRecord(_Part):
    """The package as verified, and what of it was sent (field order: as recorded)."""

    sha256: str | None = None
    delta_sha256: str | None = None
    downgrade_reason: str | None = None
    product: str | None = None
    version: str | None = None
    security_counter: int | None = None
    safety_class: str | None = None
    signer: tuple[str, ...] | None = None
    downgrade: bool | None = None
    payload: str | None = None  # "full" or "delta"
    payload_reason: str | None = None
    payload_sha256: str | None = None
    encoding: str | None = None
    stored_bytes: int | None = None
    image_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class TransferRecord(_Part):
    """The transfer step: where it started (a resume), how far it got, at what rate."""

    total: int | None = None
    resumed_from: int | None = None
    offset: int | None = None
    duration_s: float | None = None
    encoding: str | None = None
    image_bytes: int | None = None
    bytes_sent: int | None = None
    rate_bps: int | None = None
    # an RS485 string update: what the string shared with this node
    mode: str | None = None  # "broadcast" or "addressed"
    activation_group: int | None = None
    repair_frames: int | None = None
    repaired_blocks: int | None = None
    repair_rounds: int | None = None


@dataclass(frozen=True, slots=True)
class ProfileRecord(_Part):
    """The product profile the run used."""

    name: str | None = None
    source: str | None = None  # its file; "" for the built-in default


@dataclass(frozen=True, slots=True)
class BackupRecord(_Part):
    """The configuration backup written and read back before anything was changed."""

    path: str | None = None
    checksum: str | None = None


@dataclass(frozen=True)
class ConfirmationRecord:
    """A manual confirmation of the profile, and how it was given."""

    id: str
    text: str
    how: str  # "flag" (--confirm ID) or "interactive"


@dataclass(frozen=True, slots=True)
class SelfTestRecord(_Part):
    """The self-test record the BMS reported for the new image.

    When the bootloader had reverted the image before its record could be read,
    ``detail`` says why and ``after_revert`` holds what was read instead (the previous
    firmware's record, null when none): such a record always carries both keys.
    """

    passed: bool | None = None
    version: str | None = None
    checks: tuple[SelfTestCheck, ...] | None = None
    detail: str | None = None
    after_revert: SelfTestRecord | None = None

    def failed_checks(self) -> tuple[SelfTestCheck, ...]:
        return tuple(c for c in self.checks or () if not c.passed)

    def to_dict(self) -> dict[str, Any]:
        data = _Part.to_dict(self)
        if self.detail is not None:
            data["after_revert"] = self.after_revert.to_dict() if self.after_revert else None
        return data


@dataclass(frozen=True, slots=True)
class DecisionsRecord(_Part):
    """What the decision core (:mod:`bmsfw.update.core`) decided, each verdict with its
    reason; in JSON the names are hyphenated (``start-reason``)."""

    channel: str | None = None
    start: str | None = None
    start_reason: str | None = None
    image_key: str | None = None
    bank_layout: str | None = None
    after_boot: str | None = None
    after_boot_reason: str | None = None
    installed: str | None = None
    installed_reason: str | None = None
    security_counter: str | None = None
    rollback: str | None = None
    rollback_reason: str | None = None

    def verdict(self, name: str) -> tuple[str | None, str]:
        """The verdict called ``name`` ("start", "after-boot", "rollback") and its reason."""
        attr = name.replace("-", "_")
        return getattr(self, attr), getattr(self, f"{attr}_reason") or ""


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


_PARTS: dict[str, type[_Part]] = {
    "profile": ProfileRecord,
    "backup": BackupRecord,
    "package": PackageRecord,
    "transfer": TransferRecord,
    "self_test": SelfTestRecord,
    "decisions": DecisionsRecord,
}


def _shape_name(shape: type | tuple[type, ...]) -> str:
    names = {list: "a list", dict: "an object", bool: "true/false", str: "a text"}
    return "a number" if isinstance(shape, tuple) else names.get(shape, shape.__name__)


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
    device_before: DeviceIdentity | None = None  # as identified first; None: not reached
    device_now: BootStatus | None = None  # the boot status read at the end
    running_version: str = ""
    package: PackageRecord = field(default_factory=PackageRecord)
    profile: ProfileRecord = field(default_factory=ProfileRecord)
    steps: tuple[StepRecord, ...] = ()
    preflight: tuple[CheckResult, ...] = ()
    overrides: Mapping[str, str] = field(default_factory=dict)
    confirmations: tuple[ConfirmationRecord, ...] = ()
    backup: BackupRecord = field(default_factory=BackupRecord)
    transfer: TransferRecord = field(default_factory=TransferRecord)
    self_test: SelfTestRecord = field(default_factory=SelfTestRecord)
    config_changes: tuple[ConfigChange, ...] = ()
    config_restored: bool = False
    warnings: tuple[str, ...] = ()
    failed_step: str = ""
    error: ErrorRecord | None = None
    cause: ErrorRecord | None = None
    audit_hash: str = ""
    report_path: str = ""
    decisions: DecisionsRecord = field(default_factory=DecisionsRecord)
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
    def serial(self) -> str:
        """The BMS's serial number ("" when it was not identified)."""
        return self.device_before.serial if self.device_before else ""

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
            preflight=[asdict(c) for c in self.preflight],
            profile=self.profile.to_dict(),
            backup=self.backup.to_dict(),
            confirmations=[asdict(c) for c in self.confirmations],
            config_changes=[_dump(c) for c in self.config_changes],
            package=self.package.to_dict(),
            transfer=self.transfer.to_dict(),
            self_test=self.self_test.to_dict(),
            decisions=self.decisions.to_dict(),
            device_before=_dump(self.device_before) if self.device_before else {},
            device_now=_dump(self.device_now) if self.device_now else {},
            error=_error_dict(self.error),
            cause=_error_dict(self.cause),
            record_error=_error_dict(self.record_error),
            format=REPORT_FORMAT,
            ok=self.ok,
        )
        data["overrides"] = dict(self.overrides)
        data["warnings"] = list(self.warnings)
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
        for name, part in _PARTS.items():
            if name in values:
                values[name] = part.from_dict(values[name], name)
        for name, kind in (("device_before", DeviceIdentity), ("device_now", BootStatus)):
            if name in values:
                values[name] = _load(kind, values[name], name) if values[name] else None
        kinds = _field_types(typing.cast("type", cls))
        for name in ("preflight", "confirmations", "config_changes"):
            if name in values:
                values[name] = _load(kinds[name], values[name], name)
        try:
            values["steps"] = tuple(StepRecord(**s) for s in data.get("steps", []))
            for name in ("error", "cause", "record_error"):
                values[name] = ErrorRecord.from_dict(data.get(name) or {})
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ReportUnreadableError(f"report fields do not match: {exc}") from exc


class ReportDraft:
    """The report while a run goes on: the :class:`UpdateReport` recorded so far.

    Each thing recorded replaces the record (``dataclasses.replace``), so the draft
    has no field list of its own, and a record handed out (:meth:`freeze`, :attr:`now`)
    never changes with the draft. A field name that is not the report's raises.
    """

    def __init__(self, **fields: Any) -> None:
        self._now = UpdateReport(**fields)

    @property
    def now(self) -> UpdateReport:
        """The record as it stands."""
        return self._now

    def set(self, **fields: Any) -> None:
        self._now = dataclasses.replace(self._now, **fields)

    def append(self, name: Literal["steps", "confirmations", "warnings"], *items: Any) -> None:
        self.set(**{name: (*getattr(self._now, name), *items)})

    def note_package(self, **fields: Any) -> None:
        self.set(package=dataclasses.replace(self._now.package, **fields))

    def note_transfer(self, **fields: Any) -> None:
        self.set(transfer=dataclasses.replace(self._now.transfer, **fields))

    def decide(self, **fields: str) -> None:
        """Record the core's verdicts (``start=..., start_reason=...``)."""
        self.set(decisions=dataclasses.replace(self._now.decisions, **fields))

    def fail(self, step: str, error: BmsfwError, cause: BaseException | None = None) -> None:
        self.set(failed_step=step, error=ErrorRecord.of(error), exception=error)
        if isinstance(cause, BmsfwError) and cause is not error:
            self.set(cause=ErrorRecord.of(cause))

    def freeze(self, *, report_path: str = "") -> UpdateReport:
        """The record as it ends (with where it was written, once it was)."""
        return dataclasses.replace(self._now, report_path=report_path)


def write_report(report: UpdateReport, directory: str | Path) -> Path:
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(report.started_at))
    serial = report.serial or "unknown"
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


def _or_unknown(value: object) -> object:
    return "?" if value is None else value


def _lines_for_checks(checks: Sequence[CheckResult]) -> list[str]:
    lines = []
    for c in checks:
        verdict = "pass" if c.passed else ("OVERRIDDEN" if c.overridden else "FAIL")
        reason = f" (reason: {c.override_reason})" if c.overridden else ""
        lines.append(f"    {verdict:<10} {c.name:<17} {c.measured}  [limit {c.limit}]{reason}")
    return lines


def render_text(report: UpdateReport) -> str:
    """The human-readable report (plain text; the CLI adds colour on a terminal)."""
    dev = report.device_before
    pkg = report.package

    def device(attr: str) -> object:
        return getattr(dev, attr) if dev else "?"

    lines = [
        f"bmsfw {report.kind} report - {report.node}",
        f"  result:          {_headline(report)}",
        f"  device:          {device('model')} rev {device('hw_revision')} "
        f"serial {device('serial')}",
        f"  firmware before: {device('app_version')}",
        f"  package:         {_or_unknown(pkg.product)} {_or_unknown(pkg.version)} "
        f"(security counter {_or_unknown(pkg.security_counter)})",
        f"  device runs now: {report.running_version or 'unknown'}",
    ]
    for name in ("start", "after-boot", "rollback"):
        verdict, why = report.decisions.verdict(name)
        if verdict is not None:
            lines.append(f"  decision:        {name}: {verdict}" + (f" ({why})" if why else ""))
    if pkg.payload_reason:
        lines.append(f"  sent:            {pkg.payload_reason}")
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
        lines += [f"    {c.how:<11} {c.text}" for c in report.confirmations]
    if report.backup:
        lines.append(f"  backup:          {report.backup.path} (read back ok)")
    if report.transfer:
        t = report.transfer
        resumed = f", resumed at {t.resumed_from}" if t.resumed_from else ""
        encoding = t.encoding or "raw"
        stored = (
            f" {encoding} (image {_or_unknown(t.image_bytes)} bytes)" if encoding != "raw" else ""
        )
        lines.append(
            f"  transfer:        {t.offset or 0}/{t.total or 0} bytes{stored}"
            f" in {t.duration_s or 0:.2f} s{resumed}"
        )
    if report.self_test:
        st = report.self_test
        lines.append(f"  self-test:       {'passed' if st.passed else 'FAILED'}")
        for check in st.checks or ():
            mark = "pass" if check.passed else "FAIL"
            lines.append(
                f"    {mark:<10} {check.name:<17} {check.value}"
                f"  [limit {check.limit}] {check.detail}".rstrip()
            )
    if report.config_changes:
        verb = "restored" if report.config_restored else "CHANGED"
        lines.append(f"  configuration:   {len(report.config_changes)} value(s) {verb}:")
        lines += [f"    {c.path}: {c.before!r} -> {c.after!r}" for c in report.config_changes]
    elif any(s.step == "config-compare" and s.ok for s in report.steps):
        lines.append("  configuration:   unchanged (compared with the backup)")
    for warning in report.warnings:
        lines.append(f"  warning:         {warning}")
    if report.audit_hash:
        lines.append(f"  audit record:    {report.audit_hash[:16]}…")
    if report.record_error:
        lines.append(f"  RECORD NOT WRITTEN: {report.record_error.message}")
    return "\n".join(lines) + "\n"
