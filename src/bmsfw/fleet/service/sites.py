"""Gateways and sites (maintenance windows)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    func,
    select,
)

from bmsfw.fleet.auth import Principal, issue_token
from bmsfw.fleet.errors import (
    FleetConflictError,
    FleetNotFoundError,
    InvalidCampaignSpecError,
)
from bmsfw.fleet.models import (
    Credential,
    Device,
    Gateway,
    SiteWindow,
)
from bmsfw.fleet.paging import EVERYTHING, Listing, PageRequest, keyset, listing
from bmsfw.fleet.schemas import SiteWindowSpec
from bmsfw.fleet.service._base import (
    ServiceBase,
    _gateway_dict,
    _locking,
    audit,
)


class GatewayOps(ServiceBase):
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

    def gateway_page(self, page: PageRequest = EVERYTHING) -> Listing:
        """Gateways by name, one page, each with its device count."""
        with self.sessions() as session:
            rows = session.scalars(keyset(select(Gateway), Gateway.name, page)).all()
            counts = dict(
                session.execute(
                    select(Device.gateway_id, func.count())
                    .where(Device.gateway_id.in_([g.id for g in rows]))
                    .group_by(Device.gateway_id)
                ).all()
            )
            return listing(
                rows, page, lambda g: str(g.name), lambda g: _gateway_dict(g, counts.get(g.id, 0))
            )

    def decommission_gateway(self, principal: Principal, name: str, reason: str) -> dict[str, Any]:
        """Retire a gateway: its credentials revoked (in this process at once, elsewhere
        within the credential cache's TTL), its devices and history kept. Idempotent."""
        now = self.clock.now()
        with self.sessions() as session, session.begin():
            query = select(Gateway).where(Gateway.name == name)
            if _locking(session):
                query = query.with_for_update()
            gateway = session.scalars(query).one_or_none()
            if gateway is None:
                raise FleetNotFoundError(f"no gateway named {name!r}")
            devices = (
                session.scalar(select(func.count()).where(Device.gateway_id == gateway.id)) or 0
            )
            revoked: list[int] = []
            if gateway.decommissioned_at is None:
                gateway.decommissioned_at = now
                for credential in session.scalars(
                    select(Credential).where(
                        Credential.gateway_id == gateway.id, Credential.revoked_at.is_(None)
                    )
                ):
                    credential.revoked_at = now
                    revoked.append(credential.id)
                audit(
                    session,
                    principal,
                    "gateway.decommission",
                    f"gateway:{name}",
                    now,
                    reason=reason,
                    revoked_credentials=revoked,
                    devices=devices,
                )
            answer = _gateway_dict(gateway, devices)
        for credential_id in revoked:
            self.credentials.invalidate(credential_id)
        return answer

    def list_gateways(self) -> list[dict[str, Any]]:
        return self.gateway_page().items

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
