"""Four eyes: safety-relevant actions wait for a second person (one mechanism for all).

Two server settings switch it on: ``ServiceSettings.approval_above_devices`` (a campaign
that targets more devices is created with status ``needs_approval``: its devices are
claimed, nothing is offered) and ``ServiceSettings.four_eyes`` (every other action in
:data:`bmsfw.fleet.four_eyes.APPROVER_ROLE` is not done when asked for but stored as an
approval request). Either way the request is an ``approval_requests`` row: what runs once
approved, on what, who asked, until when (``approval_ttl_s``).

A second credential with the role the action needs approves it (:meth:`ApprovalOps.
approve_request`), and the action runs then, as the approver; the credential that asked,
or another of the same name, is refused (BMSFW-E650), a lower role too (E654), a decided
request answers E652 and an expired one E653. The requester may withdraw (reject) their
own request; a rejected or expired campaign start cancels the campaign (its devices are
free again). Asking, approving, refusing, rejecting, expiring and an approved action
that then failed are all in the audit log. The rules themselves are in
:mod:`bmsfw.fleet.four_eyes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bmsfw.errors import FleetError
from bmsfw.fleet.auth import Principal
from bmsfw.fleet.campaigns import paused_by_failures
from bmsfw.fleet.errors import (
    ApprovalExpiredError,
    CampaignStateError,
    FleetNotFoundError,
    SelfApprovalError,
)
from bmsfw.fleet.four_eyes import (
    APPROVER_ROLE,
    CAMPAIGN_START,
    CAMPAIGN_STARTS,
    DOWNGRADE_START,
    WAITING,
    ApprovalFacts,
    approval_refusal,
    needs_second_person,
    rejection_refusal,
)
from bmsfw.fleet.models import ApprovalRequest, Campaign, Credential, Gateway, Release
from bmsfw.fleet.paging import EVERYTHING, Listing, PageRequest, keyset, listing
from bmsfw.fleet.service._base import ServiceBase, _iso, _locking, audit

__all__ = ["NEEDS_APPROVAL", "ApprovalOps", "Outcome", "SafetyAction", "needs_approval"]

NEEDS_APPROVAL = "needs_approval"
# What the target of each action is called in the audit log ("release:3").
_TARGET_KIND = {
    CAMPAIGN_START: "campaign",
    DOWNGRADE_START: "campaign",
    "campaign.resume_after_failures": "campaign",
    "release.deactivate": "release",
    "token.revoke": "credential",
    "gateway.decommission": "gateway",
    "device.decommission": "device",
}
DEACTIVATION_MODES = ("stop", "finish")


def needs_approval(
    approval_above_devices: int | None, targets: int, *, downgrade: bool = False
) -> bool:
    """Whether a new campaign of ``targets`` devices waits for a second person: above the
    size set on the server, and an explicit downgrade always."""
    return downgrade or (approval_above_devices is not None and targets > approval_above_devices)


@dataclass(frozen=True)
class SafetyAction:
    """One safety-relevant action as asked for: ``subject`` is the id, name or serial of
    what it acts on; ``running`` (release deactivation only) what happens to the
    release's running campaigns: ``stop`` or ``finish``."""

    action: str
    subject: str
    reason: str = ""
    running: str = "stop"

    @property
    def target(self) -> str:
        return f"{_TARGET_KIND[self.action]}:{self.subject}"

    def params(self) -> dict[str, str]:
        return {"subject": self.subject, "reason": self.reason, "running": self.running}

    @classmethod
    def of(cls, row: ApprovalRequest) -> SafetyAction:
        p = row.params
        return cls(row.action, str(p["subject"]), str(p.get("reason", "")), str(p["running"]))


@dataclass(frozen=True)
class Outcome:
    """The answer to asking for an action: done now (``result``) or ``waiting`` for a
    second person (the approval request)."""

    result: dict[str, Any] | None = None
    waiting: dict[str, Any] | None = field(default=None)


def _facts(row: ApprovalRequest) -> ApprovalFacts:
    return ApprovalFacts(
        id=row.id,
        action=row.action,
        status=row.status,
        requested_by=row.requested_by,
        requested_by_id=row.requested_by_id,
        expires_at=row.expires_at,
        min_role=row.min_role,
    )


def approval_dict(row: ApprovalRequest) -> dict[str, Any]:
    return {
        "id": row.id,
        "action": row.action,
        "target": row.target,
        "summary": row.summary,
        "reason": str(row.params.get("reason", "")),
        "running": str(row.params.get("running", "")) if row.action == "release.deactivate" else "",
        "min_role": row.min_role,
        "status": row.status,
        "requested_at": row.requested_at.isoformat(),
        "requested_by": row.requested_by,
        "expires_at": row.expires_at.isoformat(),
        "decided_at": _iso(row.decided_at),
        "decided_by": row.decided_by,
        "note": row.note,
    }


class ApprovalOps(ServiceBase):
    # ---- asking -------------------------------------------------------------

    def submit(self, principal: Principal, action: SafetyAction) -> Outcome:
        """Do ``action`` now, or (four eyes on) store it as a request for a second person.

        A request is checked as far as it can be before it is stored (the target exists,
        a device is not busy): an action that would fail now is refused now."""
        if not needs_second_person(action.action, four_eyes=self.settings.four_eyes):
            return Outcome(result=self._run(principal, action))
        summary = self._describe(action)
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            row = self._open_request(session, principal, action, summary, now)
            return Outcome(waiting=approval_dict(row))

    def resume_or_request(self, principal: Principal, campaign_id: int) -> Outcome:
        """Resume a campaign; one its error threshold paused waits for a second person
        when four eyes is on (resuming accepts the failures seen so far)."""
        with self.sessions() as session:
            campaign = self._campaign_or_404(session, campaign_id, lock=False)
            after_failures = campaign.status == "paused" and paused_by_failures(
                campaign.pause_reason
            )
        if after_failures:
            return self.submit(
                principal, SafetyAction("campaign.resume_after_failures", str(campaign_id))
            )
        ops: Any = self  # CampaignOps, which builds on this class
        return Outcome(result=ops.resume(principal, campaign_id))

    def _open_request(
        self,
        session: Session,
        principal: Principal,
        action: SafetyAction,
        summary: str,
        now: datetime,
    ) -> ApprovalRequest:
        """The waiting request for ``action`` on its target (a new one unless one waits)."""
        self._expire_due(session, now)
        existing = session.scalars(
            select(ApprovalRequest).where(
                ApprovalRequest.action == action.action,
                ApprovalRequest.target == action.target,
                ApprovalRequest.status == WAITING,
            )
        ).first()
        if existing is not None:
            return existing
        row = ApprovalRequest(
            action=action.action,
            target=action.target,
            params=action.params(),
            summary=summary,
            min_role=APPROVER_ROLE[action.action],
            status=WAITING,
            requested_at=now,
            requested_by=principal.label,
            requested_by_id=principal.credential_id,
            expires_at=now + timedelta(seconds=self.settings.approval_ttl_s),
            decided_at=None,
            decided_by="",
            note="",
        )
        session.add(row)
        session.flush()
        audit(
            session,
            principal,
            "approval.request",
            action.target,
            now,
            approval=row.id,
            requested=action.action,
            reason=action.reason,
            **({"running": action.running} if action.action == "release.deactivate" else {}),
        )
        return row

    def request_campaign_start(
        self, session: Session, principal: Principal, campaign: Campaign, now: datetime
    ) -> None:
        """The request a campaign waiting for approval waits on (created with it); a
        downgrade campaign's needs a release manager."""
        why = str(campaign.selector.get("downgrade_reason", "")).strip()
        kind = DOWNGRADE_START if why else CAMPAIGN_START
        action = SafetyAction(kind, str(campaign.id), why)
        summary = f"start campaign {campaign.id} ({campaign.name})"
        if why:
            summary = f"start downgrade campaign {campaign.id} ({campaign.name})"
        self._open_request(session, principal, action, summary, now)

    def _describe(self, action: SafetyAction) -> str:
        """One line for the waiting list; raises what the action would raise now for a
        target that does not exist or cannot take it."""
        with self.sessions() as session:
            subject = action.subject
            if action.action == "release.deactivate":
                release = session.get(Release, int(subject))
                if release is None:
                    raise FleetNotFoundError(f"no release with id {subject}")
                what = "stop" if action.running == "stop" else "let finish"
                return (
                    f"deactivate release {release.id} ({release.product} {release.version}); "
                    f"{what} its running campaigns"
                )
            if action.action == "token.revoke":
                credential = session.get(Credential, int(subject))
                if credential is None:
                    raise FleetNotFoundError(f"no credential with id {subject}")
                who = f"{credential.kind}:{credential.name}, {credential.role}"
                return f"revoke token {credential.id} ({who})"
            if action.action == "gateway.decommission":
                known = select(Gateway.id).where(Gateway.name == subject)
                if session.scalars(known).first() is None:
                    raise FleetNotFoundError(f"no gateway named {subject!r}")
                return f"decommission gateway {subject} (its credentials revoked)"
            if action.action == "device.decommission":
                self._check_decommission(session, subject)
                return f"decommission device {subject}"
            campaign = self._campaign_or_404(session, int(subject), lock=False)
            return f"resume campaign {campaign.id} ({campaign.name}): {campaign.pause_reason}"

    # ---- deciding -----------------------------------------------------------

    def approve_request(self, principal: Principal, approval_id: int) -> dict[str, Any]:
        """Approve a waiting request as a second person: the action runs now, as
        ``principal``. Returns the request and the action's result."""
        now = self.clock.now()
        refused: FleetError | None = None
        with self.sessions() as session, session.begin():
            self._expire_due(session, now)
            row = self._request_or_404(session, approval_id)
            refused = approval_refusal(_facts(row), principal, now)
            if refused is None:
                row.status, row.decided_at, row.decided_by = "approved", now, principal.label
                audit(
                    session,
                    principal,
                    "approval.approve",
                    row.target,
                    now,
                    approval=row.id,
                    requested=row.action,
                    requested_by=row.requested_by,
                )
            elif isinstance(refused, SelfApprovalError) or refused.code == "BMSFW-E654":
                # The refusal is itself an auditable event, so it commits before raising.
                audit(
                    session,
                    principal,
                    "approval.refused",
                    row.target,
                    now,
                    approval=row.id,
                    requested=row.action,
                    code=refused.code,
                )
            action = SafetyAction.of(row)
        if refused is not None:
            raise refused
        try:
            result = self._run(principal, action)
        except FleetError as exc:
            with self.sessions() as session, session.begin():
                row = self._request_or_404(session, approval_id)
                row.status, row.note = "failed", f"{exc.code}: {exc.message}"[:2000]
                audit(
                    session, principal, "approval.failed", row.target, now, approval=row.id,
                    code=exc.code,
                )  # fmt: skip
            raise
        return {"approval": self.get_approval(approval_id), "result": result}

    def reject_request(self, principal: Principal, approval_id: int, note: str) -> dict[str, Any]:
        """Reject a waiting request (its requester: withdraw it); nothing is done."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            self._expire_due(session, now)
            row = self._request_or_404(session, approval_id)
            refused = rejection_refusal(_facts(row), principal, now)
            if refused is not None:
                raise refused
            withdrawn = principal.label == row.requested_by
            self._close(session, row, "withdrawn" if withdrawn else "rejected", principal, now)
            row.note = note[:2000]
            audit(
                session,
                principal,
                "approval.reject",
                row.target,
                now,
                approval=row.id,
                requested=row.action,
                note=note,
                withdrawn=withdrawn,
            )
            return approval_dict(row)

    def approve(self, principal: Principal, campaign_id: int) -> dict[str, Any]:
        """Approve the start of a campaign waiting for approval (its request, by campaign)."""
        with self.sessions() as session, session.begin():
            self._expire_due(session, self.clock.now())
        with self.sessions() as session:
            campaign = self._campaign_or_404(session, campaign_id, lock=False)
            request_id = session.scalars(
                select(ApprovalRequest.id).where(
                    ApprovalRequest.action.in_(CAMPAIGN_STARTS),
                    ApprovalRequest.target == f"campaign:{campaign_id}",
                    ApprovalRequest.status == WAITING,
                )
            ).first()
            if campaign.status != NEEDS_APPROVAL or request_id is None:
                raise CampaignStateError(
                    f"campaign {campaign_id} is {campaign.status}; only a campaign waiting "
                    "for approval can be approved"
                )
        result: dict[str, Any] = self.approve_request(principal, request_id)["result"]
        return result

    # ---- reading ------------------------------------------------------------

    def approval_page(self, status: str = WAITING, page: PageRequest = EVERYTHING) -> Listing:
        """Approval requests in the order asked (``status`` "": every status), one page."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            self._expire_due(session, now)
        with self.sessions() as session:
            query = select(ApprovalRequest)
            if status:
                query = query.where(ApprovalRequest.status == status)
            rows = session.scalars(keyset(query, ApprovalRequest.id, page)).all()
            return listing(rows, page, lambda r: int(r.id), approval_dict)

    def decided_approvals(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` requests decided (or expired) last, newest first."""
        with self.sessions() as session:
            rows = session.scalars(
                select(ApprovalRequest)
                .where(ApprovalRequest.status != WAITING)
                .order_by(ApprovalRequest.id.desc())
                .limit(limit)
            )
            return [approval_dict(r) for r in rows]

    def waiting_approvals(self) -> int:
        """How many requests wait (the dashboard's menu shows it)."""
        with self.sessions() as session:
            count = session.scalar(
                select(func.count()).where(
                    ApprovalRequest.status == WAITING,
                    ApprovalRequest.expires_at > self.clock.now(),
                )
            )
            return int(count or 0)

    def get_approval(self, approval_id: int) -> dict[str, Any]:
        with self.sessions() as session:
            return approval_dict(self._request_or_404(session, approval_id, lock=False))

    def expire_approvals(self) -> int:
        """Expire every waiting request past its time (the tick); returns how many."""
        with self.sessions() as session, session.begin():
            return self._expire_due(session, self.clock.now())

    # ---- internals ----------------------------------------------------------

    def _request_or_404(
        self, session: Session, approval_id: int, *, lock: bool = True
    ) -> ApprovalRequest:
        query = select(ApprovalRequest).where(ApprovalRequest.id == approval_id)
        if lock and _locking(session):
            query = query.with_for_update()
        row = session.scalars(query).one_or_none()
        if row is None:
            raise FleetNotFoundError(f"no approval request with id {approval_id}")
        return row

    def _expire_due(self, session: Session, now: datetime) -> int:
        query = select(ApprovalRequest).where(
            ApprovalRequest.status == WAITING, ApprovalRequest.expires_at <= now
        )
        if _locking(session):
            query = query.with_for_update(skip_locked=True)
        due = list(session.scalars(query.order_by(ApprovalRequest.id)))
        for row in due:
            self._close(session, row, "expired", None, now)
            audit(
                session,
                None,
                "approval.expire",
                row.target,
                now,
                approval=row.id,
                requested=row.action,
                error=ApprovalExpiredError.code,
            )
        return len(due)

    def _close(
        self,
        session: Session,
        row: ApprovalRequest,
        status: str,
        principal: Principal | None,
        now: datetime,
    ) -> None:
        """End a request undone; a campaign that waited on it is cancelled (its devices
        are free for another campaign)."""
        row.status, row.decided_at = status, now
        row.decided_by = principal.label if principal else "system"
        if row.action not in CAMPAIGN_STARTS:
            return
        campaign = self._campaign_or_404(session, int(row.params["subject"]), lock=True)
        if campaign.status == NEEDS_APPROVAL:
            why = f"approval request {row.id} {status}"
            campaign.status, campaign.pause_reason = "cancelled", why
            campaign.finished_at = campaign.updated_at = now
            audit(session, principal, "campaign.cancel", f"campaign:{campaign.id}", now, reason=why)

    def withdraw_campaign_request(self, session: Session, campaign_id: int, now: datetime) -> None:
        """A campaign waiting for approval was cancelled: its request ends with it."""
        for row in session.scalars(
            select(ApprovalRequest).where(
                ApprovalRequest.action.in_(CAMPAIGN_STARTS),
                ApprovalRequest.target == f"campaign:{campaign_id}",
                ApprovalRequest.status == WAITING,
            )
        ):
            row.status, row.decided_at, row.decided_by = "withdrawn", now, "campaign cancelled"

    def _run(self, principal: Principal, action: SafetyAction) -> dict[str, Any]:
        """Do the action (the service's own method for it, which audits it)."""
        ops: Any = self  # the whole FleetService, whose parts build on this one
        who, subject, reason = principal, action.subject, action.reason
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            CAMPAIGN_START: lambda: ops.start_approved_campaign(who, int(subject)),
            DOWNGRADE_START: lambda: ops.start_approved_campaign(who, int(subject)),
            "campaign.resume_after_failures": lambda: ops.resume(who, int(subject)),
            "release.deactivate": lambda: ops.deactivate_release(
                who, int(subject), reason, action.running
            ),
            "token.revoke": lambda: ops.revoke_token(who, int(subject)),
            "gateway.decommission": lambda: ops.decommission_gateway(who, subject, reason),
            "device.decommission": lambda: ops.decommission_device(who, subject, reason),
        }
        return runs[action.action]()
