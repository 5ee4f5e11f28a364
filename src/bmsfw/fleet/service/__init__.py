"""The fleet server's operations, over the database, independent of HTTP.

:class:`FleetService` is assembled from one part per concern, each in its own module:
credentials (:mod:`.credentials`), gateways and sites (:mod:`.sites`), the agent's
check-in (:mod:`.check_in`), state reports (:mod:`.reports`), backups (:mod:`.backups`),
evidence bundles (:mod:`.evidence`), releases (:mod:`.releases`), campaigns
(:mod:`.campaigns`), inventory and flags (:mod:`.inventory`); what they share is in
:mod:`._base` (locking order included).
"""

from __future__ import annotations

from bmsfw.fleet.service._base import ALLOWED_TRANSITIONS, ServiceSettings, audit
from bmsfw.fleet.service.approvals import ApprovalOps
from bmsfw.fleet.service.backups import BackupOps
from bmsfw.fleet.service.campaigns import CampaignOps
from bmsfw.fleet.service.check_in import CheckInOps
from bmsfw.fleet.service.credentials import CredentialOps
from bmsfw.fleet.service.evidence import EvidenceOps
from bmsfw.fleet.service.inventory import InventoryOps
from bmsfw.fleet.service.releases import ReleaseOps
from bmsfw.fleet.service.reports import ReportOps
from bmsfw.fleet.service.sites import GatewayOps

__all__ = ["ALLOWED_TRANSITIONS", "FleetService", "ServiceSettings", "audit"]


class FleetService(
    CredentialOps,
    GatewayOps,
    CheckInOps,
    ReportOps,
    BackupOps,
    EvidenceOps,
    ReleaseOps,
    CampaignOps,
    ApprovalOps,
    InventoryOps,
):
    """Every operation of the fleet server (see the module text for the parts)."""
