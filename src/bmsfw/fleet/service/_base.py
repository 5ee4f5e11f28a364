"""What every part of the fleet service shares: settings, the audit writer, constants,
the base class (engine, sessions, artifact store, clock, credential cache) and the
helpers several parts use (device and flag look-ups, campaign evaluation).

The service as a whole (:mod:`bmsfw.fleet.service`) keeps these rules:

Nothing that matters lives in process memory: every request opens a
transaction, and state changes that must not race take locks in the database,
so any number of server processes can share one database.

Locking (PostgreSQL; on SQLite every transaction is ``BEGIN IMMEDIATE`` and so
serialised anyway), always in this order to rule out deadlocks:

* campaign row ``FOR UPDATE``: pause, resume, cancel, progression, and a device
  report that ends a device's run (it may move the campaign);
* campaign row ``FOR SHARE``: a check-in that turns *pending* into *offered*,
  so no offer slips out after a pause commits, while check-ins run in parallel;
* campaign-device row ``FOR UPDATE``: every device state report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from bmsfw.errors import FleetError
from bmsfw.fleet.artifacts import ArtifactStore
from bmsfw.fleet.auth import CredentialCache, Principal
from bmsfw.fleet.campaigns import (
    JOINABLE_STATUSES,
    CampaignCounts,
    CampaignSnapshot,
    decide,
)
from bmsfw.fleet.clock import Clock
from bmsfw.fleet.db import read_only_engine
from bmsfw.fleet.errors import (
    DeviceBusyError,
    DeviceNotOnGatewayError,
    FleetNotFoundError,
)
from bmsfw.fleet.models import (
    AuditEntry,
    Campaign,
    CampaignDevice,
    ConfigBackup,
    Credential,
    Device,
    DeviceFlag,
    DeviceStateEvent,
    Gateway,
    Release,
    SiteWindow,
)
from bmsfw.fleet.protocol import (
    FAILURE_STATES,
    TERMINAL_STATES,
    BackupInfo,
    DeviceState,
)
from bmsfw.fleet.schemas import PhaseSpec

log = logging.getLogger(__name__)

S = DeviceState
# Which state a device may report next. Repeating the current state is always
# allowed (progress, agent restart); terminal states are final for a campaign.
ALLOWED_TRANSITIONS: dict[DeviceState, frozenset[DeviceState]] = {
    S.PENDING: frozenset({S.OFFERED}),
    S.OFFERED: frozenset({S.DOWNLOADING, S.DOWNLOADED, S.WAITING, S.REJECTED, S.FAILED}),
    S.DOWNLOADING: frozenset({S.DOWNLOADED, S.WAITING, S.REJECTED, S.FAILED}),
    S.DOWNLOADED: frozenset({S.DOWNLOADING, S.WAITING, S.INSTALLING, S.REJECTED, S.FAILED}),
    S.WAITING: frozenset({S.DOWNLOADING, S.DOWNLOADED, S.INSTALLING, S.REJECTED, S.FAILED}),
    S.INSTALLING: frozenset({S.VERIFYING, S.SUCCEEDED, S.FAILED, S.ROLLED_BACK, S.REJECTED}),
    S.VERIFYING: frozenset({S.SUCCEEDED, S.FAILED, S.ROLLED_BACK}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.ROLLED_BACK: frozenset(),
    S.REJECTED: frozenset(),
}
_TERMINAL_VALUES = tuple(s.value for s in TERMINAL_STATES)
_FAILURE_VALUES = tuple(s.value for s in FAILURE_STATES)
# needs_approval (four eyes, service/approvals.py): claims its devices, offers nothing.
# The same statuses a device may join a dynamic campaign in (campaigns.JOINABLE_STATUSES).
_ACTIVE_CAMPAIGN = JOINABLE_STATUSES
# States in which the device may legitimately come back with the release's version.
_INSTALL_STATES = (S.INSTALLING.value, S.VERIFYING.value, S.SUCCEEDED.value)
# States after which the device may be back on (or still on) its previous firmware.
_REVERT_STATES = (S.INSTALLING.value, S.VERIFYING.value, S.FAILED.value, S.ROLLED_BACK.value)
_LAST_USED_RESOLUTION = timedelta(seconds=60)
# At most this many names listed in one audit entry (the count says how many in all).
_AUDIT_LIST_CAP = 20
# pg_advisory_xact_lock key that serialises campaign creation across server processes.
_CAMPAIGN_CREATION_LOCK = 0x626D7366_0001  # "bmsf" + 1
# Core tables for the hot paths (check-in, credential look-up): no ORM unit of work.
_T_CREDENTIALS = cast(Table, Credential.__table__)
_T_GATEWAYS = cast(Table, Gateway.__table__)
_T_DEVICES = cast(Table, Device.__table__)
_T_CAMPAIGN_DEVICES = cast(Table, CampaignDevice.__table__)
_T_CAMPAIGNS = cast(Table, Campaign.__table__)
_T_RELEASES = cast(Table, Release.__table__)
_T_STATE_EVENTS = cast(Table, DeviceStateEvent.__table__)
_T_SITE_WINDOWS = cast(Table, SiteWindow.__table__)

_CREDENTIAL_BY_HASH = select(
    _T_CREDENTIALS.c.id,
    _T_CREDENTIALS.c.name,
    _T_CREDENTIALS.c.kind,
    _T_CREDENTIALS.c.role,
    _T_CREDENTIALS.c.gateway_id,
    _T_CREDENTIALS.c.last_used_at,
    _T_CREDENTIALS.c.revoked_at,
    _T_CREDENTIALS.c.expires_at,
).where(_T_CREDENTIALS.c.token_hash == bindparam("b_hash"))


class _RefusedReportError(Exception):
    """A state report refused in a way that flags the device (carries the error to answer)."""

    def __init__(self, error: FleetError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class ServiceSettings:
    poll_interval_s: int = 60
    telemetry_interval_s: int | None = None  # told to the agents (bmsfw.fleet.telemetry)
    max_backup_bytes: int = 1 << 20
    max_evidence_bytes: int = 16 << 20  # one update's evidence bundle (bus trace included)
    artifact_url_prefix: str = "/api/v1/releases"
    # How long a process trusts a token it resolved without asking the database
    # again: the bound on how late a revocation made by another process takes
    # effect here. 0 looks every token up on every request.
    credential_cache_ttl_s: float = 5.0
    # Four eyes: a campaign of more devices than this waits for a second person's
    # approval (service/approvals.py); None: never, 0: every campaign.
    approval_above_devices: int | None = None
    # Four eyes for every other safety-relevant action (fleet/four_eyes.py): asked for,
    # it waits for a second person with the right role instead of being done.
    four_eyes: bool = False
    # How long an approval request waits before it expires (nothing done).
    approval_ttl_s: float = 24 * 3600.0
    # A device counts as online when its gateway checked it in this recently.
    online_after_s: float = 180.0


def audit(
    session: Session,
    principal: Principal | None,
    action: str,
    target: str,
    now: datetime,
    **detail: Any,
) -> None:
    session.add(
        AuditEntry(
            at=now,
            actor_id=principal.credential_id if principal else None,
            actor_name=principal.label if principal else "system",
            action=action,
            target=target,
            detail=detail,
        )
    )


def _locking(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


class ServiceBase:
    """State and helpers shared by the parts of :class:`~bmsfw.fleet.service.FleetService`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        clock: Clock,
        settings: ServiceSettings | None = None,
    ) -> None:
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]
        self._reader = read_only_engine(self.engine)
        self.store = store
        self.clock = clock
        self.settings = settings or ServiceSettings()
        self.credentials = CredentialCache(
            self.settings.credential_cache_ttl_s, last_use_resolution=_LAST_USED_RESOLUTION
        )

    def cached_principal(self, token_hash: str) -> Principal | None:
        """The principal if this process resolved the token less than the TTL ago (no I/O)."""
        return self.credentials.get(token_hash, self.clock.now())

    def load_principal(self, token_hash: str, conn: Connection | None = None) -> Principal | None:
        """One indexed read by token hash; None for unknown or revoked tokens (not cached).

        On ``conn`` (a transaction the caller holds) when given, else on its own connection.
        """
        if conn is not None:
            row = conn.execute(_CREDENTIAL_BY_HASH, {"b_hash": token_hash}).one_or_none()
        else:
            # Autocommit: a single read needs no BEGIN/ROLLBACK round trips (nor, on
            # SQLite, the write lock that BEGIN IMMEDIATE would take).
            with self._reader.connect() as own:
                row = own.execute(_CREDENTIAL_BY_HASH, {"b_hash": token_hash}).one_or_none()
        now = self.clock.now()
        if row is None or row.revoked_at is not None:
            return None
        principal = Principal(row.id, row.name, row.kind, row.role, row.gateway_id, row.expires_at)
        if principal.expired(now):
            return None  # refused like a revoked token (and not cached)
        self.credentials.put(token_hash, principal, now, row.last_used_at)
        return principal

    def claim_last_use(self, principal: Principal) -> bool:
        """True when this request should record last use (at most once a minute per process)."""
        return self.credentials.claim_last_use(principal.credential_id, self.clock.now())

    def touch_last_used(self, principal: Principal, conn: Connection | None = None) -> None:
        """Record last use; inside ``conn``'s transaction when given, else in its own."""
        now = self.clock.now()
        table = _T_CREDENTIALS
        # Never moves last use backwards (another process may have written a later one).
        statement = (
            update(table)
            .where(
                table.c.id == principal.credential_id,
                or_(table.c.last_used_at.is_(None), table.c.last_used_at < now),
            )
            .values(last_used_at=now)
        )
        if conn is not None:
            conn.execute(statement)
            return
        with self.engine.begin() as own:
            own.execute(statement)

    def _raise_flag(
        self, session: Session, device: Device, kind: str, detail: str, now: datetime
    ) -> bool:
        """Flag the device (and audit it) unless it has an open flag of this kind; True
        when a flag was raised."""
        open_flag = session.scalars(
            select(DeviceFlag.id).where(
                DeviceFlag.device_id == device.id,
                DeviceFlag.kind == kind,
                DeviceFlag.acknowledged_at.is_(None),
            )
        ).first()
        if open_flag is not None:
            return False
        log.warning("device %s flagged %s: %s", device.serial, kind, detail)
        session.add(
            DeviceFlag(
                device_id=device.id,
                kind=kind,
                detail=detail,
                raised_at=now,
                acknowledged_at=None,
                acknowledged_by="",
            )
        )
        audit(
            session, None, "device.flag", f"device:{device.serial}", now, kind=kind, detail=detail
        )
        return True

    def _own_device(self, session: Session, principal: Principal, serial: str) -> Device:
        device = session.scalars(select(Device).where(Device.serial == serial)).one_or_none()
        if device is None or device.gateway_id != principal.gateway_id:
            raise DeviceNotOnGatewayError(
                f"device {serial!r} is not behind gateway {principal.name}; report it in a "
                "check-in first"
            )
        return device

    def _check_decommission(self, session: Session, serial: str) -> Device:
        """The device, if it may be decommissioned now (E645 while it has open work)."""
        device = self._device(session, serial)
        if device.decommissioned_at is None:
            busy = session.execute(
                select(Campaign.id, CampaignDevice.state)
                .join(CampaignDevice, CampaignDevice.campaign_id == Campaign.id)
                .where(
                    CampaignDevice.device_id == device.id,
                    Campaign.status.in_(_ACTIVE_CAMPAIGN),
                    CampaignDevice.state.not_in(_TERMINAL_VALUES),
                )
            ).first()
            if busy is not None:
                raise DeviceBusyError(f"device {serial!r} is {busy.state} in campaign {busy.id}")
        return device

    def _campaign_or_404(self, session: Session, campaign_id: int, *, lock: bool) -> Campaign:
        query = select(Campaign).where(Campaign.id == campaign_id)
        if lock and _locking(session):
            query = query.with_for_update()
        campaign = session.scalars(query).one_or_none()
        if campaign is None:
            raise FleetNotFoundError(f"no campaign with id {campaign_id}")
        return campaign

    def _counts(self, session: Session, campaign: Campaign) -> CampaignCounts:
        rows = session.execute(
            select(CampaignDevice.state, func.count())
            .where(
                CampaignDevice.campaign_id == campaign.id,
                CampaignDevice.phase_index <= campaign.current_phase,
            )
            .group_by(CampaignDevice.state)
        ).all()
        by_state: dict[str, int] = {str(state): int(n) for state, n in rows}
        return CampaignCounts(
            released=sum(by_state.values()),
            succeeded=by_state.get(S.SUCCEEDED.value, 0),
            failed=sum(by_state.get(s, 0) for s in _FAILURE_VALUES),
            terminal=sum(by_state.get(s, 0) for s in _TERMINAL_VALUES),
        )

    def _evaluate_locked(self, session: Session, campaign: Campaign, now: datetime) -> None:
        """Apply the progression policy; the caller holds the campaign row lock."""
        # Several phases may be passed in one evaluation (soak 0, already succeeded).
        for _ in range(len(campaign.phases) + 1):
            snapshot = CampaignSnapshot(
                status=campaign.status,
                current_phase=campaign.current_phase,
                phases=tuple(PhaseSpec.model_validate(_phase_spec(p)) for p in campaign.phases),
                error_threshold_pct=campaign.error_threshold_pct,
                phase_threshold_met_at=campaign.phase_threshold_met_at,
                acknowledged_failures=campaign.acknowledged_failures,
                dynamic=campaign.dynamic,
            )
            decision = decide(snapshot, self._counts(session, campaign), now)
            if decision.action == "none":
                return
            campaign.updated_at = now
            if decision.action == "threshold_met":
                campaign.phase_threshold_met_at = now
                continue
            target = f"campaign:{campaign.id}"
            if decision.action == "pause":
                campaign.status, campaign.pause_reason = "paused", decision.reason
                log.warning("campaign %d paused: %s", campaign.id, decision.reason)
                audit(session, None, "campaign.auto_pause", target, now, reason=decision.reason)
                return
            if decision.action == "complete":
                campaign.status, campaign.finished_at = "completed", now
                audit(session, None, "campaign.complete", target, now, reason=decision.reason)
                return
            campaign.current_phase += 1
            campaign.phase_started_at, campaign.phase_threshold_met_at = now, None
            log.info("campaign %d advanced to phase %d", campaign.id, campaign.current_phase)
            audit(
                session,
                None,
                "campaign.advance",
                target,
                now,
                phase=campaign.current_phase,
                reason=decision.reason,
            )
            session.flush()

    def _campaign_dict(self, session: Session, campaign: Campaign) -> dict[str, Any]:
        by_state = dict(
            session.execute(
                select(CampaignDevice.state, func.count())
                .where(CampaignDevice.campaign_id == campaign.id)
                .group_by(CampaignDevice.state)
            ).all()
        )
        return {
            "id": campaign.id,
            "name": campaign.name,
            "release_id": campaign.release_id,
            "status": campaign.status,
            "dynamic": campaign.dynamic,
            "pause_reason": campaign.pause_reason,
            "current_phase": campaign.current_phase,
            "phase_name": campaign.phases[campaign.current_phase]["name"],
            "phases": campaign.phases,
            "selector": campaign.selector,
            "error_threshold_pct": campaign.error_threshold_pct,
            "bandwidth_floor_bps": campaign.bandwidth_floor_bps,
            "targets": sum(by_state.values()),
            "states": {s.value: int(by_state.get(s.value, 0)) for s in DeviceState},
            "created_at": campaign.created_at.isoformat(),
            "created_by": campaign.created_by,
            "phase_started_at": campaign.phase_started_at.isoformat(),
            "finished_at": _iso(campaign.finished_at),
        }

    def _device(self, session: Session, serial: str) -> Device:
        device = session.scalars(select(Device).where(Device.serial == serial)).one_or_none()
        if device is None:
            raise FleetNotFoundError(f"no device with serial {serial!r}")
        return device


def _gateway_dict(gateway: Gateway, devices: int) -> dict[str, Any]:
    return {
        "id": gateway.id,
        "name": gateway.name,
        "site": gateway.site,
        "tags": gateway.tags,
        "agent_version": gateway.agent_version,
        "devices": devices,
        "last_seen_at": _iso(gateway.last_seen_at),
        "decommissioned_at": _iso(gateway.decommissioned_at),
    }


def _phase_spec(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stored.items() if k != "cumulative_devices"}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _backup_info(backup: ConfigBackup, serial: str) -> BackupInfo:
    return BackupInfo(
        id=backup.id,
        device_serial=serial,
        created_at=backup.created_at,
        reason=backup.reason,
        sha256=backup.sha256,
        size_bytes=backup.size_bytes,
        uploaded_by=backup.uploaded_by,
    )


def _release_dict(release: Release) -> dict[str, Any]:
    return {
        "id": release.id,
        "product": release.product,
        "version": release.version,
        "security_counter": release.security_counter,
        "hw_model": release.hw_model,
        "hw_revisions": release.hw_revisions,
        "min_bootloader": release.min_bootloader,
        "safety_class": release.safety_class,
        "ota_allowed": release.safety_class == "standard",
        "components": release.components,
        "release_notes": release.release_notes,
        "sha256": release.sha256,
        "size_bytes": release.size_bytes,
        "filename": release.filename,
        "uploaded_at": release.uploaded_at.isoformat(),
        "uploaded_by": release.uploaded_by,
        "deactivated_at": _iso(release.deactivated_at),
        "deactivated_by": release.deactivated_by,
        "signer_chain": release.signer_chain,
    }


def _device_dict(device: Device, gateway_name: str, flags: list[str]) -> dict[str, Any]:
    return {
        "serial": device.serial,
        "gateway": gateway_name,
        "site": device.site,
        "tags": device.tags,
        "model": device.model,
        "hw_revision": device.hw_revision,
        "bootloader_version": device.bootloader_version,
        "firmware_version": device.firmware_version,
        "firmware_sha256": device.firmware_sha256,
        "security_counter": device.security_counter,
        "soc_pct": device.soc_pct,
        "temperature_c": device.temperature_c,
        "integrity_ok": device.integrity_ok,
        "integrity_detail": device.integrity_detail,
        "first_seen_at": device.first_seen_at.isoformat(),
        "last_seen_at": device.last_seen_at.isoformat(),
        "decommissioned_at": _iso(device.decommissioned_at),
        "flags": flags,
    }


def _flag_dict(flag: DeviceFlag, serial: str) -> dict[str, Any]:
    return {
        "id": flag.id,
        "device_serial": serial,
        "kind": flag.kind,
        "detail": flag.detail,
        "raised_at": flag.raised_at.isoformat(),
        "acknowledged_at": _iso(flag.acknowledged_at),
        "acknowledged_by": flag.acknowledged_by,
    }
