"""The dashboard's reads: aggregates and bounded pages, never the whole fleet.

Every list here is one page (at most :data:`MAX_PAGE_SIZE` rows) plus a count; the
overview is a handful of GROUP BY queries. All reads go through the fleet service's
session factory (same database, same engine) and change nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, case, desc, func, select
from sqlalchemy.orm import Session, sessionmaker

from bmsfw.fleet.device_query import devices_with_gateway, has_open_flag, open_flag_kinds
from bmsfw.fleet.models import (
    Campaign,
    CampaignDevice,
    Device,
    DeviceFlag,
    DeviceStateEvent,
    Release,
)
from bmsfw.fleet.service.reports import stored_summaries
from bmsfw.fleet.web.catalogue import Explanation, explain
from bmsfw.fleet.web.report import ReportView, summary_view

__all__ = [
    "ACTIVE_CAMPAIGN_STATES",
    "DEFAULT_PAGE_SIZE",
    "DEVICE_SORTS",
    "MAX_PAGE_SIZE",
    "CampaignDeviceRow",
    "CampaignProgress",
    "DeviceFilter",
    "DeviceRow",
    "FlagRow",
    "FleetQueries",
    "Overview",
    "Page",
    "UpdateRecord",
]

T = TypeVar("T")
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25
ACTIVE_CAMPAIGN_STATES = ("needs_approval", "running", "paused")
DEVICE_SORTS = {
    "serial": Device.serial,
    "model": Device.model,
    "version": Device.firmware_version,
    "site": Device.site,
    "last_seen": Device.last_seen_at,
}
# Done states of a device in a campaign (the progress bar's filled part).
_DONE = ("succeeded", "failed", "rolled_back", "rejected")


@dataclass(frozen=True)
class Page(Generic[T]):
    rows: Sequence[T]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


@dataclass(frozen=True)
class DeviceFilter:
    model: str = ""
    version: str = ""
    site: str = ""
    flagged: bool = False
    online: str = ""  # "" | "yes" | "no"
    sort: str = "serial"
    descending: bool = False


@dataclass(frozen=True)
class DeviceRow:
    serial: str
    model: str
    hw_revision: str
    firmware_version: str
    site: str
    gateway: str
    soc_pct: float | None
    temperature_c: float | None
    last_seen_at: datetime
    online: bool
    flags: tuple[str, ...]


@dataclass(frozen=True)
class CampaignProgress:
    id: int
    name: str
    status: str
    release_version: str
    phase: int
    phases: int
    targets: int
    states: dict[str, int]
    dynamic: bool = False  # devices that match later join: it never completes

    @property
    def done(self) -> int:
        return sum(self.states.get(s, 0) for s in _DONE)

    @property
    def failed(self) -> int:
        return sum(self.states.get(s, 0) for s in ("failed", "rolled_back", "rejected"))

    @property
    def percent(self) -> int:
        return 100 * self.done // self.targets if self.targets else 0


@dataclass(frozen=True)
class Overview:
    total: int
    online: int
    by_version: Sequence[tuple[str, int]]
    by_model: Sequence[tuple[str, str, int]]
    flags_by_kind: Sequence[tuple[str, int]]
    recent_flags: Sequence[tuple[str, str, str, datetime]]  # serial, kind, detail, raised
    campaigns: Sequence[CampaignProgress]
    soc: Sequence[tuple[str, int]]
    temperature: Sequence[tuple[str, int]]


@dataclass(frozen=True)
class UpdateRecord:
    campaign_id: int
    campaign_name: str
    release_version: str
    state: str
    error_code: str
    detail: str
    changed_at: datetime
    explanation: Explanation | None
    history: Sequence[tuple[str, datetime, str]]  # state, at, error code
    # The update report the agent sent with its result (steps, preflight, error), if any.
    report: ReportView | None = None


@dataclass(frozen=True)
class FlagRow:
    id: int
    serial: str
    kind: str
    detail: str
    raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str


@dataclass(frozen=True)
class CampaignDeviceRow:
    serial: str
    phase: int
    state: str
    error_code: str
    detail: str
    changed_at: datetime
    explanation: Explanation | None


def _buckets(column: Any, edges: Sequence[float], unit: str) -> tuple[Any, list[str]]:
    """A CASE expression naming the bucket of ``column`` between ``edges`` (one query)."""
    labels = [f"< {edges[0]:g}{unit}"]
    whens = [(column < edges[0], labels[0])]
    for low, high in itertools.pairwise(edges):
        label = f"{low:g}–{high:g}{unit}"
        labels.append(label)
        whens.append((column < high, label))
    labels.append(f"≥ {edges[-1]:g}{unit}")
    return case(*whens, else_=labels[-1]), labels


class FleetQueries:
    def __init__(self, sessions: sessionmaker[Session], online_window: timedelta) -> None:
        self.sessions = sessions
        self.online_window = online_window

    def _online_since(self, now: datetime) -> datetime:
        return now - self.online_window

    def overview(self, now: datetime) -> Overview:
        since = self._online_since(now)
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(Device)) or 0
            online = s.scalar(select(func.count()).where(Device.last_seen_at >= since)) or 0
            by_version = s.execute(
                select(Device.firmware_version, func.count())
                .group_by(Device.firmware_version)
                .order_by(desc(func.count()), Device.firmware_version)
                .limit(20)
            ).all()
            by_model = s.execute(
                select(Device.model, Device.hw_revision, func.count())
                .group_by(Device.model, Device.hw_revision)
                .order_by(Device.model, Device.hw_revision)
                .limit(20)
            ).all()
            open_flag = DeviceFlag.acknowledged_at.is_(None)
            flags_by_kind = s.execute(
                select(DeviceFlag.kind, func.count())
                .where(open_flag)
                .group_by(DeviceFlag.kind)
                .order_by(DeviceFlag.kind)
            ).all()
            recent_flags = s.execute(
                select(Device.serial, DeviceFlag.kind, DeviceFlag.detail, DeviceFlag.raised_at)
                .join(Device, Device.id == DeviceFlag.device_id)
                .where(open_flag)
                .order_by(DeviceFlag.id.desc())
                .limit(10)
            ).all()
            soc, soc_labels = _buckets(Device.soc_pct, (20, 40, 60, 80), " %")
            temp, temp_labels = _buckets(Device.temperature_c, (0, 15, 30, 45), " °C")
            soc_counts: dict[str, int] = dict(
                s.execute(
                    select(soc, func.count()).where(Device.soc_pct.is_not(None)).group_by(soc)
                ).all()
            )
            temp_counts: dict[str, int] = dict(
                s.execute(
                    select(temp, func.count())
                    .where(Device.temperature_c.is_not(None))
                    .group_by(temp)
                ).all()
            )
            campaigns = self._progress(
                s, select(Campaign).where(Campaign.status.in_(ACTIVE_CAMPAIGN_STATES))
            )
        return Overview(
            total=total,
            online=online,
            by_version=[(v, n) for v, n in by_version],
            by_model=[(m, r, n) for m, r, n in by_model],
            flags_by_kind=[(k, n) for k, n in flags_by_kind],
            recent_flags=[(a, b, c, d) for a, b, c, d in recent_flags],
            campaigns=campaigns,
            soc=[(label, int(soc_counts.get(label, 0))) for label in soc_labels],
            temperature=[(label, int(temp_counts.get(label, 0))) for label in temp_labels],
        )

    def _progress(self, s: Session, query: Select[Any]) -> list[CampaignProgress]:
        rows = s.execute(
            query.add_columns(Release.version)
            .join(Release, Release.id == Campaign.release_id)
            .order_by(Campaign.id.desc())
            .limit(MAX_PAGE_SIZE)
        ).all()
        ids = [c.id for c, _ in rows]
        states: dict[int, dict[str, int]] = {i: {} for i in ids}
        for campaign_id, state, n in s.execute(
            select(CampaignDevice.campaign_id, CampaignDevice.state, func.count())
            .where(CampaignDevice.campaign_id.in_(ids))
            .group_by(CampaignDevice.campaign_id, CampaignDevice.state)
        ):
            states[campaign_id][state] = int(n)
        return [
            CampaignProgress(
                id=c.id,
                name=c.name,
                status=c.status,
                release_version=version,
                phase=c.current_phase,
                phases=len(c.phases),
                targets=sum(states[c.id].values()),
                states=states[c.id],
                dynamic=c.dynamic,
            )
            for c, version in rows
        ]

    def campaigns(self) -> list[CampaignProgress]:
        """The latest campaigns (at most one page), newest first."""
        with self.sessions() as s:
            return self._progress(s, select(Campaign))

    def release_campaigns(self, release_id: int) -> list[CampaignProgress]:
        """The latest campaigns (at most one page) that roll out this release."""
        with self.sessions() as s:
            return self._progress(s, select(Campaign).where(Campaign.release_id == release_id))

    def campaign_progress(self, campaign_id: int) -> CampaignProgress | None:
        with self.sessions() as s:
            found = self._progress(s, select(Campaign).where(Campaign.id == campaign_id))
        return found[0] if found else None

    def devices(self, f: DeviceFilter, page: int, size: int, now: datetime) -> Page[DeviceRow]:
        size = max(1, min(size, MAX_PAGE_SIZE))
        page = max(1, page)
        since = self._online_since(now)
        query = devices_with_gateway()
        conditions = []
        if f.model:
            conditions.append(Device.model == f.model)
        if f.version:
            conditions.append(Device.firmware_version == f.version)
        if f.site:
            conditions.append(Device.site == f.site)
        if f.flagged:
            conditions.append(has_open_flag())
        if f.online == "yes":
            conditions.append(Device.last_seen_at >= since)
        elif f.online == "no":
            conditions.append(Device.last_seen_at < since)
        column = DEVICE_SORTS.get(f.sort, Device.serial)
        order = [column.desc() if f.descending else column.asc(), Device.serial]
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(Device).where(*conditions)) or 0
            rows = s.execute(
                query.where(*conditions).order_by(*order).limit(size).offset((page - 1) * size)
            ).all()
            flags = open_flag_kinds(s, [d.id for d, _ in rows])
        return Page(
            rows=[
                DeviceRow(
                    serial=d.serial,
                    model=d.model,
                    hw_revision=d.hw_revision,
                    firmware_version=d.firmware_version,
                    site=d.site,
                    gateway=gateway,
                    soc_pct=d.soc_pct,
                    temperature_c=d.temperature_c,
                    last_seen_at=d.last_seen_at,
                    online=d.last_seen_at >= since,
                    flags=tuple(sorted(flags.get(d.id, []))),
                )
                for d, gateway in rows
            ],
            total=total,
            page=page,
            size=size,
        )

    def is_online(self, last_seen_at: datetime, now: datetime) -> bool:
        return last_seen_at >= self._online_since(now)

    def update_history(self, serial: str, limit: int = 20) -> list[UpdateRecord]:
        """The device's latest campaign runs, newest first, each with its state history."""
        with self.sessions() as s:
            rows = s.execute(
                select(CampaignDevice, Campaign.name, Release.version)
                .join(Campaign, Campaign.id == CampaignDevice.campaign_id)
                .join(Release, Release.id == Campaign.release_id)
                .join(Device, Device.id == CampaignDevice.device_id)
                .where(Device.serial == serial)
                .order_by(CampaignDevice.id.desc())
                .limit(limit)
            ).all()
            events: dict[int, list[tuple[str, datetime, str]]] = {}
            for e in s.scalars(
                select(DeviceStateEvent)
                .where(DeviceStateEvent.campaign_device_id.in_([cd.id for cd, _, _ in rows]))
                .order_by(DeviceStateEvent.id)
            ):
                events.setdefault(e.campaign_device_id, []).append((e.state, e.at, e.error_code))
            reports = stored_summaries(s, [cd.id for cd, _, _ in rows])
        return [
            UpdateRecord(
                campaign_id=cd.campaign_id,
                campaign_name=name,
                release_version=version,
                state=cd.state,
                error_code=cd.error_code,
                detail=cd.detail,
                changed_at=cd.state_changed_at,
                explanation=explain(cd.error_code) if cd.error_code else None,
                history=events.get(cd.id, []),
                report=summary_view(reports[cd.id]) if cd.id in reports else None,
            )
            for cd, name, version in rows
        ]

    def campaign_devices(
        self, campaign_id: int, state: str, page: int, size: int
    ) -> Page[CampaignDeviceRow]:
        size = max(1, min(size, MAX_PAGE_SIZE))
        page = max(1, page)
        conditions = [CampaignDevice.campaign_id == campaign_id]
        if state:
            conditions.append(CampaignDevice.state == state)
        with self.sessions() as s:
            total = (
                s.scalar(select(func.count()).select_from(CampaignDevice).where(*conditions)) or 0
            )
            rows = s.execute(
                select(CampaignDevice, Device.serial)
                .join(Device, Device.id == CampaignDevice.device_id)
                .where(*conditions)
                .order_by(CampaignDevice.phase_index, Device.serial)
                .limit(size)
                .offset((page - 1) * size)
            ).all()
        return Page(
            rows=[
                CampaignDeviceRow(
                    serial=serial,
                    phase=cd.phase_index,
                    state=cd.state,
                    error_code=cd.error_code,
                    detail=cd.detail,
                    changed_at=cd.state_changed_at,
                    explanation=explain(cd.error_code) if cd.error_code else None,
                )
                for cd, serial in rows
            ],
            total=total,
            page=page,
            size=size,
        )

    def flags(self, include_acknowledged: bool, page: int, size: int) -> Page[FlagRow]:
        """Flags, newest first (open ones only unless ``include_acknowledged``)."""
        size = max(1, min(size, MAX_PAGE_SIZE))
        page = max(1, page)
        conditions = [] if include_acknowledged else [DeviceFlag.acknowledged_at.is_(None)]
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(DeviceFlag).where(*conditions)) or 0
            rows = s.execute(
                select(DeviceFlag, Device.serial)
                .join(Device, Device.id == DeviceFlag.device_id)
                .where(*conditions)
                .order_by(DeviceFlag.id.desc())
                .limit(size)
                .offset((page - 1) * size)
            ).all()
        return Page(
            rows=[
                FlagRow(
                    f.id,
                    serial,
                    f.kind,
                    f.detail,
                    f.raised_at,
                    f.acknowledged_at,
                    f.acknowledged_by,
                )
                for f, serial in rows
            ],
            total=total,
            page=page,
            size=size,
        )
