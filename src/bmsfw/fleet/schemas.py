"""Operator-facing request bodies (pydantic at the HTTP edge)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bmsfw.fleet.paging import DEFAULT_PAGE_SIZE, MAX_CURSOR_CHARS, MAX_PAGE_SIZE
from bmsfw.fleet.protocol import (
    INT32_MAX,
    INT64_MAX,
    DbId,
    MaintenanceWindow,
    refuse_unsafe_values,
)
from bmsfw.update.profile import OTA_MIN_BANDWIDTH_BPS

Name = Annotated[str, Field(min_length=1, max_length=120)]

__all__ = [
    "DEFAULT_PHASES",
    "ApprovalQuery",
    "AuditQuery",
    "CampaignSpec",
    "Deactivation",
    "DeviceMove",
    "DeviceQuery",
    "FlagQuery",
    "GatewayCreate",
    "PageQuery",
    "PhaseSpec",
    "Retirement",
    "Selector",
    "SiteWindowSpec",
    "TokenCreate",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _safe_values(cls, data: object) -> object:
        return refuse_unsafe_values(data)


class PhaseSpec(_Model):
    """One rollout phase: a device count (canary) or a percentage of the targets, cumulative."""

    name: str = Field(min_length=1, max_length=60)
    devices: int | None = Field(default=None, ge=1, le=INT32_MAX)
    percent: float | None = Field(default=None, gt=0, le=100)
    soak_s: float = Field(default=3600.0, ge=0, le=365 * 86400)
    success_threshold_pct: float = Field(default=100.0, ge=0, le=100)

    @model_validator(mode="after")
    def _one_size(self) -> PhaseSpec:
        if (self.devices is None) == (self.percent is None):
            raise ValueError(f"phase {self.name!r}: give exactly one of 'devices' or 'percent'")
        return self


DEFAULT_PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec(name="canary", devices=5, soak_s=3600, success_threshold_pct=100),
    PhaseSpec(name="10%", percent=10, soak_s=3600, success_threshold_pct=95),
    PhaseSpec(name="50%", percent=50, soak_s=3600, success_threshold_pct=95),
    PhaseSpec(name="100%", percent=100, soak_s=0, success_threshold_pct=95),
)


class Selector(_Model):
    """Which devices a campaign targets; empty fields match everything.

    ``version_range`` is a comma-separated list of comparisons on the firmware
    version the device runs now, e.g. ``">=1.0.0,<1.4.0"``; tags must all be
    present on the device or its gateway.
    """

    models: list[Name] = Field(default_factory=list, max_length=100)
    hw_revisions: list[Name] = Field(default_factory=list, max_length=100)
    version_range: str = Field(default="", max_length=200)
    sites: list[Name] = Field(default_factory=list, max_length=1000)
    tags: list[Name] = Field(default_factory=list, max_length=100)
    serials: list[Name] = Field(default_factory=list, max_length=100_000)
    # An explicit downgrade, and why: devices that run a higher version than the
    # release are targets too (otherwise they are left out), and the campaign waits for
    # a release manager's approval (docs/fleet.md, "Four eyes").
    downgrade_reason: str = Field(default="", max_length=500)


class CampaignSpec(_Model):
    name: str = Field(min_length=1, max_length=200)
    release_id: DbId
    selector: Selector = Field(default_factory=Selector)
    phases: list[PhaseSpec] = Field(
        default_factory=lambda: list(DEFAULT_PHASES), min_length=1, max_length=20
    )
    error_threshold_pct: float = Field(default=10.0, gt=0, le=100)
    bandwidth_floor_bps: int = Field(default=int(OTA_MIN_BANDWIDTH_BPS), ge=0, le=INT64_MAX)
    # Dynamic: devices that match the selector after the start (registered or changed)
    # join the last phase, until the campaign is cancelled; it never completes.
    dynamic: bool = False


class SiteWindowSpec(_Model):
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    windows: list[MaintenanceWindow] = Field(default_factory=list, max_length=100)


class GatewayCreate(_Model):
    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    site: str = Field(min_length=1, max_length=120)
    tags: list[Name] = Field(default_factory=list, max_length=32)


class TokenCreate(_Model):
    name: str = Field(min_length=1, max_length=120)
    role: str = Field(pattern=r"^(viewer|operator|release_manager|admin)$")
    # The token is refused after this many days (None: it does not expire).
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class DeviceMove(_Model):
    """``POST /devices/{serial}/move``: the gateway the device is behind from now on."""

    gateway: str = Field(min_length=1, max_length=120)


# Query parameters of the list routes, as models: typed, bounded like the columns they
# filter, and an unknown parameter is a 422 (a misspelt filter must not list everything).


class PageQuery(_Model):
    """``limit`` rows after ``cursor`` (docs/fleet.md, "Paging")."""

    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(
        default=None, min_length=1, max_length=MAX_CURSOR_CHARS, pattern=r"^[A-Za-z0-9_-]+$"
    )


class DeviceQuery(PageQuery):
    """Filters of ``GET /devices`` (all given ones must match; exact values)."""

    model: str = Field(default="", max_length=120)
    revision: str = Field(default="", max_length=64)
    version: str = Field(default="", max_length=64)
    site: str = Field(default="", max_length=120)
    tag: str = Field(default="", max_length=120)
    flagged: bool | None = None
    online: bool | None = None


class FlagQuery(PageQuery):
    include_acknowledged: bool = False


class AuditQuery(PageQuery):
    # The page before this entry id (the older form of the cursor, still accepted).
    before_id: int | None = Field(default=None, ge=1, le=INT32_MAX)


class Retirement(_Model):
    """Body of a deactivation or decommissioning: why (kept in the audit log)."""

    reason: str = Field(default="", max_length=500)


class Deactivation(Retirement):
    """Body of a release deactivation: why, and what its running and paused campaigns do:
    ``stop`` (cancelled, offers not yet taken withdrawn) or ``finish`` (run to their end)."""

    running: Literal["stop", "finish"] = "stop"


class ApprovalQuery(PageQuery):
    """``GET /approvals``: requests in one status (default: waiting), or every status."""

    status: Literal["waiting", "approved", "rejected", "withdrawn", "expired", "failed", "all"] = (
        "waiting"
    )
