"""The fleet server's operations, over the database, independent of HTTP.

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

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Float,
    String,
    Table,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker

from bmsfw.errors import FleetError
from bmsfw.fleet.artifacts import ArtifactStore
from bmsfw.fleet.auth import CredentialCache, Principal, issue_token
from bmsfw.fleet.campaigns import (
    CampaignCounts,
    CampaignSnapshot,
    assign_phases,
    cumulative_sizes,
    decide,
    rollout_order,
    window_open,
)
from bmsfw.fleet.clock import Clock
from bmsfw.fleet.db import read_only_engine
from bmsfw.fleet.edge import Refusal
from bmsfw.fleet.errors import (
    BackupRejectedError,
    CampaignStateError,
    DeviceNotOnGatewayError,
    FleetConflictError,
    FleetNotFoundError,
    InvalidCampaignSpecError,
    InvalidStateTransitionError,
    NoTargetDevicesError,
    SafetyCriticalOtaRefusedError,
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
    BackupUpload,
    BmsReport,
    CheckIn,
    CheckInResponse,
    DeviceState,
    MaintenanceWindow,
    Offer,
    OfferPolicy,
    OperatorBackupUpload,
    StateReport,
    StateReportResponse,
    backup_content,
)
from bmsfw.fleet.releases import ReleaseFacts
from bmsfw.fleet.schemas import CampaignSpec, PhaseSpec, SiteWindowSpec
from bmsfw.package.version import VersionRange, device_runs

__all__ = ["ALLOWED_TRANSITIONS", "FleetService", "ServiceSettings", "audit"]

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
_ACTIVE_CAMPAIGN = ("running", "paused")
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

# Prebuilt check-in statements (built once; SQLAlchemy caches their compiled form).
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
_GATEWAY_SEEN = (
    update(_T_GATEWAYS)
    .where(_T_GATEWAYS.c.id == bindparam("b_gid"))
    # A new agent version is recorded here (it is not audited), so an agent upgrade
    # across the fleet does not send every gateway's next check-in down the ORM path.
    .values(
        last_seen_at=bindparam("b_now"),
        agent_version=func.coalesce(
            bindparam("b_agent", type_=String), _T_GATEWAYS.c.agent_version
        ),
    )
    .returning(
        _T_GATEWAYS.c.name, _T_GATEWAYS.c.site, _T_GATEWAYS.c.tags, _T_GATEWAYS.c.agent_version
    )
)
# Each reported device with the work open for it in running campaigns (phase
# released, state not terminal): NULL work columns when there is none.
_WORK = _T_CAMPAIGN_DEVICES.join(
    _T_CAMPAIGNS,
    and_(
        _T_CAMPAIGNS.c.id == _T_CAMPAIGN_DEVICES.c.campaign_id,
        _T_CAMPAIGNS.c.status == "running",
        _T_CAMPAIGN_DEVICES.c.phase_index <= _T_CAMPAIGNS.c.current_phase,
    ),
).join(_T_RELEASES, _T_RELEASES.c.id == _T_CAMPAIGNS.c.release_id)
_DEVICES_WORK = (
    select(
        _T_DEVICES.c.id,
        _T_DEVICES.c.serial,
        _T_DEVICES.c.gateway_id,
        _T_DEVICES.c.model,
        _T_DEVICES.c.hw_revision,
        _T_DEVICES.c.bootloader_version,
        _T_DEVICES.c.firmware_version,
        _T_DEVICES.c.firmware_sha256,
        _T_DEVICES.c.security_counter,
        _T_DEVICES.c.site,
        _T_DEVICES.c.tags,
        _T_DEVICES.c.integrity_ok,
        _T_DEVICES.c.integrity_detail,
        _T_CAMPAIGN_DEVICES.c.id.label("cd_id"),
        _T_CAMPAIGN_DEVICES.c.state.label("cd_state"),
        _T_CAMPAIGNS.c.id.label("campaign_id"),
        _T_CAMPAIGNS.c.bandwidth_floor_bps,
        _T_RELEASES.c.id.label("release_id"),
        _T_RELEASES.c.product,
        _T_RELEASES.c.version,
        _T_RELEASES.c.security_counter.label("release_security_counter"),
        _T_RELEASES.c.size_bytes,
        _T_RELEASES.c.sha256.label("release_sha256"),
    )
    .select_from(
        _T_DEVICES.outerjoin(
            _WORK,
            and_(
                _T_CAMPAIGN_DEVICES.c.device_id == _T_DEVICES.c.id,
                # Inline constants (our own state names, no quotes in them): a list of
                # bound values would be an "expanding" parameter, re-rendered into the
                # SQL on every check-in.
                _T_CAMPAIGN_DEVICES.c.state.not_in(
                    [literal_column(f"'{v}'", String) for v in _TERMINAL_VALUES]
                ),
            ),
        )
    )
    .order_by(_T_DEVICES.c.serial, _T_CAMPAIGN_DEVICES.c.id)
)
# The serial list is one bound value (no per-call "expanding IN" rewrite of the SQL):
# an array on PostgreSQL, a JSON array read by json_each on SQLite.
_DEVICES_WORK_BY_DIALECT = {
    "postgresql": _DEVICES_WORK.where(
        _T_DEVICES.c.serial == func.any(bindparam("b_serials", type_=ARRAY(String)))
    ),
    "sqlite": _DEVICES_WORK.where(
        _T_DEVICES.c.serial.in_(
            select(literal_column("value")).select_from(
                func.json_each(bindparam("b_serials", type_=JSON))
            )
        )
    ),
}
_DEVICE_TELEMETRY = (
    update(_T_DEVICES)
    .where(_T_DEVICES.c.id == bindparam("b_id"))
    .values(
        soc_pct=bindparam("b_soc"),
        temperature_c=bindparam("b_temp"),
        last_seen_at=bindparam("b_now"),
    )
)


def _single_statement_check_in() -> Any:
    """PostgreSQL: the common check-in as ONE autocommit statement (one round trip).

    Data-modifying CTEs: read the credential by its hash; only for a valid (not
    revoked, gateway-role) credential, mark its gateway seen, write the reported
    telemetry of that gateway's devices, and record last use when the stored one
    is older than the resolution; then return the credential, the gateway and each
    reported device with its open work, as :data:`_DEVICES_WORK` does. The main
    SELECT sees the snapshot from before the updates (identity is what it reads).
    The caller checks the rest in Python; anything but "telemetry only, nothing
    pending" goes down the transactional path, which writes everything again.
    """
    c = _T_CREDENTIALS.c
    cred = (
        select(
            c.id.label("cred_id"),
            c.name.label("cred_name"),
            c.kind.label("cred_kind"),
            c.role.label("cred_role"),
            c.gateway_id.label("cred_gateway_id"),
            c.last_used_at.label("cred_last_used_at"),
            c.revoked_at.label("cred_revoked_at"),
            c.expires_at.label("cred_expires_at"),
        )
        .where(c.token_hash == bindparam("b_hash"))
        .cte("cred")
    )
    admitted = select(cred.c.cred_id, cred.c.cred_gateway_id).where(
        cred.c.cred_revoked_at.is_(None),
        or_(cred.c.cred_expires_at.is_(None), cred.c.cred_expires_at > bindparam("b_now")),
        cred.c.cred_role == func.any(bindparam("b_roles", type_=ARRAY(String))),
    )
    g = _T_GATEWAYS.c
    gw = (
        update(_T_GATEWAYS)
        .where(g.id == admitted.with_only_columns(cred.c.cred_gateway_id).scalar_subquery())
        .values(
            last_seen_at=bindparam("b_now"),
            agent_version=func.coalesce(bindparam("b_agent", type_=String), g.agent_version),
        )
        .returning(
            g.id.label("gw_id"),
            g.name.label("gw_name"),
            g.site.label("gw_site"),
            g.tags.label("gw_tags"),
        )
        .cte("gw")
    )
    touch = (
        update(_T_CREDENTIALS)
        .where(
            c.id == admitted.with_only_columns(cred.c.cred_id).scalar_subquery(),
            or_(c.last_used_at.is_(None), c.last_used_at < bindparam("b_touch_before")),
        )
        .values(last_used_at=bindparam("b_now"))
        .cte("touch")
    )
    reported = (
        func.unnest(
            bindparam("b_serials", type_=ARRAY(String)),
            bindparam("b_socs", type_=ARRAY(Float)),
            bindparam("b_temps", type_=ARRAY(Float)),
        )
        .table_valued("serial", "soc", "temp")
        .render_derived(name="reported")
    )
    d = _T_DEVICES.c
    telemetry = (
        update(_T_DEVICES)
        .where(
            d.serial == reported.c.serial,
            d.gateway_id == select(gw.c.gw_id).scalar_subquery(),
        )
        .values(
            soc_pct=reported.c.soc, temperature_c=reported.c.temp, last_seen_at=bindparam("b_now")
        )
        .cte("telemetry")
    )
    work = _DEVICES_WORK_BY_DIALECT["postgresql"].subquery("work").lateral("work")
    return (
        # PostgreSQL runs every data-modifying CTE to completion, read or not.
        select(cred, gw, work)
        .select_from(cred.outerjoin(gw, true()).outerjoin(work, gw.c.gw_id.is_not(None)))
        .add_cte(touch, telemetry)
        .order_by(work.c.serial, work.c.cd_id)
    )


_CHECK_IN_ONE_STATEMENT = _single_statement_check_in()


class _RefusedReportError(Exception):
    """A state report refused in a way that flags the device (carries the error to answer)."""

    def __init__(self, error: FleetError) -> None:
        super().__init__(error.message)
        self.error = error


class _GatewayRow(NamedTuple):
    name: str
    site: str
    tags: list[str]


@dataclass(frozen=True)
class ServiceSettings:
    poll_interval_s: int = 60
    max_backup_bytes: int = 1 << 20
    artifact_url_prefix: str = "/api/v1/releases"
    # How long a process trusts a token it resolved without asking the database
    # again: the bound on how late a revocation made by another process takes
    # effect here. 0 looks every token up on every request.
    credential_cache_ttl_s: float = 5.0


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


class FleetService:
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

    # ---- credentials ----------------------------------------------------

    def authenticate(self, token_hash: str) -> Principal | None:
        """The principal of a token (cached for ``credential_cache_ttl_s``), touching last use.

        The HTTP guard uses the parts below separately so that a cache hit costs no
        thread hop and a check-in writes last use inside its own transaction.
        """
        principal = self.cached_principal(token_hash) or self.load_principal(token_hash)
        if principal is not None and self.claim_last_use(principal):
            self.touch_last_used(principal)
        return principal

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

    def create_operator_token(
        self, principal: Principal, name: str, role: str, expires_in_days: int | None = None
    ) -> dict[str, Any]:
        now = self.clock.now()
        expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
        with self.sessions() as session, session.begin():
            credential, token = issue_token(
                session,
                name=name,
                role=role,
                created_by=principal.label,
                now=now,
                expires_at=expires_at,
            )
            audit(
                session,
                principal,
                "token.create",
                f"credential:{credential.id}",
                now,
                role=role,
                expires_at=_iso(expires_at),
            )
            return {
                "id": credential.id,
                "name": name,
                "role": role,
                "token": token,
                "expires_at": _iso(expires_at),
            }

    def revoke_token(self, principal: Principal, credential_id: int) -> dict[str, Any]:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            credential = session.get(Credential, credential_id)
            if credential is None:
                raise FleetNotFoundError(f"no credential with id {credential_id}")
            if credential.revoked_at is None:
                credential.revoked_at = now
            audit(session, principal, "token.revoke", f"credential:{credential_id}", now)
            revoked_at = credential.revoked_at
        # This process forgets it at once; the others within their cache TTL.
        self.credentials.invalidate(credential_id)
        return {"id": credential_id, "revoked_at": revoked_at.isoformat()}

    def access_review(self) -> list[dict[str, object]]:
        from bmsfw.fleet.auth import access_review

        with self.sessions() as session:
            return access_review(session, self.clock.now())

    def record_refusals(
        self, entries: list[tuple[Refusal, int, datetime, datetime]], overflow: int
    ) -> None:
        """Write refused requests counted in memory: one ``access.refused`` entry per
        (credential, route, address, reason) with its count, first and last time."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            for refusal, count, first, last in entries:
                session.add(
                    AuditEntry(
                        at=last,
                        actor_id=refusal.credential_id,
                        actor_name=refusal.credential,
                        action="access.refused",
                        target=refusal.route,
                        detail={
                            "address": refusal.address,
                            "reason": refusal.reason,
                            "status": refusal.status,
                            "count": count,
                            "first_at": first.isoformat(),
                            "last_at": last.isoformat(),
                        },
                    )
                )
            if overflow:
                audit(
                    session,
                    None,
                    "access.refused",
                    "*",
                    now,
                    count=overflow,
                    note="refusals beyond the distinct keys held between two flushes",
                )

    def audit_log(self, limit: int, before_id: int | None) -> list[dict[str, Any]]:
        with self.sessions() as session:
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if before_id is not None:
                query = query.where(AuditEntry.id < before_id)
            return [
                {
                    "id": e.id,
                    "at": e.at.isoformat(),
                    "actor_id": e.actor_id,
                    "actor": e.actor_name,
                    "action": e.action,
                    "target": e.target,
                    "detail": e.detail,
                }
                for e in session.scalars(query)
            ]

    # ---- gateways and sites ---------------------------------------------

    def create_gateway(
        self, principal: Principal, name: str, site: str, tags: list[str]
    ) -> dict[str, Any]:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            if session.scalars(select(Gateway.id).where(Gateway.name == name)).first():
                raise FleetConflictError(f"a gateway named {name!r} exists already")
            gateway = Gateway(
                name=name, site=site, tags=tags, agent_version="", created_at=now, last_seen_at=None
            )
            session.add(gateway)
            session.flush()
            _, token = issue_token(
                session,
                name=f"gateway:{name}",
                role="gateway",
                created_by=principal.label,
                now=now,
                gateway_id=gateway.id,
            )
            audit(session, principal, "gateway.create", f"gateway:{name}", now, site=site)
            return {"id": gateway.id, "name": name, "site": site, "token": token}

    def list_gateways(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            counts = dict(
                session.execute(
                    select(Device.gateway_id, func.count()).group_by(Device.gateway_id)
                ).all()
            )
            return [
                {
                    "id": g.id,
                    "name": g.name,
                    "site": g.site,
                    "tags": g.tags,
                    "agent_version": g.agent_version,
                    "devices": counts.get(g.id, 0),
                    "last_seen_at": g.last_seen_at.isoformat() if g.last_seen_at else None,
                }
                for g in session.scalars(select(Gateway).order_by(Gateway.name))
            ]

    def set_site_windows(
        self, principal: Principal, site: str, spec: SiteWindowSpec
    ) -> dict[str, Any]:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(spec.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidCampaignSpecError(f"unknown time zone {spec.timezone!r}") from exc
        now = self.clock.now()
        windows = [w.model_dump() for w in spec.windows]
        with self.sessions() as session, session.begin():
            row = session.get(SiteWindow, site)
            if row is None:
                session.add(
                    SiteWindow(site=site, timezone=spec.timezone, windows=windows, updated_at=now)
                )
            else:
                row.timezone, row.windows, row.updated_at = spec.timezone, windows, now
            audit(session, principal, "site.windows", f"site:{site}", now, windows=windows)
        return {"site": site, "timezone": spec.timezone, "windows": windows}

    def list_sites(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            sites = set(session.scalars(select(Gateway.site).distinct()))
            windows = {w.site: w for w in session.scalars(select(SiteWindow))}
            sites |= set(windows)
            return [
                {
                    "site": site,
                    "timezone": windows[site].timezone if site in windows else "UTC",
                    "windows": windows[site].windows if site in windows else [],
                }
                for site in sorted(sites)
            ]

    # ---- agent: check-in ------------------------------------------------

    def check_in(
        self, principal: Principal, body: CheckIn, *, touch_credential: bool = False
    ) -> CheckInResponse:
        """Inventory, telemetry and offers in ONE transaction (all of it or nothing)."""
        with self.engine.begin() as conn:
            return self._check_in(conn, principal, body, touch_credential)

    def check_in_by_token(
        self,
        principal: Principal | None,
        token_hash: str,
        admit: Callable[[Principal | None], bool],
        parse: Callable[[], CheckIn],
    ) -> CheckInResponse:
        """A check-in whose token this process may not have cached yet (the HTTP route).

        ``principal`` is the cached one, or None: then the credential is read in the
        check-in's own transaction (no second connection). ``admit`` refuses (raises)
        unknown, revoked or wrong-role credentials and says whether last use is due;
        ``parse`` validates the body, after the credential check.
        """
        with self.engine.begin() as conn:
            if principal is None:
                principal = self.load_principal(token_hash, conn)
            touch = admit(principal)
            assert principal is not None  # admit refused None
            return self._check_in(conn, principal, parse(), touch)

    @property
    def single_statement_check_in(self) -> bool:
        """True where :meth:`check_in_one_statement` is available (PostgreSQL)."""
        return self.engine.dialect.name == "postgresql"

    def check_in_one_statement(
        self,
        token_hash: str,
        roles: frozenset[str],
        admit: Callable[[Principal | None], bool],
        body: CheckIn,
    ) -> CheckInResponse:
        """PostgreSQL: a check-in in one round trip when it only brings telemetry.

        One autocommit statement (:data:`_CHECK_IN_ONE_STATEMENT`) reads the credential
        fresh from the database and writes only for a valid one of ``roles``; ``admit``
        then refuses (raises) exactly as the guard does. Last use is written by the
        statement when the stored one is older than the resolution (across processes).
        Anything more (a new or changed device, gateway site or tags, an offer to make
        from *pending*) runs :meth:`check_in_by_token`'s transaction afterwards, which
        writes the gateway and telemetry again along with the rest.
        """
        serials = [d.serial for d in body.devices]
        if len(set(serials)) != len(serials):  # refused by the full path, after admit
            return self.check_in_by_token(None, token_hash, admit, lambda: body)
        now = self.clock.now()
        with self._reader.connect() as conn:
            rows = conn.execute(
                _CHECK_IN_ONE_STATEMENT,
                {
                    "b_hash": token_hash,
                    "b_roles": sorted(roles),
                    "b_now": now,
                    "b_agent": body.agent_version or None,
                    "b_touch_before": now - _LAST_USED_RESOLUTION,
                    "b_serials": serials,
                    "b_socs": [d.soc_pct for d in body.devices],
                    "b_temps": [d.temperature_c for d in body.devices],
                },
            ).all()
            head = rows[0] if rows else None
            principal = None
            if head is not None and head.cred_revoked_at is None:
                principal = Principal(
                    head.cred_id,
                    head.cred_name,
                    head.cred_kind,
                    head.cred_role,
                    head.cred_gateway_id,
                    head.cred_expires_at,
                )
                if principal.expired(now):
                    principal = None  # refused like a revoked token; the statement wrote nothing
                else:
                    self.credentials.put(token_hash, principal, now, head.cred_last_used_at)
            admit(principal)  # raises for unknown, revoked or wrong-role credentials
            assert head is not None and principal is not None
            assert principal.gateway_id is not None  # a gateway role has its gateway
            if head.gw_id is None:
                raise FleetNotFoundError(f"gateway of credential {principal.name} was deleted")
            gateway = _GatewayRow(head.gw_name, head.gw_site, head.gw_tags)
            work = [r for r in rows if r.serial is not None]
            known = {r.serial: r for r in work}
            fast = (
                len(known) == len(serials)
                and (body.site is None or body.site == gateway.site)
                and (body.tags is None or body.tags == gateway.tags)
                and all(
                    _only_telemetry_changed(known[r.serial], r, principal.gateway_id, gateway)
                    for r in body.devices
                )
                and not any(r.cd_state == S.PENDING.value for r in work)
            )
            if fast:
                # No pending work: _offers only reads the site's windows here.
                offers = self._offers(conn, gateway.site, [r for r in work if r.cd_id], now)
                return CheckInResponse(
                    gateway=gateway.name,
                    server_time=now,
                    poll_interval_s=self.settings.poll_interval_s,
                    offers=offers,
                )
        return self.check_in_by_token(principal, token_hash, lambda _p: False, lambda: body)

    def _check_in(
        self, conn: Connection, principal: Principal, body: CheckIn, touch_credential: bool
    ) -> CheckInResponse:
        """The check-in inside ``conn``'s transaction.

        The common case (a known gateway whose devices changed nothing but telemetry,
        no offer to make) is three prebuilt statements: gateway last-seen, one read of
        the devices joined with their open campaign work, one telemetry update for
        all devices. Anything else (new device, identity, firmware, hash, integrity,
        site or tag change) takes the audited ORM path in the same transaction.
        """
        assert principal.gateway_id is not None
        serials = [d.serial for d in body.devices]
        if len(set(serials)) != len(serials):
            raise InvalidCampaignSpecError("the check-in lists a BMS serial twice")
        now = self.clock.now()
        if touch_credential:
            self.touch_last_used(principal, conn)
        gw = conn.execute(
            _GATEWAY_SEEN,
            {
                "b_gid": principal.gateway_id,
                "b_now": now,
                "b_agent": body.agent_version or None,
            },
        )
        gateway_row = gw.one_or_none()
        if gateway_row is None:
            raise FleetNotFoundError(f"gateway of credential {principal.name} was deleted")
        devices_work = _DEVICES_WORK_BY_DIALECT[conn.dialect.name]
        rows = conn.execute(devices_work, {"b_serials": serials}).all() if serials else []
        known = {r.serial: r for r in rows}
        refused: list[str] = []
        gateway_same = (body.site is None or body.site == gateway_row.site) and (
            body.tags is None or body.tags == gateway_row.tags
        )
        if gateway_same and all(
            _only_telemetry_changed(known.get(r.serial), r, principal.gateway_id, gateway_row)
            for r in body.devices
        ):
            if body.devices:
                conn.execute(
                    _DEVICE_TELEMETRY,
                    [
                        {
                            "b_id": known[r.serial].id,
                            "b_soc": r.soc_pct,
                            "b_temp": r.temperature_c,
                            "b_now": now,
                        }
                        for r in body.devices
                    ],
                )
            site = str(gateway_row.site)
        else:
            # Joins this connection's transaction (and does not commit it).
            with Session(bind=conn) as session:
                gateway = session.get(Gateway, principal.gateway_id)
                assert gateway is not None
                self._update_gateway(session, principal, gateway, body, now)
                refused = self._update_inventory(session, principal, gateway, body, now)
                session.flush()
                site = gateway.site
            rows = conn.execute(devices_work, {"b_serials": serials}).all()
        # Work is offered for this gateway's own devices only.
        own_work = [r for r in rows if r.cd_id is not None and r.gateway_id == principal.gateway_id]
        offers = self._offers(conn, site, own_work, now)
        return CheckInResponse(
            gateway=gateway_row.name,
            server_time=now,
            poll_interval_s=self.settings.poll_interval_s,
            offers=offers,
            refused_serials=refused,
        )

    def _update_gateway(
        self, session: Session, principal: Principal, gateway: Gateway, body: CheckIn, now: datetime
    ) -> None:
        if body.agent_version and body.agent_version != gateway.agent_version:
            gateway.agent_version = body.agent_version
        if body.site is not None and body.site != gateway.site:
            audit(
                session,
                principal,
                "gateway.site",
                f"gateway:{gateway.name}",
                now,
                old=gateway.site,
                new=body.site,
            )
            gateway.site = body.site
        if body.tags is not None and body.tags != gateway.tags:
            gateway.tags = list(body.tags)

    def _update_inventory(
        self, session: Session, principal: Principal, gateway: Gateway, body: CheckIn, now: datetime
    ) -> list[str]:
        """Apply the reported inventory; returns the serials refused as another gateway's.

        A device belongs to the gateway that registered it. A check-in naming a device
        of another gateway changes nothing about it (no move, no telemetry): the device
        is flagged ``foreign_check_in`` for the operator and the refusal is audited (one
        entry per check-in). Moving a device is ``POST /devices/{serial}/move``.
        """
        serials = [d.serial for d in body.devices]
        if len(set(serials)) != len(serials):
            raise InvalidCampaignSpecError("the check-in lists a BMS serial twice")
        existing = {
            d.serial: d for d in session.scalars(select(Device).where(Device.serial.in_(serials)))
        }
        refused: list[str] = []
        for report in body.devices:
            device = existing.get(report.serial)
            if device is not None and device.gateway_id != gateway.id:
                refused.append(report.serial)
                self._raise_flag(
                    session,
                    device,
                    "foreign_check_in",
                    f"gateway {gateway.name} (id {gateway.id}) reported this device, which "
                    f"belongs to gateway id {device.gateway_id}; nothing was applied",
                    now,
                )
                continue
            tags = sorted(set(report.tags) | set(gateway.tags))
            if device is None:
                device = Device(
                    serial=report.serial,
                    gateway_id=gateway.id,
                    model=report.model,
                    hw_revision=report.hw_revision,
                    bootloader_version=report.bootloader_version,
                    firmware_version=report.firmware_version,
                    firmware_sha256=report.firmware_sha256,
                    security_counter=report.security_counter,
                    site=gateway.site,
                    tags=tags,
                    soc_pct=report.soc_pct,
                    temperature_c=report.temperature_c,
                    integrity_ok=report.integrity_ok,
                    integrity_detail=report.integrity_detail,
                    first_seen_at=now,
                    last_seen_at=now,
                )
                session.add(device)
                session.flush()
                audit(
                    session,
                    principal,
                    "device.register",
                    f"device:{report.serial}",
                    now,
                    model=report.model,
                    hw_revision=report.hw_revision,
                    firmware_version=report.firmware_version,
                )
                self._check_hash(session, device, report.firmware_sha256, now)
            else:
                if device.site != gateway.site:
                    device.site = gateway.site
                if device.tags != tags:
                    device.tags = tags
                identity = (report.model, report.hw_revision, report.bootloader_version)
                if identity != (device.model, device.hw_revision, device.bootloader_version):
                    audit(
                        session,
                        principal,
                        "device.identity",
                        f"device:{report.serial}",
                        now,
                        model=report.model,
                        hw_revision=report.hw_revision,
                        bootloader_version=report.bootloader_version,
                    )
                    device.model, device.hw_revision, device.bootloader_version = identity
                if report.firmware_version != device.firmware_version:
                    self._firmware_changed(session, principal, device, report.firmware_version, now)
                if report.firmware_sha256 != device.firmware_sha256:
                    device.firmware_sha256 = report.firmware_sha256
                    self._check_hash(session, device, report.firmware_sha256, now)
                if report.security_counter != device.security_counter:
                    device.security_counter = report.security_counter
                device.soc_pct = report.soc_pct
                device.temperature_c = report.temperature_c
                device.last_seen_at = now
            if not report.integrity_ok and device.integrity_ok:
                self._raise_flag(
                    session,
                    device,
                    "integrity_fault",
                    report.integrity_detail or "runtime integrity check failed",
                    now,
                )
            device.integrity_ok = report.integrity_ok
            device.integrity_detail = report.integrity_detail
        if refused:
            audit(
                session,
                principal,
                "device.check_in_refused",
                f"gateway:{gateway.name}",
                now,
                reason="devices of another gateway",
                serials=refused[:_AUDIT_LIST_CAP],
                count=len(refused),
            )
        return refused

    def _firmware_changed(
        self, session: Session, principal: Principal, device: Device, version: str, now: datetime
    ) -> None:
        old = device.firmware_version
        device.firmware_version = version
        audit(
            session,
            principal,
            "device.firmware",
            f"device:{device.serial}",
            now,
            old=old,
            new=version,
        )
        # Expected: a campaign of ours is installing (or installed) exactly this version,
        # or the device went back to the version it ran before (rollback).
        installing = session.scalars(
            select(Release.version)
            .join(Campaign, Campaign.release_id == Release.id)
            .join(CampaignDevice, CampaignDevice.campaign_id == Campaign.id)
            .where(
                CampaignDevice.device_id == device.id,
                CampaignDevice.state.in_(_INSTALL_STATES),
            )
        ).all()
        # A BMS may report the MCUboot header version (1.5.0+0) of release 1.5.0.
        expected = next((v for v in installing if device_runs(v, version)), None)
        rolled_back = session.scalars(
            select(CampaignDevice.id).where(
                CampaignDevice.device_id == device.id,
                CampaignDevice.state.in_(_REVERT_STATES),
            )
        ).first()
        if expected is None and rolled_back is None:
            self._raise_flag(
                session,
                device,
                "unexpected_version",
                f"firmware changed from {old} to {version} outside any campaign",
                now,
            )

    def _check_hash(self, session: Session, device: Device, sha256: str, now: datetime) -> None:
        if not sha256:
            return
        releases = [
            r
            for r in session.scalars(select(Release).where(Release.hw_model == device.model))
            if device_runs(r.version, device.firmware_version)
        ]
        known = {c.get("sha256") for r in releases for c in r.components}
        if releases and sha256 not in known:
            self._raise_flag(
                session,
                device,
                "unexpected_hash",
                f"firmware {device.firmware_version} reports SHA-256 {sha256}, "
                "which no uploaded release of that version contains",
                now,
            )

    def _raise_flag(
        self, session: Session, device: Device, kind: str, detail: str, now: datetime
    ) -> None:
        open_flag = session.scalars(
            select(DeviceFlag.id).where(
                DeviceFlag.device_id == device.id,
                DeviceFlag.kind == kind,
                DeviceFlag.acknowledged_at.is_(None),
            )
        ).first()
        if open_flag is not None:
            return
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

    def _offers(
        self, conn: Connection, site_name: str, rows: list[Any], now: datetime
    ) -> list[Offer]:
        """Offers from the device/work rows; turns ``pending`` into ``offered``.

        Listing work a device already has needs no lock (it reads committed state,
        as a check-in just before a pause would). Turning *pending* into *offered*
        does: the campaign rows are taken FOR SHARE and re-read, so an offer never
        slips out after a pause or cancel commits (a pause waits for us, we wait
        for a pause and then see it).
        """
        if not rows:
            return []
        if any(r.cd_state == S.PENDING.value for r in rows):
            campaign_ids = sorted({r.campaign_id for r in rows})
            query = select(_T_CAMPAIGNS.c.id).where(
                _T_CAMPAIGNS.c.id.in_(campaign_ids), _T_CAMPAIGNS.c.status == "running"
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(read=True)
            running = set(conn.execute(query).scalars())
            rows = [r for r in rows if r.campaign_id in running]
            pending = [r.cd_id for r in rows if r.cd_state == S.PENDING.value]
            # Conditional, so a concurrent check-in of the same gateway that offered
            # first leaves us nothing to change and no second history event.
            offered = (
                conn.execute(
                    update(_T_CAMPAIGN_DEVICES)
                    .where(
                        _T_CAMPAIGN_DEVICES.c.id.in_(pending),
                        _T_CAMPAIGN_DEVICES.c.state == S.PENDING.value,
                    )
                    .values(state=S.OFFERED.value, offered_at=now, state_changed_at=now)
                    .returning(_T_CAMPAIGN_DEVICES.c.id)
                )
                .scalars()
                .all()
                if pending
                else []
            )
            if offered:
                conn.execute(
                    _T_STATE_EVENTS.insert(),
                    [
                        {
                            "campaign_device_id": cd_id,
                            "state": S.OFFERED.value,
                            "at": now,
                            "error_code": "",
                            "detail": "",
                        }
                        for cd_id in offered
                    ],
                )
            if not rows:
                return []
        site = conn.execute(
            select(_T_SITE_WINDOWS.c.timezone, _T_SITE_WINDOWS.c.windows).where(
                _T_SITE_WINDOWS.c.site == site_name
            )
        ).one_or_none()
        windows = [MaintenanceWindow.model_validate(w) for w in site.windows] if site else []
        timezone = str(site.timezone) if site else "UTC"
        allowed_now = window_open(windows, timezone, now)
        offers = []
        for row in rows:
            state = S.OFFERED if row.cd_state == S.PENDING.value else DeviceState(row.cd_state)
            offers.append(
                Offer(
                    campaign_id=row.campaign_id,
                    release_id=row.release_id,
                    device_serial=row.serial,
                    state=state,
                    product=row.product,
                    version=row.version,
                    security_counter=row.release_security_counter,
                    artifact_url=f"{self.settings.artifact_url_prefix}/{row.release_id}/artifact",
                    size_bytes=row.size_bytes,
                    sha256=row.release_sha256,
                    policy=OfferPolicy(
                        bandwidth_floor_bps=row.bandwidth_floor_bps,
                        maintenance_timezone=timezone,
                        maintenance_windows=windows,
                        install_allowed_now=allowed_now,
                    ),
                )
            )
        return offers

    # ---- agent: state reports -------------------------------------------

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

    def _own_device(self, session: Session, principal: Principal, serial: str) -> Device:
        device = session.scalars(select(Device).where(Device.serial == serial)).one_or_none()
        if device is None or device.gateway_id != principal.gateway_id:
            raise DeviceNotOnGatewayError(
                f"device {serial!r} is not behind gateway {principal.name}; report it in a "
                "check-in first"
            )
        return device

    # ---- agent: backups -------------------------------------------------

    def store_backup(self, principal: Principal, body: BackupUpload) -> BackupInfo:
        """A backup the gateway's agent took of one of its own devices."""
        assert principal.gateway_id is not None
        return self._store_backup(
            principal, body.device_serial, body.config, body.reason, own_device_only=True
        )

    def store_operator_backup(
        self, principal: Principal, serial: str, body: OperatorBackupUpload
    ) -> BackupInfo:
        """A backup a technician took on site (operator token): any device in the inventory."""
        return self._store_backup(
            principal, serial, body.config, body.reason, own_device_only=False
        )

    def _store_backup(
        self,
        principal: Principal,
        serial: str,
        config: dict[str, Any],
        reason: str,
        *,
        own_device_only: bool,
    ) -> BackupInfo:
        now = self.clock.now()
        content = backup_content(config)
        if len(content) > self.settings.max_backup_bytes:
            raise BackupRejectedError(
                f"backup of {serial} is {len(content)} bytes, limit "
                f"{self.settings.max_backup_bytes}"
            )
        with self.sessions() as session, session.begin():
            if own_device_only:
                device = self._own_device(session, principal, serial)
            else:
                device = self._device(session, serial)
            backup = ConfigBackup(
                device_id=device.id,
                gateway_id=principal.gateway_id,
                uploaded_by=principal.name,
                created_at=now,
                reason=reason,
                sha256=hashlib.sha256(content.encode()).hexdigest(),
                size_bytes=len(content),
                content=content,
            )
            session.add(backup)
            session.flush()
            audit(
                session,
                principal,
                "backup.store",
                f"device:{device.serial}",
                now,
                backup=backup.id,
                sha256=backup.sha256,
                reason=reason,
            )
            return _backup_info(backup, device.serial)

    def list_backups(self, serial: str) -> list[BackupInfo]:
        with self.sessions() as session:
            device = self._device(session, serial)
            rows = session.scalars(
                select(ConfigBackup)
                .where(ConfigBackup.device_id == device.id)
                .order_by(ConfigBackup.id.desc())
            )
            return [_backup_info(b, serial) for b in rows]

    def get_backup(self, principal: Principal, backup_id: int) -> dict[str, Any]:
        with self.sessions() as session:
            backup = session.get(ConfigBackup, backup_id)
            if backup is None:
                raise FleetNotFoundError(f"no backup with id {backup_id}")
            device = session.get(Device, backup.device_id)
            assert device is not None
            if principal.kind == "gateway" and device.gateway_id != principal.gateway_id:
                raise DeviceNotOnGatewayError(
                    f"backup {backup_id} belongs to {device.serial}, not a device of this gateway"
                )
            info = _backup_info(backup, device.serial).model_dump(mode="json")
            info["config"] = json.loads(backup.content)
            return info

    # ---- releases -------------------------------------------------------

    def add_release(
        self, principal: Principal, facts: ReleaseFacts, data: bytes, filename: str
    ) -> tuple[dict[str, Any], bool]:
        """Store a verified release; returns (release, created). Uploading twice is idempotent."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            existing = session.scalars(
                select(Release).where(Release.sha256 == facts.sha256)
            ).one_or_none()
            if existing is not None:
                return _release_dict(existing), False
            # The file and its release row commit together, or neither does.
            self.store.put(session.connection(), facts.sha256, data)
            release = Release(
                product=facts.product,
                version=facts.version,
                security_counter=facts.security_counter,
                hw_model=facts.hw_model,
                hw_revisions=list(facts.hw_revisions),
                min_bootloader=facts.min_bootloader,
                safety_class=facts.safety_class,
                components=list(facts.components),
                release_notes=facts.release_notes,
                sha256=facts.sha256,
                size_bytes=facts.size_bytes,
                filename=filename,
                uploaded_at=now,
                uploaded_by=principal.label,
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

    def audit_rejected_upload(self, principal: Principal, filename: str, code: str) -> None:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            audit(session, principal, "release.rejected", f"file:{filename}", now, code=code)

    def list_releases(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return [_release_dict(r) for r in session.scalars(select(Release).order_by(Release.id))]

    def get_release(self, release_id: int) -> dict[str, Any]:
        with self.sessions() as session:
            release = session.get(Release, release_id)
            if release is None:
                raise FleetNotFoundError(f"no release with id {release_id}")
            return _release_dict(release)

    def artifact_for(self, principal: Principal, release_id: int) -> Release:
        """The release whose file ``principal`` may download (checked present and whole)."""
        with self.sessions() as session:
            release = session.get(Release, release_id)
            if release is None:
                raise FleetNotFoundError(f"no release with id {release_id}")
            if principal.kind == "gateway":
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

    # ---- campaigns ------------------------------------------------------

    def create_campaign(self, principal: Principal, spec: CampaignSpec) -> dict[str, Any]:
        now = self.clock.now()
        range_ = None
        if spec.selector.version_range:
            try:
                range_ = VersionRange.parse(spec.selector.version_range)
            except ValueError as exc:
                raise InvalidCampaignSpecError(f"selector.version_range: {exc}") from exc
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
            release = session.get(Release, spec.release_id)
            if release is None:
                raise FleetNotFoundError(f"no release with id {spec.release_id}")
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
                status="running",
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
            Device.model == release.hw_model, Device.hw_revision.in_(sorted(revisions))
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

    def _campaign_or_404(self, session: Session, campaign_id: int, *, lock: bool) -> Campaign:
        query = select(Campaign).where(Campaign.id == campaign_id)
        if lock and _locking(session):
            query = query.with_for_update()
        campaign = session.scalars(query).one_or_none()
        if campaign is None:
            raise FleetNotFoundError(f"no campaign with id {campaign_id}")
        return campaign

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

    def list_campaigns(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return [
                self._campaign_dict(session, c)
                for c in session.scalars(select(Campaign).order_by(Campaign.id))
            ]

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

    # ---- inventory and flags --------------------------------------------

    def _device(self, session: Session, serial: str) -> Device:
        device = session.scalars(select(Device).where(Device.serial == serial)).one_or_none()
        if device is None:
            raise FleetNotFoundError(f"no device with serial {serial!r}")
        return device

    def list_devices(
        self, *, site: str | None = None, model: str | None = None, flagged: bool = False
    ) -> list[dict[str, Any]]:
        with self.sessions() as session:
            query = select(Device, Gateway.name).join(Gateway, Gateway.id == Device.gateway_id)
            if site:
                query = query.where(Device.site == site)
            if model:
                query = query.where(Device.model == model)
            open_flags: dict[int, list[str]] = {}
            for device_id, kind in session.execute(
                select(DeviceFlag.device_id, DeviceFlag.kind).where(
                    DeviceFlag.acknowledged_at.is_(None)
                )
            ):
                open_flags.setdefault(device_id, []).append(kind)
            result = []
            for device, gateway_name in session.execute(query.order_by(Device.serial)):
                if flagged and device.id not in open_flags:
                    continue
                result.append(_device_dict(device, gateway_name, open_flags.get(device.id, [])))
            return result

    def get_device(self, serial: str) -> dict[str, Any]:
        with self.sessions() as session:
            device = self._device(session, serial)
            gateway = session.get(Gateway, device.gateway_id)
            flags = [
                f.kind
                for f in session.scalars(
                    select(DeviceFlag).where(
                        DeviceFlag.device_id == device.id, DeviceFlag.acknowledged_at.is_(None)
                    )
                )
            ]
            info = _device_dict(device, gateway.name if gateway else "", flags)
            info["campaigns"] = [
                {"campaign_id": cd.campaign_id, "state": cd.state, "error_code": cd.error_code}
                for cd in session.scalars(
                    select(CampaignDevice)
                    .where(CampaignDevice.device_id == device.id)
                    .order_by(CampaignDevice.id)
                )
            ]
            return info

    def move_device(self, principal: Principal, serial: str, gateway_name: str) -> dict[str, Any]:
        """Move a device to another gateway (an operator action; check-ins never move one)."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            device = self._device(session, serial)
            target = session.scalars(
                select(Gateway).where(Gateway.name == gateway_name)
            ).one_or_none()
            if target is None:
                raise FleetNotFoundError(f"no gateway named {gateway_name!r}")
            source = session.get(Gateway, device.gateway_id)
            if device.gateway_id != target.id:
                audit(
                    session,
                    principal,
                    "device.move",
                    f"device:{serial}",
                    now,
                    from_gateway=source.name if source else None,
                    to_gateway=target.name,
                )
                device.gateway_id, device.site = target.id, target.site
            session.flush()
            flags = [
                f.kind
                for f in session.scalars(
                    select(DeviceFlag).where(
                        DeviceFlag.device_id == device.id, DeviceFlag.acknowledged_at.is_(None)
                    )
                )
            ]
            return _device_dict(device, target.name, flags)

    def list_flags(self, *, include_acknowledged: bool = False) -> list[dict[str, Any]]:
        with self.sessions() as session:
            query = select(DeviceFlag, Device.serial).join(
                Device, Device.id == DeviceFlag.device_id
            )
            if not include_acknowledged:
                query = query.where(DeviceFlag.acknowledged_at.is_(None))
            return [
                _flag_dict(flag, serial)
                for flag, serial in session.execute(query.order_by(DeviceFlag.id))
            ]

    def acknowledge_flag(self, principal: Principal, flag_id: int, note: str) -> dict[str, Any]:
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            flag = session.get(DeviceFlag, flag_id)
            if flag is None:
                raise FleetNotFoundError(f"no flag with id {flag_id}")
            if flag.acknowledged_at is None:
                flag.acknowledged_at, flag.acknowledged_by = now, principal.label
            device = session.get(Device, flag.device_id)
            serial = device.serial if device else "?"
            audit(
                session,
                principal,
                "flag.acknowledge",
                f"flag:{flag_id}",
                now,
                device=serial,
                note=note,
            )
            return _flag_dict(flag, serial)


def _only_telemetry_changed(row: Any, report: BmsReport, gateway_id: int, gateway: Any) -> bool:
    """True when a check-in changes nothing about this device but its telemetry.

    Everything compared here is either audited or may raise a flag when it
    changes, so any difference sends the check-in down the audited path.
    """
    if row is None:
        return False
    return bool(
        row.gateway_id == gateway_id
        and row.site == gateway.site
        and row.tags == sorted(set(report.tags) | set(gateway.tags))
        and row.model == report.model
        and row.hw_revision == report.hw_revision
        and row.bootloader_version == report.bootloader_version
        and row.firmware_version == report.firmware_version
        and row.firmware_sha256 == report.firmware_sha256
        and row.security_counter == report.security_counter
        and row.integrity_ok == report.integrity_ok
        and row.integrity_detail == report.integrity_detail
    )


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
