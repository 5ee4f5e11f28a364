"""A hash chain over the fleet's audit log: an entry changed or removed afterwards is
detected.

Entries are written by many transactions in many server processes, and an entry's id
says nothing about when its transaction committed. So entries are not chained as they
are written but *sealed* afterwards, in the order they became visible: the server's
tick (every 15 s) and the audit page take every entry that has no seal yet, under a
lock (PostgreSQL advisory lock; SQLite's write lock), give it the next ``chain_seq``
and ``chain_hash = SHA-256(previous chain_hash + canonical JSON of the entry)``.
:func:`verify_chain` recomputes every seal in ``chain_seq`` order and names the first
entry that does not match (changed, or the one after a removed entry).

What it does not prove: an entry changed before it was sealed (at most one tick after
it was written), or a chain rewritten whole by someone with write access to the
database (keep a copy of the latest hash elsewhere to pin it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, func, select, text, update

from bmsfw.fleet.db import is_postgres, read_only_engine
from bmsfw.fleet.models import AuditEntry

__all__ = ["ChainStatus", "entry_hash", "seal_audit_log", "verify_chain"]

_T = cast(Table, AuditEntry.__table__)
_SEAL_LOCK = 0x626D7366_0017  # "bmsf" + 0x17: shared by every server process
GENESIS = "0" * 64
_BATCH = 1000


def entry_hash(previous: str, row: Any) -> str:
    """The seal of one entry after ``previous`` (pure)."""
    body = json.dumps(
        {
            "id": row.id,
            "at": row.at.isoformat(),
            "actor_id": row.actor_id,
            "actor_name": row.actor_name,
            "action": row.action,
            "target": row.target,
            "detail": row.detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256((previous + body).encode()).hexdigest()


_COLUMNS = (
    _T.c.id,
    _T.c.at,
    _T.c.actor_id,
    _T.c.actor_name,
    _T.c.action,
    _T.c.target,
    _T.c.detail,
)


def seal_audit_log(engine: Engine) -> int:
    """Seal every entry that has none yet; returns how many were sealed."""
    sealed = 0
    while True:
        with engine.begin() as conn:
            if is_postgres(engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SEAL_LOCK})
            last = conn.execute(
                select(_T.c.chain_seq, _T.c.chain_hash)
                .where(_T.c.chain_seq.is_not(None))
                .order_by(_T.c.chain_seq.desc())
                .limit(1)
            ).one_or_none()
            seq, previous = (last.chain_seq, last.chain_hash) if last else (0, GENESIS)
            rows = conn.execute(
                select(*_COLUMNS).where(_T.c.chain_seq.is_(None)).order_by(_T.c.id).limit(_BATCH)
            ).all()
            seals = []
            for row in rows:
                seq += 1
                previous = entry_hash(previous, row)
                seals.append({"b_id": row.id, "b_seq": seq, "b_hash": previous})
            if seals:
                conn.execute(
                    update(_T)
                    .where(_T.c.id == bindparam("b_id"))
                    .values(chain_seq=bindparam("b_seq"), chain_hash=bindparam("b_hash")),
                    seals,
                )
        sealed += len(rows)
        if len(rows) < _BATCH:
            return sealed


@dataclass(frozen=True)
class ChainStatus:
    sealed: int  # entries checked
    unsealed: int  # written since the last seal (not covered yet)
    intact: bool
    broken_at: int | None  # id of the first entry whose seal does not match
    last_hash: str  # pin this elsewhere to detect a chain rewritten whole


def verify_chain(engine: Engine) -> ChainStatus:
    """Recompute every seal in order (reads the whole log, a page of rows at a time)."""
    previous, expected_seq, checked = GENESIS, 0, 0
    reader = read_only_engine(engine)
    with reader.connect() as conn:
        unsealed = conn.execute(select(func.count()).where(_T.c.chain_seq.is_(None))).scalar_one()
        while True:  # a page of rows at a time, by chain_seq
            rows = conn.execute(
                select(*_COLUMNS, _T.c.chain_seq, _T.c.chain_hash)
                .where(_T.c.chain_seq > expected_seq)
                .order_by(_T.c.chain_seq)
                .limit(_BATCH)
            ).all()
            for row in rows:
                expected_seq += 1
                computed = entry_hash(previous, row)
                if row.chain_seq != expected_seq or row.chain_hash != computed:
                    return ChainStatus(checked, int(unsealed), False, row.id, previous)
                previous = computed
                checked += 1
            if len(rows) < _BATCH:
                return ChainStatus(checked, int(unsealed), True, None, previous)
