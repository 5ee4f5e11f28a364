"""Agent state reports: one device, one campaign, one transition."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    select,
)
from sqlalchemy.orm import Session

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import (
    DeviceNotOnGatewayError,
    FleetNotFoundError,
    InvalidStateTransitionError,
)
from bmsfw.fleet.models import (
    Campaign,
    CampaignDevice,
    DeviceStateEvent,
    Release,
    UpdateReportRecord,
)
from bmsfw.fleet.paging import Listing, PageRequest, keyset, listing
from bmsfw.fleet.protocol import (
    TERMINAL_STATES,
    DeviceState,
    ReportCheck,
    ReportStep,
    StateReport,
    StateReportResponse,
    UpdateSummary,
)
from bmsfw.fleet.service._base import (
    ALLOWED_TRANSITIONS,
    S,
    ServiceBase,
    _iso,
    _locking,
    _RefusedReportError,
    audit,
)
from bmsfw.package.version import device_runs


class ReportOps(ServiceBase):
    def device_update_page(self, serial: str, page: PageRequest) -> Listing:
        """A device's runs in campaigns, newest first (``GET /devices/{serial}/updates``):
        state, error code and the update report its agent sent, if any."""
        with self.sessions() as session:
            device = self._device(session, serial)
            rows = session.execute(
                keyset(
                    select(CampaignDevice, Campaign.name, Release.version)
                    .join(Campaign, Campaign.id == CampaignDevice.campaign_id)
                    .join(Release, Release.id == Campaign.release_id)
                    .where(CampaignDevice.device_id == device.id),
                    CampaignDevice.id,
                    page,
                    descending=True,
                )
            ).all()
            reports = stored_summaries(session, [cd.id for cd, _, _ in rows])
        return listing(
            rows,
            page,
            lambda row: int(row[0].id),
            lambda row: {
                "campaign_id": row[0].campaign_id,
                "campaign_name": row[1],
                "release_version": row[2],
                "state": row[0].state,
                "error_code": row[0].error_code,
                "detail": row[0].detail,
                "state_changed_at": _iso(row[0].state_changed_at),
                "finished_at": _iso(row[0].finished_at),
                "report": reports.get(row[0].id),
            },
        )

    def report_state(self, principal: Principal, body: StateReport) -> StateReportResponse:
        """Apply one device's state report, or refuse it.

        Accepted only from the device's own gateway, for work the campaign offered
        to it (not *pending*), along :data:`ALLOWED_TRANSITIONS`, and consistent with
        the firmware the report names (``succeeded`` runs the release's version,
        ``rolled_back`` does not). A report refused for a skipped state or a
        contradicting firmware version flags the device (``invalid_report``) and is
        audited; the flag and the audit entry commit although the report is refused.
        """
        try:
            with self.sessions() as session, session.begin():
                return self._report_state(session, principal, body)
        except _RefusedReportError as refused:
            refusal = refused.error
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            device = self._own_device(session, principal, body.device_serial)
            self._raise_flag(session, device, "invalid_report", refusal.message, now)
            audit(
                session,
                principal,
                "device.report_refused",
                f"device:{device.serial}",
                now,
                campaign=body.campaign_id,
                state=body.state.value,
                firmware_version=body.firmware_version,
                code=refusal.code,
                reason=refusal.message,
            )
        raise refusal

    def _report_state(
        self, session: Session, principal: Principal, body: StateReport
    ) -> StateReportResponse:
        now = self.clock.now()
        terminal = body.state in TERMINAL_STATES
        device = self._own_device(session, principal, body.device_serial)
        campaign_query = select(Campaign).where(Campaign.id == body.campaign_id)
        if terminal and _locking(session):
            campaign_query = campaign_query.with_for_update()
        campaign = session.scalars(campaign_query).one_or_none()
        if campaign is None:
            raise FleetNotFoundError(f"no campaign with id {body.campaign_id}")
        cd_query = select(CampaignDevice).where(
            CampaignDevice.campaign_id == campaign.id, CampaignDevice.device_id == device.id
        )
        if _locking(session):
            cd_query = cd_query.with_for_update()
        cd = session.scalars(cd_query).one_or_none()
        if cd is None:
            raise DeviceNotOnGatewayError(
                f"device {body.device_serial} is not a target of campaign {campaign.id}"
            )
        current = DeviceState(cd.state)
        if current == S.PENDING:
            raise DeviceNotOnGatewayError(
                f"campaign {campaign.id} has not offered work to device {device.serial} yet; "
                "reports are accepted only for offered work"
            )
        release = session.get(Release, campaign.release_id)
        assert release is not None
        runs_release = device_runs(release.version, body.firmware_version or "")
        if body.state == S.SUCCEEDED and not runs_release:
            raise _RefusedReportError(
                InvalidStateTransitionError(
                    f"device {device.serial} reported succeeded in campaign {campaign.id} "
                    f"running firmware {body.firmware_version or '(not named)'}, not the "
                    f"release's {release.version}"
                )
            )
        if body.state == S.ROLLED_BACK and runs_release:
            raise _RefusedReportError(
                InvalidStateTransitionError(
                    f"device {device.serial} reported rolled_back in campaign {campaign.id} "
                    f"but runs the release's version {release.version}"
                )
            )
        if body.state == current:
            if body.detail != cd.detail or body.error_code != cd.error_code:
                cd.detail, cd.error_code = body.detail, body.error_code
            _keep_update_report(session, cd.id, body, now)
            return StateReportResponse(
                device_serial=device.serial,
                campaign_id=campaign.id,
                state=current,
                campaign_status=campaign.status,
                changed=False,
            )
        if body.state not in ALLOWED_TRANSITIONS[current]:
            raise _RefusedReportError(
                InvalidStateTransitionError(
                    f"device {device.serial} in campaign {campaign.id} is {current.value}; "
                    f"it cannot become {body.state.value} (allowed next: "
                    f"{', '.join(sorted(s.value for s in ALLOWED_TRANSITIONS[current]))}"
                    " or none)"
                )
            )
        _keep_update_report(session, cd.id, body, now)
        cd.state = body.state.value
        cd.state_changed_at = now
        cd.error_code = body.error_code
        cd.detail = body.detail
        if terminal:
            cd.finished_at = now
        session.add(
            DeviceStateEvent(
                campaign_device_id=cd.id,
                state=cd.state,
                at=now,
                error_code=body.error_code,
                detail=body.detail,
            )
        )
        audit(
            session,
            principal,
            "device.state",
            f"device:{device.serial}",
            now,
            campaign=campaign.id,
            old=current.value,
            new=cd.state,
            error_code=body.error_code,
        )
        if terminal:
            session.flush()
            self._evaluate_locked(session, campaign, now)
        return StateReportResponse(
            device_serial=device.serial,
            campaign_id=campaign.id,
            state=body.state,
            campaign_status=campaign.status,
            changed=True,
        )


def stored_summaries(
    session: Session, campaign_device_ids: Sequence[int]
) -> dict[int, UpdateSummary]:
    """The kept update report of each campaign device named that has one (one query)."""
    if not campaign_device_ids:
        return {}
    records = session.scalars(
        select(UpdateReportRecord).where(
            UpdateReportRecord.campaign_device_id.in_(campaign_device_ids)
        )
    )
    return {
        r.campaign_device_id: UpdateSummary(
            outcome=r.outcome,
            kind=r.kind,
            failed_step=r.failed_step,
            error_code=r.error_code,
            error_message=r.error_message,
            running_version=r.running_version,
            package_version=r.package_version,
            steps=[ReportStep.model_validate(step) for step in r.steps],
            preflight=[ReportCheck.model_validate(check) for check in r.preflight],
            warnings=list(r.warnings),
        )
        for r in records
    }


def _keep_update_report(
    session: Session, campaign_device_id: int, body: StateReport, now: datetime
) -> None:
    """Keep the update report the state report carries, typed, as the run's latest (one
    row per campaign device: an agent waiting for preflight every poll adds none)."""
    summary = body.update
    if summary is None:
        return
    record = session.scalars(
        select(UpdateReportRecord).where(
            UpdateReportRecord.campaign_device_id == campaign_device_id
        )
    ).one_or_none()
    if record is None:
        record = UpdateReportRecord(campaign_device_id=campaign_device_id)
        session.add(record)
    record.received_at = now
    record.state = body.state.value
    record.outcome = summary.outcome
    record.kind = summary.kind
    record.failed_step = summary.failed_step
    record.error_code = summary.error_code
    record.error_message = summary.error_message
    record.running_version = summary.running_version
    record.package_version = summary.package_version
    record.steps = [step.model_dump() for step in summary.steps]
    record.preflight = [check.model_dump() for check in summary.preflight]
    record.warnings = list(summary.warnings)
