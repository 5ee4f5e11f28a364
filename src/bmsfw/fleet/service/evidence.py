"""Evidence bundles: each update's record, uploaded by the device's gateway or filed by an
operator (an update done on site with `bmsfw update --evidence`), read by operators (see
:mod:`bmsfw.fleet.evidence` for what is checked)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import (
    EvidenceDeviceUnknownError,
    EvidenceRejectedError,
    EvidenceSerialMismatchError,
    FleetError,
    FleetNotFoundError,
    RequestTooLargeError,
)
from bmsfw.fleet.evidence import CheckedBundle, EvidenceInfo, check_upload
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
        filed_by=_filed_by(bundle.gateway_id),
    )


def _filed_by(gateway_id: int | None) -> str:
    """'gateway' (its agent uploaded it after an OTA update) or 'operator' (filed by hand)."""
    return "operator" if gateway_id is None else "gateway"


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
        checked = self._checked(principal, data)
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
            return self._keep(session, principal, device, data, checked, campaign_id)

    def file_evidence(
        self, principal: Principal, data: bytes, serial: str | None = None
    ) -> tuple[EvidenceInfo, bool]:
        """Verify and keep one bundle an operator files by hand (an update done on site).

        The same checks as a gateway's upload (E690); the device is the one the bundle's
        manifest names, which must be ``serial`` when given (E695) and a device of the
        fleet (E696). Every refusal is audited and stores nothing; the same bundle filed
        again is its record again (returned with ``False``).
        """
        assert principal.kind == "operator"
        checked = self._checked(principal, data)
        try:
            if serial is not None and serial != checked.serial:
                raise EvidenceSerialMismatchError(
                    f"the bundle is of device {checked.serial!r}, not {serial!r}"
                )
            with self.sessions() as session, session.begin():
                device = session.scalars(
                    select(Device).where(Device.serial == checked.serial)
                ).one_or_none()
                if device is None:
                    raise EvidenceDeviceUnknownError(
                        f"no device with serial {checked.serial!r} in the fleet"
                    )
                return self._keep(session, principal, device, data, checked, None)
        except (EvidenceSerialMismatchError, EvidenceDeviceUnknownError) as exc:
            self._audit_refusal(principal, exc, len(data), serial=checked.serial)
            raise

    def _checked(self, principal: Principal, data: bytes) -> CheckedBundle:
        """``data`` within the size limit and verified (E631, E690; a refusal is audited)."""
        limit = self.settings.max_evidence_bytes
        if len(data) > limit:
            raise RequestTooLargeError(f"evidence bundle of {len(data)} bytes, limit {limit}")
        try:
            return check_upload(data)
        except EvidenceRejectedError as exc:
            self._audit_refusal(principal, exc, len(data), evidence_code=exc.evidence_code)
            raise

    def _audit_refusal(
        self, principal: Principal, exc: FleetError, size: int, **detail: str
    ) -> None:
        with self.sessions() as session, session.begin():
            audit(
                session,
                principal,
                "evidence.refused",
                principal.label,
                self.clock.now(),
                code=exc.code,
                size_bytes=size,
                **detail,
            )

    def _keep(  # noqa: PLR0917 - the parts of one record
        self,
        session: Session,
        principal: Principal,
        device: Device,
        data: bytes,
        checked: CheckedBundle,
        campaign_id: int | None,
    ) -> tuple[EvidenceInfo, bool]:
        """Store the verified bundle of ``device`` unless it is there already."""
        sha256 = hashlib.sha256(data).hexdigest()
        known = session.scalars(
            select(EvidenceBundle).where(
                EvidenceBundle.device_id == device.id, EvidenceBundle.sha256 == sha256
            )
        ).one_or_none()
        if known is not None:
            return _info(known, device.serial), False
        now = self.clock.now()
        created = (
            datetime.fromtimestamp(checked.created_at, UTC)
            if checked.created_at is not None
            else None
        )
        bundle = EvidenceBundle(
            device_id=device.id,
            gateway_id=principal.gateway_id,  # None: filed by an operator
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
            filed_by=_filed_by(principal.gateway_id),
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
                    EvidenceBundle.gateway_id,
                )  # not the bytes
                .where(EvidenceBundle.device_id == device.id)
                .order_by(EvidenceBundle.id.desc())
            )
            records = []
            for row in rows:
                fields = row._asdict()
                filed_by = _filed_by(fields.pop("gateway_id"))
                records.append(EvidenceInfo(device_serial=serial, filed_by=filed_by, **fields))
            return records

    def get_evidence(self, evidence_id: int) -> tuple[EvidenceInfo, bytes]:
        """One bundle: its record and its bytes as uploaded."""
        with self.sessions() as session:
            bundle = session.get(EvidenceBundle, evidence_id)
            if bundle is None:
                raise FleetNotFoundError(f"no evidence bundle with id {evidence_id}")
            device = session.get(Device, bundle.device_id)
            assert device is not None
            return _info(bundle, device.serial), bundle.data
