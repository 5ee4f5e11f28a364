"""Four eyes: a campaign above a size set on the server waits for a second person.

With ``ServiceSettings.approval_above_devices`` set (None: off; 0: every campaign), a
campaign that targets more devices is created with status ``needs_approval``: its
devices are claimed (no other campaign takes them) but nothing is offered and the
tick does not move it. Another credential with the operator role or above approves it
(:meth:`ApprovalOps.approve`), which starts its first phase then; the credential that
created it, or another credential of the same name, is refused (BMSFW-E650). Creating,
approving and refusing are all in the audit log; whoever created a campaign is read
from its ``campaign.create`` entry there (the audit log is the record of who did what).
A campaign waiting for approval can be cancelled like any open one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bmsfw.fleet.auth import Principal, roles_at_least
from bmsfw.fleet.errors import CampaignStateError, RoleNotAllowedError, SelfApprovalError
from bmsfw.fleet.models import AuditEntry
from bmsfw.fleet.service._base import ServiceBase, audit

__all__ = ["NEEDS_APPROVAL", "ApprovalOps", "needs_approval"]

NEEDS_APPROVAL = "needs_approval"


def needs_approval(approval_above_devices: int | None, targets: int) -> bool:
    """Whether a new campaign of ``targets`` devices waits for a second person."""
    return approval_above_devices is not None and targets > approval_above_devices


class ApprovalOps(ServiceBase):
    def approve(self, principal: Principal, campaign_id: int) -> dict[str, Any]:
        """Start a campaign that waits for approval, as a second person."""
        now = self.clock.now()
        refused: SelfApprovalError | None = None
        if principal.role not in roles_at_least("operator"):
            raise RoleNotAllowedError(f"role {principal.role!r} may not approve campaigns")
        with self.sessions() as session, session.begin():
            campaign = self._campaign_or_404(session, campaign_id, lock=True)
            if campaign.status != NEEDS_APPROVAL:
                raise CampaignStateError(
                    f"campaign {campaign_id} is {campaign.status}; only a campaign waiting "
                    "for approval can be approved"
                )
            creator_id = session.scalars(
                select(AuditEntry.actor_id)
                .where(
                    AuditEntry.action == "campaign.create",
                    AuditEntry.target == f"campaign:{campaign_id}",
                )
                .order_by(AuditEntry.id)
                .limit(1)
            ).first()
            if creator_id == principal.credential_id or campaign.created_by == principal.label:
                # The refusal is itself an auditable event, so it commits before raising.
                audit(
                    session,
                    principal,
                    "campaign.approve_refused",
                    f"campaign:{campaign_id}",
                    now,
                    reason="created by the same credential",
                )
                refused = SelfApprovalError(
                    f"campaign {campaign_id} was created by {campaign.created_by}; "
                    "a second person must approve it"
                )
            else:
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
        assert refused is not None
        raise refused
