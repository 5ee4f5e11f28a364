"""Four eyes: which actions wait for a second person, and who may approve them.

The rules only, no database: :func:`needs_second_person` says whether an action is held
for approval under the server's settings, :func:`approval_refusal` whether a given
credential may approve (or reject) a given request now. :mod:`bmsfw.fleet.service.approvals`
loads the request under a row lock, asks these and writes the outcome.

Safety-relevant actions (docs/fleet.md, "Four eyes") and the lowest role that may approve
each, which is the role the action itself needs (a release deactivation, for instance,
is approved by a release manager or an admin, never by an operator) are listed in
:data:`APPROVER_ROLE`, each with the reason it is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bmsfw.errors import FleetError
from bmsfw.fleet.auth import Principal, roles_at_least
from bmsfw.fleet.errors import (
    ApprovalExpiredError,
    ApprovalNotWaitingError,
    ApproverRoleError,
    SelfApprovalError,
)

__all__ = [
    "APPROVER_ROLE",
    "CAMPAIGN_START",
    "CAMPAIGN_STARTS",
    "DOWNGRADE_START",
    "WAITING",
    "ApprovalFacts",
    "approval_refusal",
    "needs_second_person",
    "rejection_refusal",
]

CAMPAIGN_START = "campaign.start"
DOWNGRADE_START = "campaign.start_downgrade"
CAMPAIGN_STARTS = (CAMPAIGN_START, DOWNGRADE_START)
WAITING = "waiting"
# action -> lowest role that may ask for it and approve it.
APPROVER_ROLE: dict[str, str] = {
    # A campaign above the size set on the server (approval_above_devices).
    CAMPAIGN_START: "operator",
    # An explicit downgrade campaign (issue 15's version rule), whatever the settings.
    DOWNGRADE_START: "release_manager",
    # Pulling a release stops (or lets finish) every campaign of it, fleet-wide.
    "release.deactivate": "release_manager",
    # Locks a person or a machine out; with a stolen admin token, the first thing an
    # attacker would revoke is the tokens of the people who could stop them.
    "token.revoke": "admin",
    # A gateway's credentials are revoked: its whole site stops updating and reporting.
    "gateway.decommission": "admin",
    # The device takes part in no campaign any more: a pack is left on what it runs.
    "device.decommission": "operator",
    # Resuming after the error threshold paused a campaign accepts the failures seen
    # so far and releases further devices to a release that just failed on some.
    "campaign.resume_after_failures": "operator",
}


def needs_second_person(action: str, *, four_eyes: bool) -> bool:
    """Whether ``action`` (one of :data:`APPROVER_ROLE`, except campaign starts, which
    follow the campaign size rule) waits for approval under the server's setting."""
    return four_eyes and action in APPROVER_ROLE and action not in CAMPAIGN_STARTS


@dataclass(frozen=True)
class ApprovalFacts:
    """What the rules need to know of one approval request."""

    id: int
    action: str
    status: str
    requested_by: str  # principal label
    requested_by_id: int | None
    expires_at: datetime
    min_role: str


def _same_person(request: ApprovalFacts, who: Principal) -> bool:
    # The credential that asked, or another credential of the same name (a person with
    # two tokens is still one person).
    return request.requested_by_id == who.credential_id or request.requested_by == who.label


def _state_refusal(request: ApprovalFacts, now: datetime) -> FleetError | None:
    if request.status == "expired" or (request.status == WAITING and now >= request.expires_at):
        return ApprovalExpiredError(
            f"approval request {request.id} expired at {request.expires_at.isoformat()}"
        )
    if request.status != WAITING:
        return ApprovalNotWaitingError(
            f"approval request {request.id} is {request.status}; only a waiting one can be decided"
        )
    return None


def approval_refusal(
    request: ApprovalFacts, approver: Principal, now: datetime
) -> FleetError | None:
    """Why ``approver`` may not approve ``request`` now (None: they may)."""
    refusal = _state_refusal(request, now)
    if refusal is not None:
        return refusal
    if approver.role not in roles_at_least(request.min_role):
        return ApproverRoleError(
            f"approval request {request.id} ({request.action}) needs the role "
            f"{request.min_role} or above to approve; {approver.label} is {approver.role}"
        )
    if _same_person(request, approver):
        return SelfApprovalError(
            f"approval request {request.id} ({request.action}) was asked for by "
            f"{request.requested_by}; a second person must approve it"
        )
    return None


def rejection_refusal(request: ApprovalFacts, who: Principal, now: datetime) -> FleetError | None:
    """Why ``who`` may not reject ``request`` now: its requester may always withdraw it,
    anyone else needs the role that could approve it."""
    refusal = _state_refusal(request, now)
    if refusal is not None or _same_person(request, who):
        return refusal
    if who.role not in roles_at_least(request.min_role):
        return ApproverRoleError(
            f"approval request {request.id} ({request.action}) may be rejected by its "
            f"requester or by the role {request.min_role} or above; {who.label} is {who.role}"
        )
    return None
