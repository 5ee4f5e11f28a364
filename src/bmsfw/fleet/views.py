"""Typed answers of the operator routes (the OpenAPI document's response schemas).

Timestamps are ISO 8601 strings in UTC, as the routes have always sent them. The
agent-facing answers live in :mod:`bmsfw.fleet.protocol`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bmsfw.fleet.protocol import BackupInfo, UpdateSummary

__all__ = [
    "AccessReviewEntry",
    "ApprovalDecision",
    "ApprovalView",
    "AuditEntryView",
    "BackupContent",
    "CampaignDeviceView",
    "CampaignView",
    "DeviceCampaign",
    "DeviceDetail",
    "DeviceUpdate",
    "DeviceView",
    "FlagView",
    "GatewayCreated",
    "GatewayView",
    "ReleaseView",
    "SiteView",
    "StateHistoryEntry",
    "TokenCreated",
    "TokenRevoked",
    "WhoAmI",
]


class ReleaseView(BaseModel):
    id: int
    product: str
    version: str
    security_counter: int
    hw_model: str
    hw_revisions: list[str]
    min_bootloader: str
    safety_class: str
    ota_allowed: bool
    components: list[dict[str, Any]]
    release_notes: str
    sha256: str
    size_bytes: int
    filename: str
    uploaded_at: str
    uploaded_by: str
    deactivated_at: str | None  # pulled (POST /releases/{id}/deactivate); None: active
    deactivated_by: str


class CampaignView(BaseModel):
    id: int
    name: str
    release_id: int
    status: str
    # Devices that match the selector later join the last phase; it never completes.
    dynamic: bool
    pause_reason: str
    current_phase: int
    phase_name: str
    phases: list[dict[str, Any]]
    selector: dict[str, Any]
    error_threshold_pct: float
    bandwidth_floor_bps: int
    targets: int
    states: dict[str, int]
    created_at: str
    created_by: str
    phase_started_at: str
    finished_at: str | None


class StateHistoryEntry(BaseModel):
    state: str
    at: str
    error_code: str


class CampaignDeviceView(BaseModel):
    device_serial: str
    phase: int
    state: str
    error_code: str
    detail: str
    offered_at: str | None
    state_changed_at: str | None
    finished_at: str | None
    history: list[StateHistoryEntry]


class GatewayView(BaseModel):
    id: int
    name: str
    site: str
    tags: list[str]
    agent_version: str
    devices: int
    last_seen_at: str | None
    decommissioned_at: str | None  # its credentials revoked; None: in service


class GatewayCreated(BaseModel):
    id: int
    name: str
    site: str
    token: str  # shown this once


class DeviceView(BaseModel):
    serial: str
    gateway: str
    site: str
    tags: list[str]
    model: str
    hw_revision: str
    bootloader_version: str
    firmware_version: str
    firmware_sha256: str
    security_counter: int
    soc_pct: float | None
    temperature_c: float | None
    integrity_ok: bool
    integrity_detail: str
    first_seen_at: str
    last_seen_at: str
    decommissioned_at: str | None  # in no new campaign; None: in service
    flags: list[str]


class DeviceCampaign(BaseModel):
    campaign_id: int
    state: str
    error_code: str


class DeviceUpdate(BaseModel):
    """One run of a device in a campaign (``GET /devices/{serial}/updates``)."""

    campaign_id: int
    campaign_name: str
    release_version: str
    state: str
    error_code: str
    detail: str
    state_changed_at: str | None
    finished_at: str | None
    # The update report the agent sent with its result (None: none sent yet).
    report: UpdateSummary | None


class DeviceDetail(DeviceView):
    campaigns: list[DeviceCampaign]


class SiteView(BaseModel):
    site: str
    timezone: str
    windows: list[dict[str, Any]]


class FlagView(BaseModel):
    id: int
    device_serial: str
    kind: str
    detail: str
    raised_at: str
    acknowledged_at: str | None
    acknowledged_by: str


class WhoAmI(BaseModel):
    name: str
    kind: str
    role: str
    gateway_id: int | None


class TokenCreated(BaseModel):
    id: int
    name: str
    role: str
    token: str  # shown this once
    expires_at: str | None


class TokenRevoked(BaseModel):
    id: int
    revoked_at: str


class AccessReviewEntry(BaseModel):
    id: int
    name: str
    kind: str
    role: str
    token_prefix: str
    gateway_id: int | None
    created_at: str
    created_by: str
    last_used_at: str | None
    revoked_at: str | None
    expires_at: str | None
    active: bool
    failed_attempts: int
    last_failed_at: str | None


class AuditEntryView(BaseModel):
    id: int
    at: str
    actor_id: int | None
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class BackupContent(BackupInfo):
    config: dict[str, Any]


class ApprovalView(BaseModel):
    """One four-eyes approval request (docs/fleet.md, "Four eyes")."""

    id: int
    action: str
    target: str
    summary: str
    reason: str
    running: str
    min_role: str
    status: str
    requested_at: str
    requested_by: str
    expires_at: str
    decided_at: str | None
    decided_by: str
    note: str


class ApprovalDecision(BaseModel):
    """An approved request and what the action it held answered."""

    approval: ApprovalView
    result: dict[str, Any]
