"""The agent's check-in: inventory, telemetry and offers; on PostgreSQL the common
case is one statement (its SQL is here, built once)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    Connection,
    Float,
    String,
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
from sqlalchemy.orm import Session

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.campaigns import (
    window_open,
)
from bmsfw.fleet.errors import (
    DeviceDecommissionedError,
    DeviceNotOnGatewayError,
    FleetNotFoundError,
    GatewayDecommissionedError,
    InvalidCampaignSpecError,
)
from bmsfw.fleet.models import (
    Campaign,
    CampaignDevice,
    Credential,
    Device,
    Gateway,
    Release,
)
from bmsfw.fleet.protocol import (
    BmsReport,
    CheckIn,
    CheckInResponse,
    DeviceState,
    MaintenanceWindow,
    Offer,
    OfferDowngrade,
    OfferPolicy,
    Refusal,
    as_one_line,
)
from bmsfw.fleet.service._base import (
    _AUDIT_LIST_CAP,
    _INSTALL_STATES,
    _LAST_USED_RESOLUTION,
    _REVERT_STATES,
    _T_CAMPAIGN_DEVICES,
    _T_CAMPAIGNS,
    _T_CREDENTIALS,
    _T_DEVICES,
    _T_GATEWAYS,
    _T_RELEASES,
    _T_SITE_WINDOWS,
    _T_STATE_EVENTS,
    _TERMINAL_VALUES,
    S,
    ServiceBase,
    audit,
)
from bmsfw.fleet.service.campaigns import hold_for_joins, join_dynamic_campaigns
from bmsfw.package.version import device_runs

# Prebuilt check-in statements (built once; SQLAlchemy caches their compiled form).
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
        _T_GATEWAYS.c.name,
        _T_GATEWAYS.c.site,
        _T_GATEWAYS.c.tags,
        _T_GATEWAYS.c.agent_version,
        _T_GATEWAYS.c.decommissioned_at,
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
        _T_DEVICES.c.decommissioned_at,
        _T_CAMPAIGN_DEVICES.c.id.label("cd_id"),
        _T_CAMPAIGN_DEVICES.c.state.label("cd_state"),
        _T_CAMPAIGNS.c.id.label("campaign_id"),
        _T_CAMPAIGNS.c.bandwidth_floor_bps,
        _T_CAMPAIGNS.c.selector.label("campaign_selector"),
        _T_CAMPAIGNS.c.created_by.label("campaign_created_by"),
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
            g.decommissioned_at.label("gw_decommissioned_at"),
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
            d.decommissioned_at.is_(None),  # refused (and flagged) by the full path
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


# The flag a decommissioned device (or one of a decommissioned gateway) gets when it is
# still reported by a check-in.
DECOMMISSIONED_CHECK_IN = "decommissioned_check_in"


def _retired_gateway(name: str, since: datetime) -> GatewayDecommissionedError:
    return GatewayDecommissionedError(
        f"gateway {name!r} was decommissioned on {since.isoformat()}; nothing it sent was applied"
    )


class _Inventory(NamedTuple):
    refused: list[Refusal]  # devices refused, with the code why
    changed: list[Device]  # new, or changed in what a selector reads: may join a campaign


def _selected_by(device: Device) -> tuple[str, str, str, int, str, list[str]]:
    """What campaign selectors and the target rule read of a device."""
    return (
        device.model,
        device.hw_revision,
        device.firmware_version,
        device.security_counter,
        device.site,
        list(device.tags),
    )


class _GatewayRow(NamedTuple):
    name: str
    site: str
    tags: list[str]


class CheckInOps(ServiceBase):
    def check_in(
        self, principal: Principal, body: CheckIn, *, touch_credential: bool = False
    ) -> CheckInResponse:
        """Inventory, telemetry and offers in ONE transaction (all of it or nothing)."""
        with self.engine.begin() as conn:
            return self._check_in(conn, principal, body, touch_credential)

    def refuse_retired_gateway(
        self, token_hash: str, body: CheckIn | None
    ) -> GatewayDecommissionedError | None:
        """A check-in refused for its credential: when that credential is a gateway's
        that was decommissioned, flag the devices it names that are that gateway's own
        (``decommissioned_check_in``, once until acknowledged; each new flag audited with
        one ``gateway.check_in_refused`` entry) and return the refusal to answer
        (BMSFW-E660). None for any other credential (the caller answers as it would).

        Only devices of the gateway itself are flagged, so a stolen old token can flag
        nothing else; ``body`` is None for a body that does not validate (flags nothing).
        """
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            row = session.execute(
                select(Credential, Gateway)
                .join(Gateway, Gateway.id == Credential.gateway_id)
                .where(Credential.token_hash == token_hash, Gateway.decommissioned_at.is_not(None))
            ).one_or_none()
            if row is None:
                return None
            credential, gateway = row
            assert gateway.decommissioned_at is not None
            serials = sorted({d.serial for d in body.devices}) if body is not None else []
            flagged = [
                device.serial
                for device in session.scalars(
                    select(Device)
                    .where(Device.gateway_id == gateway.id, Device.serial.in_(serials))
                    .order_by(Device.serial)
                )
                if self._raise_flag(
                    session,
                    device,
                    DECOMMISSIONED_CHECK_IN,
                    f"its gateway {gateway.name}, decommissioned on "
                    f"{gateway.decommissioned_at.isoformat()}, still checks in; nothing was "
                    "applied",
                    now,
                )
            ]
            if flagged:
                actor = Principal(
                    credential.id,
                    credential.name,
                    credential.kind,
                    credential.role,
                    credential.gateway_id,
                    credential.expires_at,
                )
                audit(
                    session,
                    actor,
                    "gateway.check_in_refused",
                    f"gateway:{gateway.name}",
                    now,
                    reason="gateway decommissioned",
                    serials=flagged[:_AUDIT_LIST_CAP],
                    count=len(flagged),
                )
            return _retired_gateway(gateway.name, gateway.decommissioned_at)

    def check_in_by_token(
        self,
        principal: Principal | None,
        token_hash: str,
        admit: Callable[[Principal | None], bool],
        parse: Callable[[], CheckIn],
        first: Callable[[Connection], None] | None = None,
    ) -> CheckInResponse:
        """A check-in whose token this process may not have cached yet (the HTTP route).

        ``principal`` is the cached one, or None: then the credential is read in the
        check-in's own transaction (no second connection). ``admit`` refuses (raises)
        unknown, revoked or wrong-role credentials and says whether last use is due;
        ``parse`` validates the body, after the credential check. ``first`` runs at the
        start of the transaction (the route's rate limit; it may refuse by raising).
        """
        with self.engine.begin() as conn:
            if first is not None:
                first(conn)
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
            if head.gw_decommissioned_at is not None:
                raise _retired_gateway(head.gw_name, head.gw_decommissioned_at)
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
                    telemetry_interval_s=self.settings.telemetry_interval_s,
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
        if gateway_row.decommissioned_at is not None:  # a credential cached before it
            raise _retired_gateway(gateway_row.name, gateway_row.decommissioned_at)
        devices_work = _DEVICES_WORK_BY_DIALECT[conn.dialect.name]
        rows = conn.execute(devices_work, {"b_serials": serials}).all() if serials else []
        known = {r.serial: r for r in rows}
        refused: list[Refusal] = []
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
                joining = hold_for_joins(session)  # before any device row is written
                self._update_gateway(session, principal, gateway, body, now)
                inventory = self._update_inventory(session, principal, gateway, body, now)
                refused = inventory.refused
                session.flush()
                if joining:
                    join_dynamic_campaigns(session, inventory.changed, now, "check-in")
                site = gateway.site
            rows = conn.execute(devices_work, {"b_serials": serials}).all()
        # Work is offered for this gateway's own devices only.
        own_work = [r for r in rows if r.cd_id is not None and r.gateway_id == principal.gateway_id]
        offers = self._offers(conn, site, own_work, now)
        return CheckInResponse(
            gateway=gateway_row.name,
            server_time=now,
            poll_interval_s=self.settings.poll_interval_s,
            telemetry_interval_s=self.settings.telemetry_interval_s,
            offers=offers,
            refused_serials=[r.serial for r in refused],
            refusals=refused,
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
    ) -> _Inventory:
        """Apply the reported inventory; returns the devices refused, with the code why,
        and the devices that are new or changed in what a campaign selects them by.

        A device belongs to the gateway that registered it. A check-in naming a device
        of another gateway changes nothing about it (no move, no telemetry): the device
        is flagged ``foreign_check_in`` for the operator and the refusal is audited (one
        entry per check-in). Moving a device is ``POST /devices/{serial}/move``. A
        decommissioned device is refused the same way (``decommissioned_check_in``).
        """
        serials = [d.serial for d in body.devices]
        if len(set(serials)) != len(serials):
            raise InvalidCampaignSpecError("the check-in lists a BMS serial twice")
        existing = {
            d.serial: d for d in session.scalars(select(Device).where(Device.serial.in_(serials)))
        }
        refused: list[Refusal] = []
        retired: list[str] = []
        changed: list[Device] = []
        for report in body.devices:
            device = existing.get(report.serial)
            if device is not None and device.gateway_id != gateway.id:
                refused.append(Refusal(serial=report.serial, code=DeviceNotOnGatewayError.code))
                self._raise_flag(
                    session,
                    device,
                    "foreign_check_in",
                    f"gateway {gateway.name} (id {gateway.id}) reported this device, which "
                    f"belongs to gateway id {device.gateway_id}; nothing was applied",
                    now,
                )
                continue
            if device is not None and device.decommissioned_at is not None:
                refused.append(Refusal(serial=report.serial, code=DeviceDecommissionedError.code))
                retired.append(report.serial)
                self._raise_flag(
                    session,
                    device,
                    DECOMMISSIONED_CHECK_IN,
                    f"gateway {gateway.name} reported this device, decommissioned on "
                    f"{device.decommissioned_at.isoformat()}; nothing was applied",
                    now,
                )
                continue
            tags = sorted(set(report.tags) | set(gateway.tags))
            registered = device is None
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
                changed.append(device)
            else:
                if _selected_by(device) != (
                    report.model,
                    report.hw_revision,
                    report.firmware_version,
                    report.security_counter,
                    gateway.site,
                    tags,
                ):
                    changed.append(device)
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
            # A fault is flagged when it appears, including on a device's first check-in.
            if not report.integrity_ok and (registered or device.integrity_ok):
                self._raise_flag(
                    session,
                    device,
                    "integrity_fault",
                    report.integrity_detail or "runtime integrity check failed",
                    now,
                )
            device.integrity_ok = report.integrity_ok
            device.integrity_detail = report.integrity_detail
        foreign = [r.serial for r in refused if r.serial not in retired]
        for reason, serials in (
            ("devices of another gateway", foreign),
            ("decommissioned devices", retired),
        ):
            if serials:
                audit(
                    session,
                    principal,
                    "device.check_in_refused",
                    f"gateway:{gateway.name}",
                    now,
                    reason=reason,
                    serials=serials[:_AUDIT_LIST_CAP],
                    count=len(serials),
                )
        return _Inventory(refused, changed)

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
                    downgrade=_downgrade(row),
                )
            )
        return offers


def _downgrade(row: Any) -> OfferDowngrade | None:
    """A downgrade campaign's reason, sent with its offers (None: an ordinary campaign).
    A downgrade campaign never starts before a second person approved it (four eyes)."""
    selector = row.campaign_selector if isinstance(row.campaign_selector, dict) else {}
    reason = as_one_line(str(selector.get("downgrade_reason", "")), 500)
    if not reason:
        return None
    return OfferDowngrade(
        reason=reason, requested_by=as_one_line(str(row.campaign_created_by), 120)
    )


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
