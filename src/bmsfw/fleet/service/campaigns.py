"""Campaigns: creation, control, progression, status."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import Session

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.campaigns import (
    assign_phases,
    cumulative_sizes,
    rollout_order,
)
from bmsfw.fleet.errors import (
    CampaignStateError,
    FleetNotFoundError,
    InvalidCampaignSpecError,
    NoTargetDevicesError,
    ReleaseDeactivatedError,
    SafetyCriticalOtaRefusedError,
)
from bmsfw.fleet.models import (
    Campaign,
    CampaignDevice,
    Device,
    DeviceStateEvent,
    Release,
    SiteWindow,
)
from bmsfw.fleet.paging import EVERYTHING, Listing, PageRequest, keyset, listing
from bmsfw.fleet.schemas import CampaignSpec
from bmsfw.fleet.service._base import (
    _ACTIVE_CAMPAIGN,
    _CAMPAIGN_CREATION_LOCK,
    _TERMINAL_VALUES,
    S,
    ServiceBase,
    _iso,
    _locking,
    audit,
)
from bmsfw.fleet.service.approvals import NEEDS_APPROVAL, needs_approval
from bmsfw.package.version import VersionRange, device_runs


def _version_range(spec: CampaignSpec) -> VersionRange | None:
    if not spec.selector.version_range:
        return None
    try:
        return VersionRange.parse(spec.selector.version_range)
    except ValueError as exc:
        raise InvalidCampaignSpecError(f"selector.version_range: {exc}") from exc


class CampaignOps(ServiceBase):
    def preview_campaign(self, spec: CampaignSpec) -> dict[str, Any]:
        """Which devices a campaign of ``spec`` would target now; nothing is created or
        claimed (the dashboard's live preview). ``sites`` counts targets per site."""
        range_ = _version_range(spec)
        now = self.clock.now()
        online = timedelta(seconds=self.settings.online_after_s)
        with self.sessions() as session:
            release = session.get(Release, spec.release_id)
            if release is None:
                raise FleetNotFoundError(f"no release with id {spec.release_id}")
            targets = self._resolve_targets(session, release, spec, range_)
            sites = dict(sorted(Counter(d.site for d in targets).items()))
            windows = {
                w.site: {"timezone": w.timezone, "windows": w.windows}
                for w in session.scalars(select(SiteWindow).where(SiteWindow.site.in_(sites)))
                if w.windows
            }
        return {
            "targets": len(targets),
            "sites": sites,
            # Sites that only install inside maintenance windows (the others: any time).
            "windows": dict(sorted(windows.items())),
            "offline": sum(1 for d in targets if now - d.last_seen_at >= online),
            "needs_approval": needs_approval(self.settings.approval_above_devices, len(targets)),
        }

    def create_campaign(self, principal: Principal, spec: CampaignSpec) -> dict[str, Any]:
        now = self.clock.now()
        range_ = _version_range(spec)
        refused: SafetyCriticalOtaRefusedError | None = None
        with self.sessions() as session, session.begin():
            release = session.get(Release, spec.release_id)
            if release is not None and release.safety_class != "standard":
                # The refusal is itself an auditable event, so it commits before raising.
                audit(
                    session,
                    principal,
                    "campaign.refused",
                    f"release:{release.id}",
                    now,
                    reason=release.safety_class,
                    name=spec.name,
                )
                refused = SafetyCriticalOtaRefusedError(
                    f"release {release.id} ({release.product} {release.version}) is "
                    f"{release.safety_class}; it cannot be the subject of an OTA campaign"
                )
        if refused is not None:
            raise refused
        with self.sessions() as session, session.begin():
            if _locking(session):
                # Creations one at a time: a device in an open campaign is left out when
                # targets are resolved, so two creations must not resolve from the same
                # snapshot (each would claim the device). Held until this one commits.
                # SQLite's BEGIN IMMEDIATE already serialises every writer.
                session.execute(select(func.pg_advisory_xact_lock(_CAMPAIGN_CREATION_LOCK)))
            release = session.get(Release, spec.release_id, with_for_update=_locking(session))
            if release is None:
                raise FleetNotFoundError(f"no release with id {spec.release_id}")
            if release.deactivated_at is not None:
                raise ReleaseDeactivatedError(
                    f"release {release.id} ({release.product} {release.version}) was "
                    f"deactivated on {release.deactivated_at.isoformat()}"
                )
            targets = self._resolve_targets(session, release, spec, range_)
            if not targets:
                raise NoTargetDevicesError(
                    f"no device matches the selector for release {release.id} "
                    f"({release.hw_model} rev {', '.join(release.hw_revisions)})"
                )
            sizes = cumulative_sizes(spec.phases, len(targets))
            phases = [
                {**p.model_dump(), "cumulative_devices": size}
                for p, size in zip(spec.phases, sizes, strict=True)
            ]
            campaign = Campaign(
                name=spec.name,
                release_id=release.id,
                selector=spec.selector.model_dump(),
                phases=phases,
                error_threshold_pct=spec.error_threshold_pct,
                bandwidth_floor_bps=spec.bandwidth_floor_bps,
                status=(
                    NEEDS_APPROVAL
                    if needs_approval(self.settings.approval_above_devices, len(targets))
                    else "running"
                ),
                current_phase=0,
                phase_started_at=now,
                phase_threshold_met_at=None,
                acknowledged_failures=0,
                pause_reason="",
                created_at=now,
                created_by=principal.label,
                updated_at=now,
                finished_at=None,
            )
            session.add(campaign)
            session.flush()
            by_serial = {d.serial: d for d in targets}
            order = rollout_order(str(campaign.id), list(by_serial))
            for serial, phase in assign_phases(order, sizes).items():
                session.add(
                    CampaignDevice(
                        campaign_id=campaign.id,
                        device_id=by_serial[serial].id,
                        phase_index=phase,
                        state=S.PENDING.value,
                        error_code="",
                        detail="",
                        created_at=now,
                        state_changed_at=now,
                        offered_at=None,
                        finished_at=None,
                    )
                )
            audit(
                session,
                principal,
                "campaign.create",
                f"campaign:{campaign.id}",
                now,
                release=release.id,
                targets=len(targets),
                phases=phases,
                status=campaign.status,
            )
            session.flush()
            return self._campaign_dict(session, campaign)

    def _resolve_targets(
        self,
        session: Session,
        release: Release,
        spec: CampaignSpec,
        range_: VersionRange | None,
    ) -> list[Device]:
        sel = spec.selector
        if sel.models and release.hw_model not in sel.models:
            raise InvalidCampaignSpecError(
                f"release {release.id} is for {release.hw_model}, not {', '.join(sel.models)}"
            )
        revisions = set(release.hw_revisions)
        if sel.hw_revisions:
            revisions &= set(sel.hw_revisions)
        query = select(Device).where(
            Device.model == release.hw_model,
            Device.hw_revision.in_(sorted(revisions)),
            Device.decommissioned_at.is_(None),
        )
        if sel.sites:
            query = query.where(Device.site.in_(sel.sites))
        if sel.serials:
            query = query.where(Device.serial.in_(sel.serials))
        busy = set(
            session.scalars(
                select(CampaignDevice.device_id)
                .join(Campaign, Campaign.id == CampaignDevice.campaign_id)
                .where(
                    Campaign.status.in_(_ACTIVE_CAMPAIGN),
                    CampaignDevice.state.not_in(_TERMINAL_VALUES),
                )
            )
        )
        wanted_tags = set(sel.tags)
        targets = []
        for device in session.scalars(query.order_by(Device.serial)):
            if device.id in busy or device_runs(release.version, device.firmware_version):
                continue
            if device.security_counter > release.security_counter:
                continue  # anti-rollback would reject it on the device anyway
            if wanted_tags and not wanted_tags <= set(device.tags):
                continue
            if range_ is not None:
                try:
                    if not range_.contains(device.firmware_version):
                        continue
                except ValueError:
                    continue
            targets.append(device)
        return targets

    def pause(self, principal: Principal, campaign_id: int, reason: str) -> dict[str, Any]:
        return self._set_status(principal, campaign_id, "pause", reason)

    def resume(self, principal: Principal, campaign_id: int) -> dict[str, Any]:
        return self._set_status(principal, campaign_id, "resume", "")

    def cancel(self, principal: Principal, campaign_id: int, reason: str) -> dict[str, Any]:
        return self._set_status(principal, campaign_id, "cancel", reason)

    def _set_status(
        self, principal: Principal, campaign_id: int, action: str, reason: str
    ) -> dict[str, Any]:
        now = self.clock.now()
        allowed = {"pause": ("running",), "resume": ("paused",), "cancel": _ACTIVE_CAMPAIGN}
        with self.sessions() as session, session.begin():
            campaign = self._campaign_or_404(session, campaign_id, lock=True)
            if campaign.status not in allowed[action]:
                raise CampaignStateError(
                    f"campaign {campaign_id} is {campaign.status}; cannot {action} it"
                )
            if action == "pause":
                campaign.status, campaign.pause_reason = "paused", reason or "paused by operator"
            elif action == "resume":
                # Failures seen so far were reviewed by whoever resumes; the error
                # threshold counts only new ones from here on.
                campaign.acknowledged_failures = self._counts(session, campaign).failed
                campaign.status, campaign.pause_reason = "running", ""
            else:
                campaign.status, campaign.pause_reason = "cancelled", reason or "cancelled"
                campaign.finished_at = now
            campaign.updated_at = now
            audit(
                session,
                principal,
                f"campaign.{action}",
                f"campaign:{campaign_id}",
                now,
                reason=reason,
            )
            if action == "resume":
                self._evaluate_locked(session, campaign, now)
            return self._campaign_dict(session, campaign)

    def evaluate(self, campaign_id: int) -> dict[str, Any]:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            campaign = self._campaign_or_404(session, campaign_id, lock=True)
            self._evaluate_locked(session, campaign, now)
            return self._campaign_dict(session, campaign)

    def tick(self) -> list[int]:
        """Evaluate every running campaign (soak times end without a device report)."""
        with self.sessions() as session:
            ids = list(session.scalars(select(Campaign.id).where(Campaign.status == "running")))
        for campaign_id in ids:
            self.evaluate(campaign_id)
        return ids

    def campaign_page(self, page: PageRequest = EVERYTHING) -> Listing:
        """Campaigns in creation order, one page."""
        with self.sessions() as session:
            rows = session.scalars(keyset(select(Campaign), Campaign.id, page)).all()
            return listing(
                rows, page, lambda c: int(c.id), lambda c: self._campaign_dict(session, c)
            )

    def list_campaigns(self) -> list[dict[str, Any]]:
        return self.campaign_page().items

    def get_campaign(self, campaign_id: int) -> dict[str, Any]:
        with self.sessions() as session:
            return self._campaign_dict(
                session, self._campaign_or_404(session, campaign_id, lock=False)
            )

    def campaign_devices(self, campaign_id: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            self._campaign_or_404(session, campaign_id, lock=False)
            rows = session.execute(
                select(CampaignDevice, Device.serial)
                .join(Device, Device.id == CampaignDevice.device_id)
                .where(CampaignDevice.campaign_id == campaign_id)
                .order_by(CampaignDevice.phase_index, Device.serial)
            ).all()
            events: dict[int, list[dict[str, Any]]] = {}
            for e in session.scalars(
                select(DeviceStateEvent)
                .where(DeviceStateEvent.campaign_device_id.in_([cd.id for cd, _ in rows]))
                .order_by(DeviceStateEvent.id)
            ):
                events.setdefault(e.campaign_device_id, []).append(
                    {"state": e.state, "at": e.at.isoformat(), "error_code": e.error_code}
                )
            return [
                {
                    "device_serial": serial,
                    "phase": cd.phase_index,
                    "state": cd.state,
                    "error_code": cd.error_code,
                    "detail": cd.detail,
                    "offered_at": _iso(cd.offered_at),
                    "state_changed_at": _iso(cd.state_changed_at),
                    "finished_at": _iso(cd.finished_at),
                    "history": events.get(cd.id, []),
                }
                for cd, serial in rows
            ]
