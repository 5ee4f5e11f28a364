"""Telemetry history: the latest state of charge and temperature of every device, sampled.

A check-in writes only the latest values onto the device row (the hot path stays one
statement). The server's periodic tick copies them, at most once per ``every``, into
``telemetry_samples`` for every device that checked in since the last sample: one
INSERT ... SELECT for the whole fleet, whatever the check-in rate. Samples older than
``keep`` are deleted by :meth:`TelemetryHistory.prune` on every tick, at most
``PRUNE_BATCH_ROWS`` oldest rows at a time (a server that was down for days, or a
shortened ``keep``, catches up over several ticks instead of one huge transaction).
Several server processes may sample at once: on
PostgreSQL an advisory lock serialises them, on SQLite the write lock does, and a
device that already has a sample in the current interval gets no second one.

Volume: one row per device per interval (10,000 devices, 10 min, 3 days: 4.3 million
rows of five columns).

Both times are server settings (``ServerConfig.telemetry_interval_s`` and
``telemetry_keep_s``; ``bmsfw fleet serve --telemetry-interval-s/--telemetry-keep-days``),
clamped to :data:`~bmsfw.fleet.ranges.TELEMETRY_INTERVAL_RANGE_S` and
:data:`~bmsfw.fleet.ranges.TELEMETRY_KEEP_RANGE_S`. The interval is also sent to the
agents in every check-in answer: an agent checks in at least that often, so each sample
is a fresh reading.
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
from bmsfw.fleet.ranges import TELEMETRY_INTERVAL_RANGE_S, TELEMETRY_KEEP_RANGE_S

__all__ = [
    "PRUNE_BATCH_ROWS",
    "Sample",
    "TelemetryHistory",
    "TelemetryPolicy",
]

log = logging.getLogger(__name__)

_T = cast(Table, TelemetrySample.__table__)
_D = cast(Table, Device.__table__)
_SAMPLING_LOCK = 0x626D7366_0016  # "bmsf" + 0x16: shared by every server process
# At most this many expired samples are deleted by one prune (one tick).
PRUNE_BATCH_ROWS = 20_000


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


@dataclass(frozen=True)
class TelemetryPolicy:
    every: timedelta = timedelta(minutes=10)
    keep: timedelta = timedelta(days=3)

    @classmethod
    def clamped(cls, interval_s: float, keep_s: float) -> TelemetryPolicy:
        """The policy of these settings, each clamped to its documented range (the keep
        to at least two intervals); a clamped value is logged."""
        every_s = _clamp(interval_s, *TELEMETRY_INTERVAL_RANGE_S)
        low_keep_s = max(TELEMETRY_KEEP_RANGE_S[0], 2 * every_s)
        kept_s = _clamp(keep_s, low_keep_s, TELEMETRY_KEEP_RANGE_S[1])
        if (every_s, kept_s) != (interval_s, keep_s):
            log.warning(
                "telemetry interval %g s / keep %g s clamped to %g s / %g s",
                interval_s,
                keep_s,
                every_s,
                kept_s,
            )
        return cls(timedelta(seconds=every_s), timedelta(seconds=kept_s))

    @property
    def interval_s(self) -> int:
        """The interval in whole seconds, as the check-in answer tells it to the agents."""
        return int(self.every.total_seconds())


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

    def tick(self, now: datetime) -> tuple[int, int]:
        """The server tick's work: a sample when due, and one bounded prune; returns how
        many samples were taken and how many expired ones deleted."""
        return self.sample_if_due(now), self.prune(now)

    def prune(self, now: datetime, limit: int = PRUNE_BATCH_ROWS) -> int:
        """Delete the oldest samples older than ``keep``, at most ``limit`` of them (one
        statement, by the index on ``at``); returns how many were deleted."""
        t = _T.c
        expired = select(t.id).where(t.at < now - self.policy.keep).order_by(t.at).limit(limit)
        with self.engine.begin() as conn:
            if is_postgres(self.engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SAMPLING_LOCK})
            deleted = conn.execute(delete(_T).where(t.id.in_(expired.scalar_subquery()))).rowcount
        if deleted:
            log.debug("telemetry: %d expired sample(s) deleted", deleted)
        return int(deleted)

    def sample(self, now: datetime) -> int:
        """One sample of every device seen in the last interval that has none in it yet.
        Returns how many samples were taken."""
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
