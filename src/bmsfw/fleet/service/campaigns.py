"""Campaigns: creation, control, progression, status."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import Session

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.campaigns import (
    DeviceFacts,
    DynamicCampaign,
    Join,
    TargetRule,
    assign_phases,
    cumulative_sizes,
    joins,
    refusal,
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
from bmsfw.fleet.schemas import CampaignSpec, Selector
from bmsfw.fleet.service._base import (
    _ACTIVE_CAMPAIGN,
    _CAMPAIGN_CREATION_LOCK,
    _TERMINAL_VALUES,
    S,
    _iso,
    _locking,
    audit,
)
from bmsfw.fleet.service.approvals import NEEDS_APPROVAL, ApprovalOps, needs_approval

log = logging.getLogger(__name__)

__all__ = ["CampaignOps", "hold_for_joins", "join_dynamic_campaigns"]


def _rule(release: Release, spec: CampaignSpec | dict[str, Any]) -> TargetRule:
    """The target rule of a campaign of ``release`` (``spec``: a new one's, or the stored
    selector of an existing one)."""
    selector = spec.selector if isinstance(spec, CampaignSpec) else Selector.model_validate(spec)
    return TargetRule.build(
        selector,
        hw_model=release.hw_model,
        hw_revisions=release.hw_revisions,
        version=release.version,
        security_counter=release.security_counter,
        active=release.deactivated_at is None,
        release_id=release.id,
    )


def _facts(device: Device, busy: bool) -> DeviceFacts:
    return DeviceFacts(
        serial=device.serial,
        model=device.model,
        hw_revision=device.hw_revision,
        firmware_version=device.firmware_version,
        security_counter=device.security_counter,
        site=device.site,
        tags=frozenset(device.tags),
        decommissioned=device.decommissioned_at is not None,
        busy=busy,
    )


def _pending_member(campaign_id: int, device_id: int, phase: int, now: datetime) -> CampaignDevice:
    """A device's row in a campaign, waiting for its phase (at creation or on joining)."""
    return CampaignDevice(
        campaign_id=campaign_id,
        device_id=device_id,
        phase_index=phase,
        state=S.PENDING.value,
        error_code="",
        detail="",
        created_at=now,
        state_changed_at=now,
        offered_at=None,
        finished_at=None,
    )


def _busy_ids(session: Session, device_ids: Collection[int] | None = None) -> set[int]:
    """Devices with open work in a campaign that holds its devices (of ``device_ids``;
    None: of the whole fleet)."""
    query = (
        select(CampaignDevice.device_id)
        .join(Campaign, Campaign.id == CampaignDevice.campaign_id)
        .where(
            Campaign.status.in_(_ACTIVE_CAMPAIGN),
            CampaignDevice.state.not_in(_TERMINAL_VALUES),
        )
    )
    if device_ids is not None:
        query = query.where(CampaignDevice.device_id.in_(device_ids))
    return set(session.scalars(query))


def _open_dynamic(session: Session) -> list[int]:
    return list(
        session.scalars(
            select(Campaign.id)
            .where(Campaign.dynamic.is_(True), Campaign.status.in_(_ACTIVE_CAMPAIGN))
            .order_by(Campaign.id)
        )
    )


def hold_for_joins(session: Session) -> bool:
    """Before a transaction writes devices that may join a dynamic campaign; True when
    an open dynamic campaign exists (then call :func:`join_dynamic_campaigns`).

    On PostgreSQL it first takes the campaign-creation advisory lock *shared*: check-ins
    do not wait for each other, but a creation (or a decommissioning) in progress is
    waited for and seen committed, and one that starts waits for us. So a device is never
    claimed by a creation and a join at once, and a dynamic campaign being created is
    not missed. Taken before any device row is written, the order creation and
    decommissioning take it in, so it cannot deadlock with them. SQLite serialises
    every writer anyway.
    """
    if _locking(session):
        session.execute(select(func.pg_advisory_xact_lock_shared(_CAMPAIGN_CREATION_LOCK)))
    return bool(_open_dynamic(session))


def join_dynamic_campaigns(
    session: Session, devices: Sequence[Device], now: datetime, cause: str
) -> list[Join]:
    """Let ``devices`` (just registered, or whose identity, firmware, site or tags just
    changed) join the open dynamic campaigns they now match (:func:`~bmsfw.fleet.campaigns.
    joins`): each in the campaign's last phase, *pending*: offered by the answer to the
    check-in that brought it (or a later one) once the campaign runs in its last phase.
    Audited (``campaign.join``, which the event stream sends)."""
    if not devices:
        return []
    campaign_ids = _open_dynamic(session)
    if not campaign_ids:
        return []
    query = (
        select(Campaign, Release)
        .join(Release, Release.id == Campaign.release_id)
        .where(Campaign.id.in_(campaign_ids))
        .order_by(Campaign.id)
    )
    if _locking(session):
        # As an offer does: a pause or cancel that commits first is seen, a later one waits.
        query = query.with_for_update(read=True, of=Campaign)
    open_campaigns = []
    for campaign, release in session.execute(query):
        try:
            rule = _rule(release, campaign.selector)
        except InvalidCampaignSpecError:  # cannot happen: it was valid when created
            continue
        phases = len(campaign.phases)
        open_campaigns.append(
            DynamicCampaign(campaign.id, campaign.dynamic, campaign.status, phases, rule)
        )
    by_id = {d.id: d for d in devices}
    busy = _busy_ids(session, list(by_id))
    members = {
        (campaign_id, by_id[device_id].serial)
        for campaign_id, device_id in session.execute(
            select(CampaignDevice.campaign_id, CampaignDevice.device_id).where(
                CampaignDevice.campaign_id.in_(campaign_ids),
                CampaignDevice.device_id.in_(list(by_id)),
            )
        )
    }
    decided = joins(open_campaigns, [_facts(d, d.id in busy) for d in devices], members)
    by_serial = {d.serial: d for d in devices}
    for join in decided:
        device = by_serial[join.serial]
        session.add(_pending_member(join.campaign_id, device.id, join.phase_index, now))
        log.info("device %s joined dynamic campaign %d", join.serial, join.campaign_id)
        audit(
            session,
            None,
            "campaign.join",
            f"campaign:{join.campaign_id}",
            now,
            device=join.serial,
            phase=join.phase_index,
            cause=cause,
        )
    if decided:
        session.flush()
    return decided


class CampaignOps(ApprovalOps):
    def preview_campaign(self, spec: CampaignSpec) -> dict[str, Any]:
        """Which devices a campaign of ``spec`` would target now; nothing is created or
        claimed (the dashboard's live preview). ``sites`` counts targets per site."""
        now = self.clock.now()
        online = timedelta(seconds=self.settings.online_after_s)
        with self.sessions() as session:
            release = session.get(Release, spec.release_id)
            if release is None:
                raise FleetNotFoundError(f"no release with id {spec.release_id}")
            targets = self._resolve_targets(session, release, spec)
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
            "needs_approval": needs_approval(
                self.settings.approval_above_devices,
                len(targets),
                downgrade=bool(spec.selector.downgrade_reason.strip()),
            ),
            "dynamic": spec.dynamic,
        }

    def create_campaign(self, principal: Principal, spec: CampaignSpec) -> dict[str, Any]:
        now = self.clock.now()
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
            targets = self._resolve_targets(session, release, spec)
            if not targets and not spec.dynamic:
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
                dynamic=spec.dynamic,
                status=(
                    NEEDS_APPROVAL
                    if needs_approval(
                        self.settings.approval_above_devices,
                        len(targets),
                        downgrade=bool(spec.selector.downgrade_reason.strip()),
                    )
                    else "running"
                ),
                # A dynamic campaign that matches nobody yet has nothing to try in its
                # early phases: it starts in the last one, which later devices join.
                current_phase=0 if targets else len(phases) - 1,
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
                session.add(_pending_member(campaign.id, by_serial[serial].id, phase, now))
            if campaign.status == NEEDS_APPROVAL:
                self.request_campaign_start(session, principal, campaign, now)
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
                dynamic=spec.dynamic,
            )
            session.flush()
            return self._campaign_dict(session, campaign)

    def _resolve_targets(
        self, session: Session, release: Release, spec: CampaignSpec
    ) -> list[Device]:
        """The devices :func:`~bmsfw.fleet.campaigns.refusal` accepts, in serial order."""
        rule = _rule(release, spec)
        # Narrowed in SQL on indexed columns (the rule checks these again, and the rest).
        query = select(Device).where(
            Device.model == rule.hw_model,
            Device.hw_revision.in_(sorted(rule.hw_revisions)),
            Device.decommissioned_at.is_(None),
        )
        if rule.sites:
            query = query.where(Device.site.in_(sorted(rule.sites)))
        if rule.serials:
            query = query.where(Device.serial.in_(sorted(rule.serials)))
        busy = _busy_ids(session)
        return [
            device
            for device in session.scalars(query.order_by(Device.serial))
            if refusal(rule, _facts(device, device.id in busy)) is None
        ]

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
                if campaign.status == NEEDS_APPROVAL:
                    self.withdraw_campaign_request(session, campaign_id, now)
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

    def start_approved_campaign(self, principal: Principal, campaign_id: int) -> dict[str, Any]:
        """Start a campaign waiting for approval (its request was just approved)."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            campaign = self._campaign_or_404(session, campaign_id, lock=True)
            if campaign.status != NEEDS_APPROVAL:
                raise CampaignStateError(
                    f"campaign {campaign_id} is {campaign.status}; only a campaign waiting "
                    "for approval can be approved"
                )
            campaign.status = "running"
            campaign.phase_started_at = now
            campaign.updated_at = now
            audit(
                session,
                principal,
                "campaign.approve",
                f"campaign:{campaign_id}",
                now,
                created_by=campaign.created_by,
            )
            self._evaluate_locked(session, campaign, now)
            return self._campaign_dict(session, campaign)

    def evaluate(self, campaign_id: int) -> dict[str, Any]:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            campaign = self._campaign_or_404(session, campaign_id, lock=True)
            self._evaluate_locked(session, campaign, now)
            return self._campaign_dict(session, campaign)

    def tick(self) -> list[int]:
        """Evaluate every running campaign (soak times end without a device report) and
        expire approval requests past their time."""
        self.expire_approvals()
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
