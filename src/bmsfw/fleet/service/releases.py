"""Releases and their files."""

from __future__ import annotations

from datetime import datetime
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import (
    DeviceNotOnGatewayError,
    FleetNotFoundError,
    ReleaseDeactivatedError,
    ReleaseRejectedError,
    UploadConflictError,
)
from bmsfw.fleet.models import (
    Campaign,
    CampaignDevice,
    Device,
    Release,
)
from bmsfw.fleet.paging import EVERYTHING, Listing, PageRequest, keyset, listing
from bmsfw.fleet.releases import ReleaseFacts, TrustRoot, safe_filename, verify_upload
from bmsfw.fleet.service._base import (
    _ACTIVE_CAMPAIGN,
    S,
    _locking,
    _release_dict,
    audit,
)
from bmsfw.fleet.service.approvals import DEACTIVATION_MODES, NEEDS_APPROVAL, ApprovalOps


class ReleaseOps(ApprovalOps):
    def add_release(
        self, principal: Principal, facts: ReleaseFacts, source: IO[bytes], filename: str
    ) -> tuple[dict[str, Any], bool]:
        """Store a verified release from the seekable file ``source`` (copied into the
        database a chunk at a time); returns (release, created). Uploading twice is
        idempotent."""
        now = self.clock.now()
        try:
            return self._store_release(principal, facts, source, filename, now)
        except IntegrityError:
            # A concurrent upload of the same file committed its chunks and row first
            # (PostgreSQL: the unique keys on the SHA-256 refuse this insert; SQLite
            # serialises writers, so the second upload finds the first). This
            # transaction rolled back whole: nothing of this upload is left.
            with self.sessions() as session:
                winner = session.scalars(
                    select(Release.id).where(Release.sha256 == facts.sha256)
                ).first()
            if winner is None:
                raise
            raise UploadConflictError(
                f"release {winner} with SHA-256 {facts.sha256} was stored by a concurrent "
                f"upload of the same file; this upload stored nothing"
            ) from None

    def _store_release(
        self,
        principal: Principal,
        facts: ReleaseFacts,
        source: IO[bytes],
        filename: str,
        now: datetime,
    ) -> tuple[dict[str, Any], bool]:
        with self.sessions() as session, session.begin():
            existing = session.scalars(
                select(Release).where(Release.sha256 == facts.sha256)
            ).one_or_none()
            if existing is not None:
                return _release_dict(existing), False
            # The file and its release row commit together, or neither does.
            self.store.put(session.connection(), facts.sha256, source)
            release = Release(
                **facts.release_row(filename=filename, uploaded_at=now, by=principal.label)
            )
            session.add(release)
            session.flush()
            audit(
                session,
                principal,
                "release.upload",
                f"release:{release.id}",
                now,
                product=facts.product,
                version=facts.version,
                sha256=facts.sha256,
                safety_class=facts.safety_class,
            )
            return _release_dict(release), True

    def ingest_release(
        self, principal: Principal, trust: TrustRoot, source: IO[bytes], filename: str
    ) -> tuple[dict[str, Any], bool, ReleaseFacts]:
        """Verify the seekable file ``source`` against ``trust`` and store it (API and
        dashboard uploads alike); a rejection is audited and raised (nothing stored).
        Returns (release, created, what was verified)."""
        try:
            facts = verify_upload(source, trust, now=self.clock.now())
        except ReleaseRejectedError as exc:
            self.audit_rejected_upload(principal, filename, exc.package_code)
            raise
        release, created = self.add_release(principal, facts, source, safe_filename(filename))
        return release, created, facts

    def audit_rejected_upload(self, principal: Principal, filename: str, code: str) -> None:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            audit(session, principal, "release.rejected", f"file:{filename}", now, code=code)

    def release_page(self, page: PageRequest = EVERYTHING) -> Listing:
        """Releases in upload order, one page."""
        with self.sessions() as session:
            rows = session.scalars(keyset(select(Release), Release.id, page)).all()
            return listing(rows, page, lambda r: int(r.id), _release_dict)

    def list_releases(self) -> list[dict[str, Any]]:
        return self.release_page().items

    def get_release(self, release_id: int) -> dict[str, Any]:
        with self.sessions() as session:
            release = session.get(Release, release_id)
            if release is None:
                raise FleetNotFoundError(f"no release with id {release_id}")
            return _release_dict(release)

    def deactivate_release(
        self, principal: Principal, release_id: int, reason: str, running: str = "stop"
    ) -> dict[str, Any]:
        """Pull a release: no new campaign may use it. Its campaigns waiting for approval
        are cancelled; its running and paused ones too with ``running="stop"`` (offers not
        yet taken are withdrawn, gateways can no longer download it), or they run to their
        end with ``running="finish"`` (their devices may still download it; nothing else
        may). The release and its history stay. Idempotent."""
        if running not in DEACTIVATION_MODES:
            raise ValueError(f"running campaigns may 'stop' or 'finish', not {running[:20]!r}")
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            # Release row, then its campaigns' rows (a creation locks the release row
            # too, so it either sees the deactivation or finishes before it).
            query = select(Release).where(Release.id == release_id)
            if _locking(session):
                query = query.with_for_update()
            release = session.scalars(query).one_or_none()
            if release is None:
                raise FleetNotFoundError(f"no release with id {release_id}")
            if release.deactivated_at is None:
                release.deactivated_at, release.deactivated_by = now, principal.label
                stopped = _ACTIVE_CAMPAIGN if running == "stop" else (NEEDS_APPROVAL,)
                campaigns = select(Campaign).where(
                    Campaign.release_id == release_id, Campaign.status.in_(stopped)
                )
                if _locking(session):
                    campaigns = campaigns.with_for_update()
                cancelled = []
                why = f"release {release_id} deactivated" + (f": {reason}" if reason else "")
                for campaign in session.scalars(campaigns.order_by(Campaign.id)):
                    if campaign.status == NEEDS_APPROVAL:
                        self.withdraw_campaign_request(session, campaign.id, now)
                    campaign.status, campaign.pause_reason = "cancelled", why
                    campaign.finished_at = campaign.updated_at = now
                    cancelled.append(campaign.id)
                    audit(
                        session,
                        principal,
                        "campaign.cancel",
                        f"campaign:{campaign.id}",
                        now,
                        reason=why,
                    )
                audit(
                    session,
                    principal,
                    "release.deactivate",
                    f"release:{release_id}",
                    now,
                    reason=reason,
                    running=running,
                    cancelled_campaigns=cancelled,
                )
            return _release_dict(release)

    def served_release_ids(self) -> set[int]:
        """Releases gateways may still get: active ones, and deactivated ones whose
        campaigns were let finish while such a campaign is open (TUF targets)."""
        with self.sessions() as session:
            active = session.scalars(select(Release.id).where(Release.deactivated_at.is_(None)))
            finishing = session.scalars(
                select(Campaign.release_id).where(Campaign.status.in_(("running", "paused")))
            )
            return set(active) | set(finishing)

    @staticmethod
    def _finishing(session: Session, release_id: int) -> bool:
        """A deactivated release whose campaigns were let finish, one still open."""
        return (
            session.scalars(
                select(Campaign.id).where(
                    Campaign.release_id == release_id, Campaign.status.in_(("running", "paused"))
                )
            ).first()
            is not None
        )

    def artifact_for(self, principal: Principal, release_id: int) -> Release:
        """The release whose file ``principal`` may download (checked present and whole)."""
        with self.sessions() as session:
            release = session.get(Release, release_id)
            if release is None:
                raise FleetNotFoundError(f"no release with id {release_id}")
            if principal.kind == "gateway":
                if release.deactivated_at is not None and not self._finishing(session, release_id):
                    raise ReleaseDeactivatedError(f"release {release_id} was pulled")
                # A gateway gets only what was offered to one of its devices.
                offered = session.scalars(
                    select(CampaignDevice.id)
                    .join(Campaign, Campaign.id == CampaignDevice.campaign_id)
                    .join(Device, Device.id == CampaignDevice.device_id)
                    .where(
                        Campaign.release_id == release_id,
                        Device.gateway_id == principal.gateway_id,
                        CampaignDevice.state != S.PENDING.value,
                    )
                ).first()
                if offered is None:
                    raise DeviceNotOnGatewayError(
                        f"release {release_id} was not offered to any device of gateway "
                        f"{principal.name}"
                    )
        self.store.check(release.sha256, release.size_bytes)
        return release
