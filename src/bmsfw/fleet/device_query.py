"""The inventory's device query, one copy for the API (``service/inventory.py``) and the
dashboard (``web/queries.py``): each device with its gateway's name, and the kinds of
its open (unacknowledged) flags."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, exists, func, literal_column, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from bmsfw.fleet.models import Device, DeviceFlag, Gateway

__all__ = [
    "DeviceFilter",
    "device_conditions",
    "devices_with_gateway",
    "has_open_flag",
    "open_flag_kinds",
]


def devices_with_gateway() -> Select[Device, str]:
    """``(device, gateway name)`` rows; add filters, order and paging to taste."""
    return select(Device, Gateway.name).join(Gateway, Gateway.id == Device.gateway_id)


def has_open_flag() -> ColumnElement[bool]:
    """A condition on :class:`Device`: it has at least one unacknowledged flag."""
    return exists().where(DeviceFlag.device_id == Device.id, DeviceFlag.acknowledged_at.is_(None))


def open_flag_kinds(session: Session, device_ids: Collection[int] | None) -> dict[int, list[str]]:
    """The kinds of the open flags of each device named, oldest flag first (``None``: of
    every device; a page of devices names its ids)."""
    kinds: dict[int, list[str]] = {}
    query = select(DeviceFlag.device_id, DeviceFlag.kind).where(
        DeviceFlag.acknowledged_at.is_(None)
    )
    if device_ids is not None:
        if not device_ids:
            return kinds
        query = query.where(DeviceFlag.device_id.in_(device_ids))
    for device_id, kind in session.execute(query.order_by(DeviceFlag.id)):
        kinds.setdefault(device_id, []).append(kind)
    return kinds


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices a listing shows; empty fields match everything (all must match)."""

    model: str = ""
    hw_revision: str = ""
    firmware_version: str = ""
    site: str = ""
    tag: str = ""
    flagged: bool | None = None  # True: with an open flag; False: without one
    online: bool | None = None  # True: checked in at or after ``online_since``


def device_conditions(
    session: Session, f: DeviceFilter, online_since: datetime
) -> list[ColumnElement[bool]]:
    """The WHERE conditions on :class:`Device` of ``f`` (one query, any fleet size)."""
    conditions: list[ColumnElement[bool]] = []
    for column, value in (
        (Device.model, f.model),
        (Device.hw_revision, f.hw_revision),
        (Device.firmware_version, f.firmware_version),
        (Device.site, f.site),
    ):
        if value:
            conditions.append(column == value)
    if f.tag:  # tags are a JSON list: containment, written per dialect
        if session.get_bind().dialect.name == "postgresql":
            conditions.append(Device.tags.cast(JSONB).contains([f.tag]))
        else:
            each = func.json_each(Device.tags).table_valued("value")
            conditions.append(
                exists(select(literal_column("1")).select_from(each).where(each.c.value == f.tag))
            )
    if f.flagged is not None:
        conditions.append(has_open_flag() if f.flagged else ~has_open_flag())
    if f.online is not None:
        conditions.append(
            Device.last_seen_at >= online_since if f.online else Device.last_seen_at < online_since
        )
    return conditions
