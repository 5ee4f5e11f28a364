"""Telemetry history: the latest state of charge and temperature of every device, sampled.

A check-in writes only the latest values onto the device row (the hot path stays one
statement). The server's periodic tick copies them, at most once per ``every``, into
``telemetry_samples`` for every device that checked in since the last sample: one
INSERT ... SELECT for the whole fleet, whatever the check-in rate. Samples older than
``keep`` are deleted on the way. Several server processes may sample at once: on
PostgreSQL an advisory lock serialises them, on SQLite the write lock does, and a
device that already has a sample in the current interval gets no second one.

Volume: one row per device per interval (10,000 devices, 10 min, 3 days: 4.3 million
rows of five columns).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Engine, Table, and_, delete, exists, insert, select, text

from bmsfw.fleet.db import is_postgres, read_only_engine
from bmsfw.fleet.models import Device, TelemetrySample

__all__ = ["Sample", "TelemetryHistory", "TelemetryPolicy"]

log = logging.getLogger(__name__)

_T = cast(Table, TelemetrySample.__table__)
_D = cast(Table, Device.__table__)
_SAMPLING_LOCK = 0x626D7366_0016  # "bmsf" + 0x16: shared by every server process


@dataclass(frozen=True)
class TelemetryPolicy:
    every: timedelta = timedelta(minutes=10)
    keep: timedelta = timedelta(days=3)


@dataclass(frozen=True)
class Sample:
    at: datetime
    soc_pct: float | None
    temperature_c: float | None


class TelemetryHistory:
    """Samples the fleet's latest telemetry into a history, and reads it back."""

    def __init__(self, engine: Engine, policy: TelemetryPolicy | None = None) -> None:
        self.engine = engine
        self.policy = policy or TelemetryPolicy()
        self._reader = read_only_engine(engine)
        self._next_due: datetime | None = None
        self._lock = threading.Lock()

    def sample_if_due(self, now: datetime) -> int:
        """:meth:`sample` when this process has not sampled in the last interval."""
        with self._lock:
            if self._next_due is not None and now < self._next_due:
                return 0
            self._next_due = now + self.policy.every
        return self.sample(now)

    def sample(self, now: datetime) -> int:
        """One sample of every device seen in the last interval that has none in it yet;
        drops samples older than ``keep``. Returns how many samples were taken."""
        since = now - self.policy.every
        d, t = _D.c, _T.c
        fresh = select(d.id, d.last_seen_at, d.soc_pct, d.temperature_c).where(
            d.last_seen_at > since,
            d.last_seen_at <= now,
            (d.soc_pct.is_not(None)) | (d.temperature_c.is_not(None)),
            ~exists().where(and_(t.device_id == d.id, t.at > since)),
        )
        with self.engine.begin() as conn:
            if is_postgres(self.engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SAMPLING_LOCK})
            taken = len(
                conn.execute(
                    insert(_T)
                    .from_select(["device_id", "at", "soc_pct", "temperature_c"], fresh)
                    .returning(_T.c.id)
                ).all()
            )
            conn.execute(delete(_T).where(t.at < now - self.policy.keep))
        log.debug("telemetry: %d sample(s) taken", taken)
        return taken

    def series(self, serial: str, since: datetime, until: datetime) -> list[Sample]:
        """The device's samples in ``[since, until]``, oldest first."""
        t = _T.c
        query = (
            select(t.at, t.soc_pct, t.temperature_c)
            .join(_D, _D.c.id == t.device_id)
            .where(_D.c.serial == serial, t.at >= since, t.at <= until)
            .order_by(t.at)
        )
        with self._reader.connect() as conn:
            return [Sample(r.at, r.soc_pct, r.temperature_c) for r in conn.execute(query)]
