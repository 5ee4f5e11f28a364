"""The inventory's device query, one copy for the API (``service/inventory.py``) and the
dashboard (``web/queries.py``): each device with its gateway's name, and the kinds of
its open (unacknowledged) flags."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import ColumnElement, Select, exists, select
from sqlalchemy.orm import Session

from bmsfw.fleet.models import Device, DeviceFlag, Gateway

__all__ = ["devices_with_gateway", "has_open_flag", "open_flag_kinds"]


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
