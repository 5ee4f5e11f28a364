"""The agent <-> server wire protocol (JSON over HTTPS), shared by server and client.

docs/fleet.md describes the exchange; in short, a gateway's agent

1. ``POST /api/v1/agent/check-in`` with its inventory, telemetry and integrity
   report, and gets back the next poll interval and the offers for its devices;
2. ``GET`` the offered ``artifact_url`` (HTTP Range to resume), bounded by ``size_bytes``
   and checked against ``sha256``;
3. ``POST /api/v1/agent/reports`` on every state change of a device;
4. ``POST /api/v1/agent/backups`` with each configuration backup it takes.

Requests the server reads are strict (``extra="forbid"``). Answers the agent reads
(:class:`CheckInResponse`, :class:`Offer`, ...) ignore fields they do not know, so a
newer server can add fields without breaking deployed agents; every field the agent
uses is bounded here (a digest is 64 hex digits, a size at least 1 byte, a time zone
one that exists), and the agent turns an answer that fails this into BMSFW-E675
(docs/agent.md).

A technician's laptop (an operator token) files backups taken on site with
``POST /api/v1/devices/{serial}/backups`` (:class:`OperatorBackupUpload`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "ONE_LINE_PATTERN",
    "SHA256_PATTERN",
    "TERMINAL_STATES",
    "UINT32_MAX",
    "AgentProblem",
    "BackupInfo",
    "BackupUpload",
    "BmsReport",
    "CheckIn",
    "CheckInResponse",
    "DeviceState",
    "MaintenanceWindow",
    "Offer",
    "OfferDowngrade",
    "OfferPolicy",
    "OperatorBackupUpload",
    "Refusal",
    "ReportCheck",
    "ReportStep",
    "StateReport",
    "StateReportResponse",
    "UpdateSummary",
    "as_one_line",
    "backup_content",
    "backup_sha256",
    "refuse_unsafe_values",
]

PROTOCOL_VERSION = 1
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class DeviceState(StrEnum):
    """Where one device stands in one campaign (docs/fleet.md draws the machine)."""

    PENDING = "pending"
    OFFERED = "offered"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    WAITING = "waiting"
    INSTALLING = "installing"
    VERIFYING = "verifying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"


TERMINAL_STATES = frozenset(
    {DeviceState.SUCCEEDED, DeviceState.FAILED, DeviceState.ROLLED_BACK, DeviceState.REJECTED}
)
FAILURE_STATES = frozenset({DeviceState.FAILED, DeviceState.ROLLED_BACK, DeviceState.REJECTED})


# Integer ranges at the edge match the database columns: ids are INTEGER (32-bit
# signed on PostgreSQL), security counters 32-bit unsigned (MCUboot) in BIGINT columns.
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
DbId = Annotated[int, Field(ge=1, le=INT32_MAX)]
SecurityCounter = Annotated[int, Field(ge=0, le=UINT32_MAX)]


def refuse_unsafe_values(value: Any) -> Any:
    """``value`` unchanged, or ValueError for what the server must not store anywhere in it:
    text with NUL characters (PostgreSQL cannot store them) or lone surrogates (not
    UTF-8), and non-finite numbers (NaN/Infinity are not JSON)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("text must not contain NUL characters")
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("text must be valid Unicode (no lone surrogates)") from None
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Answer(BaseModel):
    """An answer the agent reads: unknown fields are ignored (a newer server may add some);
    every field the agent uses is bounded."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _Request(_Model):
    """A request body: refused (422) when any text in it holds NUL or a lone surrogate,
    or any number is not finite (:func:`refuse_unsafe_values`)."""

    @model_validator(mode="before")
    @classmethod
    def _safe_values(cls, data: Any) -> Any:
        return refuse_unsafe_values(data)


class BmsReport(_Model):
    """One BMS unit behind the gateway, as the agent read it this poll."""

    serial: str = Field(min_length=1, max_length=120)
    model: str = Field(min_length=1, max_length=120)
    hw_revision: str = Field(min_length=1, max_length=64)
    bootloader_version: str = Field(default="", max_length=64)
    firmware_version: str = Field(min_length=1, max_length=64)
    firmware_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    security_counter: SecurityCounter = 0
    soc_pct: float | None = Field(default=None, ge=0, le=100)
    temperature_c: float | None = Field(default=None, ge=-80, le=200)
    integrity_ok: bool = True
    integrity_detail: str = Field(default="", max_length=2000)
    tags: list[str] = Field(default_factory=list, max_length=32)


class AgentProblem(_Model):
    """An answer of the server the agent refused since its last good check-in (E675..E685)."""

    code: str = Field(pattern=r"^BMSFW-E\d{3}$")
    detail: str = Field(default="", max_length=500)
    count: int = Field(default=1, ge=1, le=INT32_MAX)


class CheckIn(_Request):
    protocol_version: int = PROTOCOL_VERSION
    agent_version: str = Field(default="", max_length=64)
    site: str | None = Field(default=None, max_length=120)
    tags: list[str] | None = Field(default=None, max_length=32)
    devices: list[BmsReport] = Field(default_factory=list, max_length=512)
    problems: list[AgentProblem] = Field(default_factory=list, max_length=32)


class MaintenanceWindow(_Answer):
    """Installs may start on ``days`` (0 = Monday) from ``start`` to ``end`` local time.

    A window whose end is before its start runs over midnight into the next day.
    """

    days: list[Annotated[int, Field(ge=0, le=6)]] = Field(
        default_factory=lambda: list(range(7)), max_length=7
    )
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-4]):[0-5]\d$")


class OfferPolicy(_Answer):
    bandwidth_floor_bps: int = Field(ge=0)
    maintenance_timezone: str = Field(default="UTC", max_length=64)
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list, max_length=64)
    install_allowed_now: bool = True

    @field_validator("maintenance_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError) as exc:
            raise ValueError(f"unknown time zone {value[:64]!r}") from exc
        return value


# Text without control characters (C0, DEL, C1: no line breaks, no terminal escapes).
ONE_LINE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
_SAID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"  # not blank
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def as_one_line(text: str, most: int) -> str:
    """``text`` as one line of at most ``most`` characters: control characters and runs
    of white space become one space (what :data:`ONE_LINE_PATTERN` accepts)."""
    return " ".join(_CONTROLS.sub(" ", text).split())[:most]


class OfferDowngrade(_Answer):
    """The offer comes from a downgrade campaign: it may install a release lower than
    the one the BMS runs, for this reason (the campaign's, approved by a second person
    before it started). An agent acts on it only when it accepts approved downgrades
    (``bmsfw agent --accept-approved-downgrades``); docs/fleet.md."""

    # one line of text each (they go into reports, logs and the audit trail as they are)
    reason: str = Field(min_length=1, max_length=500, pattern=_SAID_PATTERN)
    requested_by: str = Field(default="", max_length=120, pattern=ONE_LINE_PATTERN)


class Offer(_Answer):
    campaign_id: DbId
    release_id: DbId
    device_serial: str = Field(min_length=1, max_length=120)
    state: DeviceState
    product: str = Field(max_length=200)
    version: str = Field(min_length=1, max_length=64)
    security_counter: SecurityCounter
    artifact_url: str = Field(min_length=1, max_length=2048)
    size_bytes: int = Field(ge=1, le=INT64_MAX)
    sha256: str = Field(pattern=SHA256_PATTERN)
    policy: OfferPolicy
    # None: an ordinary campaign (a lower version is refused, BMSFW-E414).
    downgrade: OfferDowngrade | None = None


class Refusal(_Answer):
    """A device a check-in named that the server refused, and why (a stable error code:
    BMSFW-E613 another gateway's device, BMSFW-E661 a decommissioned device)."""

    serial: str = Field(max_length=120)
    code: str = Field(pattern=r"^BMSFW-E\d{3}$")


class CheckInResponse(_Answer):
    protocol_version: int = PROTOCOL_VERSION
    gateway: str = Field(max_length=200)
    server_time: datetime
    poll_interval_s: int  # the agent clamps it to its own documented range
    # How often the server samples telemetry into history: the agent checks in at least
    # this often (clamped to bmsfw.fleet.ranges.TELEMETRY_INTERVAL_RANGE_S). None: an
    # older server.
    telemetry_interval_s: int | None = None
    offers: list[Offer] = Field(max_length=4096)
    unknown_serials: list[str] = Field(default_factory=list)
    # Serials this check-in named that belong to another gateway: nothing about them
    # was applied, the devices are flagged for the operator (``foreign_check_in``).
    refused_serials: list[str] = Field(default_factory=list)
    # The same serials (and decommissioned devices, also in ``refused_serials``), each
    # with the code of its refusal; the devices are flagged for the operator.
    refusals: list[Refusal] = Field(default_factory=list, max_length=4096)


def _cut(value: Any, limit: int) -> str:
    """``value`` as text the server stores: cut to ``limit``, NUL and lone surrogates
    replaced (:func:`refuse_unsafe_values` would refuse the whole report for them)."""
    text = str(value if value is not None else "")[:limit]
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class ReportStep(_Request):
    """One step of an update as its report recorded it."""

    step: str = Field(max_length=64)
    ok: bool
    duration_s: float = Field(ge=0, le=1e7)
    detail: str = Field(default="", max_length=2000)


class ReportCheck(_Request):
    """One preflight check: what was measured, against which limit, and the verdict."""

    name: str = Field(max_length=120)
    measured: str = Field(default="", max_length=200)
    limit: str = Field(default="", max_length=200)
    passed: bool
    safety: bool = False
    overridden: bool = False
    detail: str = Field(default="", max_length=2000)


class UpdateSummary(_Request):
    """The parts of one update's report (:class:`bmsfw.update.report.UpdateReport`) the
    server keeps with the state report that ends or pauses the run: its steps, every
    preflight check with value and limit, and the error. The server stores it typed (one
    per device and campaign, the latest); the dashboard and CLI show it as text."""

    outcome: str = Field(max_length=32)
    kind: str = Field(default="update", max_length=16)
    failed_step: str = Field(default="", max_length=64)
    error_code: str = Field(default="", pattern=r"^(BMSFW-E\d{3})?$")
    error_message: str = Field(default="", max_length=2000)
    running_version: str = Field(default="", max_length=64)
    package_version: str = Field(default="", max_length=64)
    steps: list[ReportStep] = Field(default_factory=list, max_length=64)
    preflight: list[ReportCheck] = Field(default_factory=list, max_length=128)
    warnings: list[Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=list, max_length=32
    )

    @classmethod
    def from_report_json(cls, data: Mapping[str, Any]) -> UpdateSummary:
        """From an update report's JSON form (``UpdateReport.to_dict()``, its stable
        format), cut to this record's bounds: the agent never fails on its own report."""

        def items(name: str, most: int) -> list[Mapping[str, Any]]:
            value = data.get(name)
            seq = value if isinstance(value, list | tuple) else []
            return [x for x in seq if isinstance(x, Mapping)][:most]

        def seconds(value: Any) -> float:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            return min(max(float(value), 0.0), 1e7) if number and math.isfinite(value) else 0.0

        def mapping(name: str) -> Mapping[str, Any]:
            value = data.get(name)
            return value if isinstance(value, Mapping) else {}

        error, package = mapping("error"), mapping("package")
        code = _cut(error.get("code"), 16)
        listed = data.get("warnings")
        warnings = [w for w in listed if isinstance(w, str)] if isinstance(listed, list) else []
        return cls(
            outcome=_cut(data.get("outcome"), 32),
            kind=_cut(data.get("kind") or "update", 16),
            failed_step=_cut(data.get("failed_step"), 64),
            error_code=code if re.fullmatch(r"BMSFW-E\d{3}", code) else "",
            error_message=_cut(error.get("message"), 2000),
            running_version=_cut(data.get("running_version"), 64),
            package_version=_cut(package.get("version"), 64),
            steps=[
                ReportStep(
                    step=_cut(s.get("step"), 64),
                    ok=s.get("ok") is True,
                    duration_s=seconds(s.get("duration_s")),
                    detail=_cut(s.get("detail"), 2000),
                )
                for s in items("steps", 64)
            ],
            preflight=[
                ReportCheck(
                    name=_cut(c.get("name"), 120),
                    measured=_cut(c.get("measured"), 200),
                    limit=_cut(c.get("limit"), 200),
                    passed=c.get("passed") is True,
                    safety=c.get("safety") is True,
                    overridden=c.get("overridden") is True,
                    detail=_cut(c.get("detail"), 2000),
                )
                for c in items("preflight", 128)
            ],
            warnings=[_cut(w, 2000) for w in warnings[:32]],
        )


class StateReport(_Request):
    device_serial: str = Field(min_length=1, max_length=120)
    campaign_id: DbId
    state: DeviceState
    error_code: str = Field(default="", pattern=r"^(BMSFW-E\d{3})?$")
    detail: str = Field(default="", max_length=4000)
    # The firmware version the BMS runs as the agent read it for this report; a
    # ``succeeded`` report must name the release's version (the server refuses and
    # flags one that does not), a ``rolled_back`` one must not.
    firmware_version: str | None = Field(default=None, min_length=1, max_length=64)
    # The update report of the run this state ends or pauses (None: no run, e.g.
    # downloading): kept by the server, shown on the device page and by the CLI.
    update: UpdateSummary | None = None


class StateReportResponse(_Answer):
    device_serial: str
    campaign_id: int
    state: DeviceState
    campaign_status: str
    changed: bool


class BackupUpload(_Request):
    device_serial: str = Field(min_length=1, max_length=120)
    reason: str = Field(default="", max_length=120)
    config: dict[str, Any]


def backup_content(config: dict[str, Any]) -> str:
    """The canonical JSON (sorted keys, no whitespace) the server stores for a backup."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def backup_sha256(config: dict[str, Any]) -> str:
    """The ``sha256`` the server reports for a backup of ``config``."""
    return hashlib.sha256(backup_content(config).encode()).hexdigest()


class OperatorBackupUpload(_Request):
    """``POST /api/v1/devices/{serial}/backups``: a backup taken on site by a technician."""

    reason: str = Field(default="", max_length=120)
    config: dict[str, Any]


class BackupInfo(_Answer):
    id: int
    device_serial: str
    created_at: datetime
    reason: str
    sha256: str  # of the canonical JSON (sorted keys, no whitespace) of the config
    size_bytes: int
    # Name of the credential that uploaded it (a gateway's is "gateway:NAME").
    uploaded_by: str = ""
