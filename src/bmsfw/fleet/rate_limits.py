"""Rate limits every server process shares: token buckets in the database.

A bucket (table ``rate_buckets``: key, tokens, time of the last update) holds up to
``burst`` tokens and refills at ``rate_per_s``; the time is each process's wall clock
(UNIX seconds; hosts keep NTP time, and a clock behind the stored time refills
nothing). Every process reads and writes the same rows, so N processes give a client
the rate once, not N times.

* :meth:`SharedBuckets.take` is one statement (an upsert that refills the bucket and
  takes a token only when one is there; PostgreSQL in autocommit, SQLite in its own
  ``BEGIN IMMEDIATE`` transaction): exact across processes. The check-in rate uses it,
  once per check-in.
* :meth:`SharedBuckets.spend` takes tokens whatever the level (down to ``-burst``: a
  debt paid back before the key gets a token again) and :meth:`blocked` lists the keys
  without a token now. Failed authentications use them in batches (see
  :mod:`bmsfw.fleet.app`): a flood of refusals costs the database one statement per
  distinct key and flush, not one per refusal.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    TextClause,
    create_engine,
    delete,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bmsfw.fleet.db import is_postgres, read_only_engine
from bmsfw.fleet.models import RateBucket

__all__ = ["SharedBuckets"]

_T = cast(Table, RateBucket.__table__)
_POOL_SIZE = 4  # PostgreSQL connections per process for the buckets (statements are short)

# The check-in's statement, written out once: a SQLAlchemy construct compiled per call
# (an upsert with expressions) cost 0.6 ms of CPU per check-in; this text costs none.
_TAKE = """
INSERT INTO rate_buckets (key, tokens, at) VALUES (:key, :burst - 1.0, :now)
ON CONFLICT (key) DO UPDATE SET
  tokens = {least}(:burst, rate_buckets.tokens + {greatest}(:now - rate_buckets.at, 0.0) * :rate)
           - 1.0,
  at = :now
WHERE {least}(:burst, rate_buckets.tokens + {greatest}(:now - rate_buckets.at, 0.0) * :rate)
      >= 1.0
RETURNING tokens
"""
_TAKE_POSTGRES = text(_TAKE.format(least="LEAST", greatest="GREATEST"))
_TAKE_SQLITE = text(_TAKE.format(least="MIN", greatest="MAX"))


class SharedBuckets:
    """Token buckets in the database (see the module text)."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self._postgres = is_postgres(engine)
        # PostgreSQL: autocommit (one statement, one round trip) on connections of their
        # own that do not wait for the WAL flush (synchronous_commit off: a crash may
        # lose the last bucket updates, which only refills a client's tokens early; it
        # saves the check-in a flush wait). SQLite: the engine's BEGIN IMMEDIATE
        # transactions (a write lock up front, never a failed upgrade).
        self._writer = _unflushed(engine) if self._postgres else engine
        self._reader = read_only_engine(engine)
        self._clock = clock

    def dispose(self) -> None:
        if self._postgres:
            self._writer.dispose()

    @property
    def _take_sql(self) -> TextClause:
        return _TAKE_POSTGRES if self._postgres else _TAKE_SQLITE

    def _least(self, *args: Any) -> ColumnElement[float]:
        return func.least(*args) if self._postgres else func.min(*args)

    def _greatest(self, *args: Any) -> ColumnElement[float]:
        return func.greatest(*args) if self._postgres else func.max(*args)

    def _level(self, rate_per_s: float, burst: float, now: float) -> ColumnElement[float]:
        """The bucket's tokens now: refilled since its last update, at most ``burst``."""
        elapsed = self._greatest(literal(now) - _T.c.at, 0.0)
        return self._least(literal(burst), _T.c.tokens + elapsed * rate_per_s)

    def _insert(self) -> Any:
        return pg_insert(_T) if self._postgres else sqlite_insert(_T)

    def take(
        self, key: str, rate_per_s: float, burst: float, conn: Connection | None = None
    ) -> float:
        """Take one token of ``key``: 0.0 when taken, else the seconds until one is there.
        In ``conn``'s transaction when given (SQLite: the check-in's own, so the check-in
        takes the write lock once), else in a transaction of its own."""
        now = self._clock()
        params = {"key": key, "rate": rate_per_s, "burst": burst, "now": now}
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self._writer.begin())
            if conn.execute(self._take_sql, params).first() is not None:
                return 0.0
            tokens, at = conn.execute(select(_T.c.tokens, _T.c.at).where(_T.c.key == key)).one()
        return _wait_s(tokens, at, rate_per_s, burst, now)

    def spend(self, counts: Mapping[str, int], rate_per_s: float, burst: float) -> None:
        """Take ``count`` tokens of each key whatever its level (at most down to ``-burst``),
        in one transaction."""
        if not counts:
            return
        now = self._clock()
        level = self._level(rate_per_s, burst, now)
        with self._writer.begin() as conn:
            for key, count in counts.items():
                conn.execute(
                    self._insert()
                    .values(key=key, tokens=max(-burst, burst - count), at=now)
                    .on_conflict_do_update(
                        index_elements=[_T.c.key],
                        set_={"tokens": self._greatest(level - count, -burst), "at": now},
                    )
                )

    def blocked(self, prefix: str, rate_per_s: float, burst: float) -> dict[str, float]:
        """Keys starting with ``prefix`` without a token now, each with the seconds until
        it has one again; forgets the keys of that prefix whose bucket is full again."""
        now = self._clock()
        level = self._level(rate_per_s, burst, now)
        with self._reader.connect() as conn:
            rows = conn.execute(
                select(_T.c.key, _T.c.tokens, _T.c.at).where(
                    _T.c.key.startswith(prefix, autoescape=True), _T.c.tokens < 1.0
                )
            ).all()
        with self._writer.begin() as conn:
            conn.execute(
                delete(_T).where(_T.c.key.startswith(prefix, autoescape=True), level >= burst)
            )
        waits = {key: _wait_s(tokens, at, rate_per_s, burst, now) for key, tokens, at in rows}
        return {key: wait for key, wait in waits.items() if wait > 0}


def _unflushed(engine: Engine) -> Engine:
    """A small autocommit pool on ``engine``'s database whose sessions commit without
    waiting for the WAL flush."""
    own = create_engine(
        engine.url,
        pool_size=_POOL_SIZE,
        max_overflow=0,
        pool_timeout=60,
        isolation_level="AUTOCOMMIT",
    )

    @event.listens_for(own, "connect")
    def _no_flush_wait(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO off")  # for the session
        dbapi_connection.commit()

    return own


def _wait_s(tokens: float, at: float, rate_per_s: float, burst: float, now: float) -> float:
    level = min(burst, tokens + max(0.0, now - at) * rate_per_s)
    return 0.0 if level >= 1.0 else (1.0 - level) / rate_per_s
