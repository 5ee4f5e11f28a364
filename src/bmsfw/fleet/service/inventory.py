"""Inventory and flags."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import (
    func,
    select,
)

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.device_query import (
    DeviceFilter,
    device_conditions,
    devices_with_gateway,
    open_flag_kinds,
)
from bmsfw.fleet.errors import (
    DecommissionedError,
    FleetNotFoundError,
)
from bmsfw.fleet.models import (
    CampaignDevice,
    Device,
    DeviceFlag,
    Gateway,
)
from bmsfw.fleet.paging import EVERYTHING, Listing, PageRequest, keyset, listing
from bmsfw.fleet.service._base import (
    _CAMPAIGN_CREATION_LOCK,
    ServiceBase,
    _device_dict,
    _flag_dict,
    _locking,
    audit,
)
from bmsfw.fleet.service.campaigns import hold_for_joins, join_dynamic_campaigns


class InventoryOps(ServiceBase):
    def device_page(self, f: DeviceFilter, page: PageRequest = EVERYTHING) -> Listing:
        """Devices matching ``f`` in serial order, one page, each with its open flags."""
        online_since = self.clock.now() - timedelta(seconds=self.settings.online_after_s)
        with self.sessions() as session:
            query = devices_with_gateway().where(*device_conditions(session, f, online_since))
            rows = session.execute(keyset(query, Device.serial, page)).all()
            shown = rows if page.limit is None else rows[: page.limit]
            flags = open_flag_kinds(session, [d.id for d, _ in shown])
            return listing(
                rows,
                page,
                lambda row: str(row[0].serial),
                lambda row: _device_dict(row[0], row[1], flags.get(row[0].id, [])),
            )

    def decommission_device(self, principal: Principal, serial: str, reason: str) -> dict[str, Any]:
        """Retire a device: in no new campaign, its history kept. Refused (E645, nothing
        changed) while it has open work in a running or paused campaign. Idempotent."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            if _locking(session):
                # Not while a campaign creation resolves its targets (it could pick the
                # device after our check); SQLite's BEGIN IMMEDIATE serialises anyway.
                session.execute(select(func.pg_advisory_xact_lock(_CAMPAIGN_CREATION_LOCK)))
            device = self._check_decommission(session, serial)
            if device.decommissioned_at is None:
                device.decommissioned_at = now
                audit(
                    session,
                    principal,
                    "device.decommission",
                    f"device:{serial}",
                    now,
                    reason=reason,
                )
            gateway = session.get(Gateway, device.gateway_id)
            flags = open_flag_kinds(session, [device.id]).get(device.id, [])
            return _device_dict(device, gateway.name if gateway else "", flags)

    def list_devices(
        self, *, site: str | None = None, model: str | None = None, flagged: bool = False
    ) -> list[dict[str, Any]]:
        """Every matching device (inside the server; the API pages with :meth:`device_page`)."""
        f = DeviceFilter(model=model or "", site=site or "", flagged=True if flagged else None)
        return self.device_page(f).items

    def get_device(self, serial: str) -> dict[str, Any]:
        with self.sessions() as session:
            device = self._device(session, serial)
            gateway = session.get(Gateway, device.gateway_id)
            flags = open_flag_kinds(session, [device.id]).get(device.id, [])
            info = _device_dict(device, gateway.name if gateway else "", flags)
            info["campaigns"] = [
                {"campaign_id": cd.campaign_id, "state": cd.state, "error_code": cd.error_code}
                for cd in session.scalars(
                    select(CampaignDevice)
                    .where(CampaignDevice.device_id == device.id)
                    .order_by(CampaignDevice.id)
                )
            ]
            return info

    def move_device(self, principal: Principal, serial: str, gateway_name: str) -> dict[str, Any]:
        """Move a device to another gateway (an operator action; check-ins never move one)."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            joining = hold_for_joins(session)  # before the device row is written
            device = self._device(session, serial)
            target = session.scalars(
                select(Gateway).where(Gateway.name == gateway_name)
            ).one_or_none()
            if target is None:
                raise FleetNotFoundError(f"no gateway named {gateway_name!r}")
            if target.decommissioned_at is not None:
                raise DecommissionedError(
                    f"gateway {gateway_name!r} was decommissioned on "
                    f"{target.decommissioned_at.isoformat()}; move the device to another"
                )
            if device.decommissioned_at is not None:
                raise DecommissionedError(f"device {serial!r} was decommissioned")
            source = session.get(Gateway, device.gateway_id)
            if device.gateway_id != target.id:
                audit(
                    session,
                    principal,
                    "device.move",
                    f"device:{serial}",
                    now,
                    from_gateway=source.name if source else None,
                    to_gateway=target.name,
                )
                moved_site = device.site != target.site
                device.gateway_id, device.site = target.id, target.site
                session.flush()
                if joining and moved_site:
                    join_dynamic_campaigns(session, [device], now, "move")
            session.flush()
            flags = open_flag_kinds(session, [device.id]).get(device.id, [])
            return _device_dict(device, target.name, flags)

    def flag_page(self, *, include_acknowledged: bool, page: PageRequest = EVERYTHING) -> Listing:
        """Flags in the order they were raised (open ones only unless asked), one page."""
        with self.sessions() as session:
            query = select(DeviceFlag, Device.serial).join(
                Device, Device.id == DeviceFlag.device_id
            )
            if not include_acknowledged:
                query = query.where(DeviceFlag.acknowledged_at.is_(None))
            rows = session.execute(keyset(query, DeviceFlag.id, page)).all()
            return listing(rows, page, lambda r: int(r[0].id), lambda r: _flag_dict(r[0], r[1]))

    def list_flags(self, *, include_acknowledged: bool = False) -> list[dict[str, Any]]:
        return self.flag_page(include_acknowledged=include_acknowledged).items

    def acknowledge_flag(self, principal: Principal, flag_id: int, note: str) -> dict[str, Any]:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            flag = session.get(DeviceFlag, flag_id)
            if flag is None:
                raise FleetNotFoundError(f"no flag with id {flag_id}")
            if flag.acknowledged_at is None:
                flag.acknowledged_at, flag.acknowledged_by = now, principal.label
            device = session.get(Device, flag.device_id)
            serial = device.serial if device else "?"
            audit(
                session,
                principal,
                "flag.acknowledge",
                f"flag:{flag_id}",
                now,
                device=serial,
                note=note,
            )
            return _flag_dict(flag, serial)
