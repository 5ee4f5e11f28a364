"""Evidence bundles: each update's record, filed by the device's gateway, read by operators
(see :mod:`bmsfw.fleet.evidence` for what is checked)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import select

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import (
    EvidenceRejectedError,
    FleetNotFoundError,
    RequestTooLargeError,
)
from bmsfw.fleet.evidence import EvidenceInfo, check_upload
from bmsfw.fleet.models import CampaignDevice, Device, EvidenceBundle
from bmsfw.fleet.service._base import ServiceBase, audit

__all__ = ["EvidenceOps"]


def _info(bundle: EvidenceBundle, serial: str) -> EvidenceInfo:
    return EvidenceInfo(
        id=bundle.id,
        device_serial=serial,
        campaign_id=bundle.campaign_id,
        received_at=bundle.received_at,
        created_at=bundle.created_at,
        outcome=bundle.outcome,
        running_version=bundle.running_version,
        sha256=bundle.sha256,
        size_bytes=bundle.size_bytes,
        uploaded_by=bundle.uploaded_by,
    )


class EvidenceOps(ServiceBase):
    def store_evidence(
        self, principal: Principal, data: bytes, campaign_id: int | None = None
    ) -> tuple[EvidenceInfo, bool]:
        """Verify and keep one bundle of a device behind the calling gateway.

        Returns the stored record and whether it is new (the same bundle uploaded again,
        e.g. an agent's retry after a lost answer, is that record again). Refused: not a
        verifiable bundle (E690), another gateway's device (E613), a campaign that does
        not target the device (E604); then nothing is stored.
        """
        assert principal.gateway_id is not None
        limit = self.settings.max_evidence_bytes
        if len(data) > limit:
            raise RequestTooLargeError(f"evidence bundle of {len(data)} bytes, limit {limit}")
        now = self.clock.now()
        try:
            checked = check_upload(data)
        except EvidenceRejectedError as exc:
            with self.sessions() as session, session.begin():
                audit(
                    session,
                    principal,
                    "evidence.refused",
                    f"gateway:{principal.name}",
                    now,
                    code=exc.code,
                    evidence_code=exc.evidence_code,
                    size_bytes=len(data),
                )
            raise
        sha256 = hashlib.sha256(data).hexdigest()
        with self.sessions() as session, session.begin():
            device = self._own_device(session, principal, checked.serial)
            if campaign_id is not None:
                targeted = session.scalars(
                    select(CampaignDevice.id).where(
                        CampaignDevice.campaign_id == campaign_id,
                        CampaignDevice.device_id == device.id,
                    )
                ).first()
                if targeted is None:
                    raise FleetNotFoundError(
                        f"campaign {campaign_id} does not target device {checked.serial!r}"
                    )
            known = session.scalars(
                select(EvidenceBundle).where(
                    EvidenceBundle.device_id == device.id, EvidenceBundle.sha256 == sha256
                )
            ).one_or_none()
            if known is not None:
                return _info(known, device.serial), False
            created = (
                datetime.fromtimestamp(checked.created_at, UTC)
                if checked.created_at is not None
                else None
            )
            bundle = EvidenceBundle(
                device_id=device.id,
                gateway_id=principal.gateway_id,
                campaign_id=campaign_id,
                uploaded_by=principal.name,
                received_at=now,
                created_at=created,
                outcome=checked.outcome,
                running_version=checked.running_version,
                sha256=sha256,
                size_bytes=len(data),
                data=data,
            )
            session.add(bundle)
            session.flush()
            audit(
                session,
                principal,
                "evidence.store",
                f"device:{device.serial}",
                now,
                evidence=bundle.id,
                sha256=sha256,
                outcome=checked.outcome,
                campaign=campaign_id,
            )
            return _info(bundle, device.serial), True

    def list_evidence(self, serial: str) -> list[EvidenceInfo]:
        """The device's bundles, newest first (its update record)."""
        with self.sessions() as session:
            device = self._device(session, serial)
            rows = session.execute(
                select(
                    EvidenceBundle.id,
                    EvidenceBundle.campaign_id,
                    EvidenceBundle.received_at,
                    EvidenceBundle.created_at,
                    EvidenceBundle.outcome,
                    EvidenceBundle.running_version,
                    EvidenceBundle.sha256,
                    EvidenceBundle.size_bytes,
                    EvidenceBundle.uploaded_by,
                )  # not the bytes
                .where(EvidenceBundle.device_id == device.id)
                .order_by(EvidenceBundle.id.desc())
            )
            return [EvidenceInfo(device_serial=serial, **row._asdict()) for row in rows]

    def get_evidence(self, evidence_id: int) -> tuple[EvidenceInfo, bytes]:
        """One bundle: its record and its bytes as uploaded."""
        with self.sessions() as session:
            bundle = session.get(EvidenceBundle, evidence_id)
            if bundle is None:
                raise FleetNotFoundError(f"no evidence bundle with id {evidence_id}")
            device = session.get(Device, bundle.device_id)
            assert device is not None
            return _info(bundle, device.serial), bundle.data
