"""Prometheus metrics of the fleet server (``GET /metrics``, text format 0.0.4).

Two kinds, told apart by their names in docs/fleet.md ("Metrics"):

* per process, counted as requests pass (prometheus_client counters and histograms in
  a registry of this app, never the global one): HTTP requests by route template,
  method and status, their latency by route, check-ins by result, refused requests
  by error code. With several server processes, scrape each (or sum them).
* fleet-wide, read from the database at scrape time (a handful of GROUP BY queries, the
  same in every process): devices online/offline and decommissioned, campaigns by
  status, the devices of each open campaign by state, open flags by kind.

Route labels are route templates (``/api/v1/devices/{serial}``), never raw paths, so a
scanner probing random URLs cannot grow the label set ("other" counts those).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bmsfw.fleet.clock import Clock
from bmsfw.fleet.models import Campaign, CampaignDevice, Device, DeviceFlag
from bmsfw.fleet.protocol import DeviceState

__all__ = ["CONTENT_TYPE", "FleetMetrics", "MetricsMiddleware"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Campaign statuses whose devices are broken down by state (finished ones are history).
_OPEN_CAMPAIGNS = ("running", "paused", "needs_approval")
# At most this many open campaigns are broken down per scrape (newest first).
_MAX_CAMPAIGNS = 100
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _FleetCollector(Collector):
    """Fleet-wide gauges read from the database when scraped."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock, online_after_s: float
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.online_after_s = online_after_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        since = self.clock.now() - timedelta(seconds=self.online_after_s)
        devices = GaugeMetricFamily(
            "bmsfw_fleet_devices",
            "Devices in the inventory by connectivity (online: checked in within three poll "
            "intervals) and service state",
            labels=["online", "decommissioned"],
        )
        campaigns = GaugeMetricFamily(
            "bmsfw_fleet_campaigns", "Campaigns by status", labels=["status"]
        )
        progress = GaugeMetricFamily(
            "bmsfw_fleet_campaign_devices",
            "Devices of each open campaign (running, paused, waiting for approval) by state",
            labels=["campaign", "status", "state"],
        )
        flags = GaugeMetricFamily(
            "bmsfw_fleet_open_flags", "Unacknowledged device flags by kind", labels=["kind"]
        )
        with self.sessions() as s:
            online = (Device.last_seen_at >= since).label("online")
            retired = Device.decommissioned_at.is_not(None).label("retired")
            counts = {
                (bool(on), bool(off)): int(n)
                for on, off, n in s.execute(
                    select(online, retired, func.count()).group_by(online, retired)
                )
            }
            for on in (True, False):
                for off in (False, True):
                    devices.add_metric([_yes(on), _yes(off)], float(counts.get((on, off), 0)))
            for status, n in s.execute(
                select(Campaign.status, func.count()).group_by(Campaign.status)
            ):
                campaigns.add_metric([str(status)], float(n))
            open_ids = list(
                s.execute(
                    select(Campaign.id, Campaign.status)
                    .where(Campaign.status.in_(_OPEN_CAMPAIGNS))
                    .order_by(Campaign.id.desc())
                    .limit(_MAX_CAMPAIGNS)
                )
            )
            states: dict[int, dict[str, int]] = {cid: {} for cid, _ in open_ids}
            for cid, state, n in s.execute(
                select(CampaignDevice.campaign_id, CampaignDevice.state, func.count())
                .where(CampaignDevice.campaign_id.in_(list(states)))
                .group_by(CampaignDevice.campaign_id, CampaignDevice.state)
            ):
                states[cid][str(state)] = int(n)
            for cid, status in open_ids:
                for state in DeviceState:
                    progress.add_metric(
                        [str(cid), str(status), state.value],
                        float(states[cid].get(state.value, 0)),
                    )
            for kind, n in s.execute(
                select(DeviceFlag.kind, func.count())
                .where(DeviceFlag.acknowledged_at.is_(None))
                .group_by(DeviceFlag.kind)
            ):
                flags.add_metric([str(kind)], float(n))
        yield from (devices, campaigns, progress, flags)


def _yes(value: bool) -> str:
    return "true" if value else "false"


class FleetMetrics:
    """This app's registry: the request counters and the fleet collector."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock, online_after_s: float
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "bmsfw_fleet_http_requests",
            "HTTP requests answered by this process, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bmsfw_fleet_http_request_duration_seconds",
            "Time from request to the end of the answer in this process, by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.check_ins = Counter(
            "bmsfw_fleet_check_ins",
            "Agent check-ins answered by this process: ok, or refused (any error status)",
            ["result"],
            registry=self.registry,
        )
        self.refused = Counter(
            "bmsfw_fleet_refused_requests",
            "Requests this process refused for credentials, role, size or rate, by error code",
            ["reason", "status"],
            registry=self.registry,
        )
        self.registry.register(_FleetCollector(sessions, clock, online_after_s))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def count_refusal(self, status: int, code: str) -> None:
        self.refused.labels(reason=code, status=str(status)).inc()


CHECK_IN_ROUTE = "/api/v1/agent/check-in"


class MetricsMiddleware:
    """Counts every HTTP request by route template and its latency (pure ASGI)."""

    def __init__(self, app: ASGIApp, metrics: FleetMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = _template(scope)
            self.metrics.requests.labels(route, str(scope.get("method", "?")), str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            if route == CHECK_IN_ROUTE:
                self.metrics.check_ins.labels("ok" if status < 400 else "refused").inc()


def _template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if str(scope.get("path", "")).startswith("/ui"):
        return "/ui"
    return "other"
