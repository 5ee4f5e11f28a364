"""Configuration backups (agents and technicians)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import (
    select,
)

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import (
    BackupRejectedError,
    DeviceNotOnGatewayError,
    FleetNotFoundError,
)
from bmsfw.fleet.models import (
    ConfigBackup,
    Device,
)
from bmsfw.fleet.protocol import (
    BackupInfo,
    BackupUpload,
    OperatorBackupUpload,
    backup_content,
)
from bmsfw.fleet.service._base import (
    ServiceBase,
    _backup_info,
    audit,
)


class BackupOps(ServiceBase):
    def store_backup(self, principal: Principal, body: BackupUpload) -> BackupInfo:
        """A backup the gateway's agent took of one of its own devices."""
        assert principal.gateway_id is not None
        return self._store_backup(
            principal, body.device_serial, body.config, body.reason, own_device_only=True
        )

    def store_operator_backup(
        self, principal: Principal, serial: str, body: OperatorBackupUpload
    ) -> BackupInfo:
        """A backup a technician took on site (operator token): any device in the inventory."""
        return self._store_backup(
            principal, serial, body.config, body.reason, own_device_only=False
        )

    def _store_backup(
        self,
        principal: Principal,
        serial: str,
        config: dict[str, Any],
        reason: str,
        *,
        own_device_only: bool,
    ) -> BackupInfo:
        now = self.clock.now()
        content = backup_content(config)
        if len(content) > self.settings.max_backup_bytes:
            raise BackupRejectedError(
                f"backup of {serial} is {len(content)} bytes, limit "
                f"{self.settings.max_backup_bytes}"
            )
        with self.sessions() as session, session.begin():
            if own_device_only:
                device = self._own_device(session, principal, serial)
            else:
                device = self._device(session, serial)
            backup = ConfigBackup(
                device_id=device.id,
                gateway_id=principal.gateway_id,
                uploaded_by=principal.name,
                created_at=now,
                reason=reason,
                sha256=hashlib.sha256(content.encode()).hexdigest(),
                size_bytes=len(content),
                content=content,
            )
            session.add(backup)
            session.flush()
            audit(
                session,
                principal,
                "backup.store",
                f"device:{device.serial}",
                now,
                backup=backup.id,
                sha256=backup.sha256,
                reason=reason,
            )
            return _backup_info(backup, device.serial)

    def list_backups(self, serial: str) -> list[BackupInfo]:
        with self.sessions() as session:
            device = self._device(session, serial)
            rows = session.scalars(
                select(ConfigBackup)
                .where(ConfigBackup.device_id == device.id)
                .order_by(ConfigBackup.id.desc())
            )
            return [_backup_info(b, serial) for b in rows]

    def get_backup(self, principal: Principal, backup_id: int) -> dict[str, Any]:
        with self.sessions() as session:
            backup = session.get(ConfigBackup, backup_id)
            if backup is None:
                raise FleetNotFoundError(f"no backup with id {backup_id}")
            device = session.get(Device, backup.device_id)
            assert device is not None
            if principal.kind == "gateway" and device.gateway_id != principal.gateway_id:
                raise DeviceNotOnGatewayError(
                    f"backup {backup_id} belongs to {device.serial}, not a device of this gateway"
                )
            info = _backup_info(backup, device.serial).model_dump(mode="json")
            info["config"] = json.loads(backup.content)
            return info
