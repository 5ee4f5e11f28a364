"""Agent state reports: one device, one campaign, one transition."""

from __future__ import annotations

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
)
from bmsfw.fleet.protocol import (
    TERMINAL_STATES,
    DeviceState,
    StateReport,
    StateReportResponse,
)
from bmsfw.fleet.service._base import (
    ALLOWED_TRANSITIONS,
    S,
    ServiceBase,
    _locking,
    _RefusedReportError,
    audit,
)
from bmsfw.package.version import device_runs


class ReportOps(ServiceBase):
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
