"""The fleet database schema (SQLAlchemy 2 typed ORM).

The Alembic migrations in ``migrations/versions`` create exactly this schema; a
test compares them. Timestamps are stored as naive UTC (SQLite has no time
zones) and come back timezone-aware through :class:`UtcDateTime`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ApprovalRequest",
    "ArtifactChunk",
    "AuditEntry",
    "Base",
    "Campaign",
    "CampaignDevice",
    "ConfigBackup",
    "Credential",
    "DashboardSession",
    "Device",
    "DeviceFlag",
    "DeviceStateEvent",
    "EvidenceBundle",
    "Gateway",
    "Release",
    "SiteWindow",
    "TelemetrySample",
    "UpdateReportRecord",
    "UtcDateTime",
]


# Security counters are 32-bit unsigned: BIGINT on PostgreSQL (INTEGER is signed 32-bit
# there); SQLite's INTEGER holds 64 bits already.
_COUNTER = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, naive UTC in the column."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class Credential(Base):
    """An operator API token or a gateway token; only the SHA-256 of the token is kept."""

    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(16))  # "operator" | "gateway"
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))
    gateway_id: Mapped[int | None] = mapped_column(ForeignKey("gateways.id"), nullable=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(120))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # After this instant the token is refused like a revoked one (None: no expiry).
    expires_at: Mapped[datetime | None]


class DashboardSession(Base):
    """A dashboard sign-in (see :mod:`bmsfw.fleet.web.sessions`): only the SHA-256 of the
    session id the browser holds is kept, with the hash of the credential that signed in."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)  # created_at + the absolute limit


class Gateway(Base):
    __tablename__ = "gateways"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    site: Mapped[str] = mapped_column(String(120), index=True)
    tags: Mapped[list[Any]]
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    # Retired: its credentials revoked, its devices and history kept (None: in service).
    decommissioned_at: Mapped[datetime | None]


class Device(Base):
    """One BMS unit behind a gateway, as last reported by the gateway's agent."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(120), unique=True)
    gateway_id: Mapped[int] = mapped_column(ForeignKey("gateways.id"), index=True)
    model: Mapped[str] = mapped_column(String(120), index=True)
    hw_revision: Mapped[str] = mapped_column(String(64))
    bootloader_version: Mapped[str] = mapped_column(String(64), default="")
    firmware_version: Mapped[str] = mapped_column(String(64))
    firmware_sha256: Mapped[str] = mapped_column(String(64), default="")
    security_counter: Mapped[int] = mapped_column(_COUNTER, default=0)
    site: Mapped[str] = mapped_column(String(120), index=True)
    tags: Mapped[list[Any]]
    soc_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    temperature_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    integrity_ok: Mapped[bool] = mapped_column(Boolean, default=True)
    integrity_detail: Mapped[str] = mapped_column(Text, default="")
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    # Retired: in no new campaign, history kept (None: in service).
    decommissioned_at: Mapped[datetime | None]


class Release(Base):
    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product: Mapped[str] = mapped_column(String(120))
    version: Mapped[str] = mapped_column(String(64))
    security_counter: Mapped[int] = mapped_column(_COUNTER)
    hw_model: Mapped[str] = mapped_column(String(120))
    hw_revisions: Mapped[list[Any]]
    min_bootloader: Mapped[str] = mapped_column(String(64))
    safety_class: Mapped[str] = mapped_column(String(32))
    components: Mapped[list[Any]]
    release_notes: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    uploaded_at: Mapped[datetime]
    uploaded_by: Mapped[str] = mapped_column(String(120))
    # The certificates the signature was verified through at upload, signer first
    # (subject, issuer, serial_number, not_after, algorithm); empty before revision 0012.
    signer_chain: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Pulled: no campaign may use it, its campaigns were cancelled (None: active).
    deactivated_at: Mapped[datetime | None]
    deactivated_by: Mapped[str] = mapped_column(String(120), default="", server_default="")


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    selector: Mapped[dict[str, Any]]
    phases: Mapped[list[Any]]
    error_threshold_pct: Mapped[float] = mapped_column(Float)
    bandwidth_floor_bps: Mapped[int] = mapped_column(BigInteger)
    # Devices that match the selector after the start join the last phase (docs/fleet.md).
    dynamic: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    status: Mapped[str] = mapped_column(String(16), index=True)
    current_phase: Mapped[int] = mapped_column(Integer, default=0)
    phase_started_at: Mapped[datetime]
    phase_threshold_met_at: Mapped[datetime | None]
    acknowledged_failures: Mapped[int] = mapped_column(Integer, default=0)
    pause_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(120))
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class CampaignDevice(Base):
    """One device's progress in one campaign (its current state and phase)."""

    __tablename__ = "campaign_devices"
    __table_args__ = (
        UniqueConstraint("campaign_id", "device_id", name="uq_campaign_devices_campaign_device"),
        Index("ix_campaign_devices_device_state", "device_id", "state"),
        Index("ix_campaign_devices_campaign_state", "campaign_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    phase_index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str] = mapped_column(String(16), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    state_changed_at: Mapped[datetime]
    offered_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class DeviceStateEvent(Base):
    """History of every state a device went through in a campaign, with timestamps."""

    __tablename__ = "device_state_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_device_id: Mapped[int] = mapped_column(ForeignKey("campaign_devices.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    error_code: Mapped[str] = mapped_column(String(16), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class SiteWindow(Base):
    """Maintenance windows of one site: when installs (not downloads) may run."""

    __tablename__ = "site_windows"

    site: Mapped[str] = mapped_column(String(120), primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64))
    windows: Mapped[list[Any]]
    updated_at: Mapped[datetime]


class TelemetrySample(Base):
    """A device's state of charge and temperature at one time (see :mod:`.telemetry`)."""

    __tablename__ = "telemetry_samples"
    __table_args__ = (Index("ix_telemetry_samples_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    at: Mapped[datetime] = mapped_column(index=True)
    soc_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    temperature_c: Mapped[float | None] = mapped_column(Float, nullable=True)


class DeviceFlag(Base):
    __tablename__ = "device_flags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str] = mapped_column(String(120), default="")


class ConfigBackup(Base):
    """A configuration backup of one device, uploaded by its gateway's agent or by an
    operator (a technician's laptop: ``gateway_id`` is then empty)."""

    __tablename__ = "config_backups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    gateway_id: Mapped[int | None] = mapped_column(ForeignKey("gateways.id"), nullable=True)
    uploaded_by: Mapped[str] = mapped_column(String(120), default="")  # credential name
    created_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(String(120), default="")
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("chain_seq", name="uq_audit_log_chain_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor_name: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]]
    # The hash chain (fleet/audit_chain.py): set when the entry is sealed, after it was written.
    chain_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    chain_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApprovalRequest(Base):
    """Four eyes: a safety-relevant action waiting for a second person (service/approvals.py).

    ``action`` names what runs once approved (``release.deactivate``, ``token.revoke``,
    ``gateway.decommission``, ``device.decommission``, ``campaign.start``) on ``target``
    (``release:3``) with ``params``; ``min_role`` is the lowest role that may approve it.
    """

    __tablename__ = "approval_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200), index=True)
    params: Mapped[dict[str, Any]]
    summary: Mapped[str] = mapped_column(Text)
    min_role: Mapped[str] = mapped_column(String(32))
    # waiting | approved | rejected | expired | failed | withdrawn
    status: Mapped[str] = mapped_column(String(16), index=True)
    requested_at: Mapped[datetime]
    requested_by: Mapped[str] = mapped_column(String(120))
    requested_by_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expires_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str] = mapped_column(String(120), default="")
    note: Mapped[str] = mapped_column(Text, default="")


class ArtifactChunk(Base):
    """One piece of a release file, stored in the database (see :mod:`.artifacts`)."""

    __tablename__ = "artifact_chunks"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class EvidenceBundle(Base):
    """The evidence bundle of one update on one device, as its gateway uploaded it
    (verified first; see :mod:`bmsfw.fleet.evidence`). The bytes are kept as received."""

    __tablename__ = "evidence_bundles"
    __table_args__ = (UniqueConstraint("device_id", "sha256", name="uq_evidence_device_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    gateway_id: Mapped[int | None] = mapped_column(ForeignKey("gateways.id"), nullable=True)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"), nullable=True)
    uploaded_by: Mapped[str] = mapped_column(String(120), default="")  # credential name
    received_at: Mapped[datetime]
    created_at: Mapped[datetime | None]  # the bundle's own creation time (its manifest)
    outcome: Mapped[str] = mapped_column(String(120))
    running_version: Mapped[str] = mapped_column(String(120), default="")
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class UpdateReportRecord(Base):
    """The latest update report of one device's run in one campaign, as its agent sent it
    with a state report (:class:`bmsfw.fleet.protocol.UpdateSummary`, stored typed): the
    outcome and error in columns, the steps, preflight checks and warnings as JSON lists
    of their records. One row per campaign device, replaced by a later report."""

    __tablename__ = "update_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_device_id: Mapped[int] = mapped_column(ForeignKey("campaign_devices.id"), unique=True)
    received_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(32))  # the state report it came with
    outcome: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    failed_step: Mapped[str] = mapped_column(String(64))
    error_code: Mapped[str] = mapped_column(String(16))
    error_message: Mapped[str] = mapped_column(Text)
    running_version: Mapped[str] = mapped_column(String(64))
    package_version: Mapped[str] = mapped_column(String(64))
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    preflight: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    warnings: Mapped[list[str]] = mapped_column(JSON)


class RateBucket(Base):
    """A token bucket every server process shares (see :mod:`.rate_limits`)."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)  # UNIX time of the last update
