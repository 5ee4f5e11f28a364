"""The update procedure as `bmsfw update` runs it, for library-level tests of a protocol
(tests/uds, tests/modbus): the lab's trust anchors, the default confirmations given,
report and audit record written under a records directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bmsfw.link.wirebus import CanFaults
from bmsfw.package import VendorPki
from bmsfw.protocol.modbus import ModbusBus
from bmsfw.protocol.session import BmsSession, TesterCredentials
from bmsfw.sim.lab import trust_anchors
from bmsfw.update.events import Event, TransferProgress
from bmsfw.update.pipeline import UpdateOptions, run_update, run_updates
from bmsfw.update.profile import DEFAULT_CONFIRMATIONS
from bmsfw.update.report import UpdateReport
from bmsfw.update.string import StringPolicy, StringReport, run_string_update

__all__ = [
    "cable_pulled_before_a_block",
    "lab_options",
    "update_node",
    "update_nodes",
    "update_string",
]


def lab_options(records: Path, tester: TesterCredentials) -> UpdateOptions:
    return UpdateOptions(
        backup_dir=records,
        credentials=tester,
        confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
        audit_log=records / "audit.jsonl",
        report_dir=records / "reports",
    )


def cable_pulled_before_a_block(session: Any, from_offset: int) -> Callable[[int], None]:
    """An ``on_progress`` for :func:`update_node` over CAN (a ``UdsSession`` opened by
    ``open_uds_session``): once the transfer reached ``from_offset``, the bus goes silent
    right before the next data block (TransferData) goes out.

    Pulled at the progress event itself, the first request without an answer would be
    the transfer's telemetry check whenever its interval (0.5 s) ran out just then, more
    often on a loaded machine: a read (E360) instead of a data block (E362)."""
    armed = False
    send = session.request

    def request(sid: int, data: bytes = b"", **kw: Any) -> bytes:
        if armed and sid == 0x36:
            session.bus.faults = CanFaults(silent=True)
        return bytes(send(sid, data, **kw))

    def on_progress(offset: int) -> None:
        nonlocal armed
        armed = armed or offset >= from_offset

    session.request = request
    return on_progress


def update_node(
    session: BmsSession,
    package: bytes,
    pki: VendorPki,
    tester: TesterCredentials,
    *,
    records: Path,
    on_progress: Callable[[int], None] | None = None,
) -> UpdateReport:
    """`bmsfw update` on one BMS; ``on_progress`` gets each transfer offset."""

    def sink(event: Event) -> None:
        if on_progress is not None and isinstance(event, TransferProgress):
            on_progress(event.offset)

    options = lab_options(records, tester)
    return run_update(session, package, trust_anchors(pki), options, sink=sink)


def update_nodes(
    sessions: Sequence[BmsSession],
    package: bytes,
    pki: VendorPki,
    tester: TesterCredentials,
    *,
    records: Path,
) -> list[UpdateReport]:
    """`bmsfw update` on several BMS at once (one session and thread each)."""
    return run_updates(sessions, package, trust_anchors(pki), lab_options(records, tester))


def update_string(
    bus: ModbusBus,
    units: Sequence[int],
    package: bytes,
    pki: VendorPki,
    tester: TesterCredentials,
    *,
    records: Path,
) -> StringReport:
    """What `bmsfw update --broadcast` runs: every unit's whole procedure, one broadcast."""
    return run_string_update(
        [bus.session(u) for u in units],
        package,
        trust_anchors(pki),
        lab_options(records, tester),
        policy=StringPolicy(activation="all"),
    )
