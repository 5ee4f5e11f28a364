"""Updating a string of BMS on one RS485 bus: every safety step per node, one transfer.

A string update runs the normal pipeline (:func:`bmsfw.update.pipeline.run_update`)
for every unit, each in its own thread, so every node gets exactly the checks of a
single update: identify, offline verification of the package against *that* node,
preflight, manual confirmations, configuration backup, authentication, and
afterwards self-test, confirm or rollback, configuration compare, report and audit
record. Only two steps are shared, through a rendezvous that every node's session
passes on its way:

* **transfer**: once every node still in the update has prepared and erased its
  inactive bank, the image goes over the wire once, with unit id 0 (a broadcast,
  no replies), paced at the line rate. Each node then reads its own missing-block
  bitmap and block CRCs and has only those blocks rewritten, addressed. A node that
  failed earlier (preflight, say) never authenticated nor staged an update, so it
  ignores the broadcast: nothing is written to it.
* **reset**: the activation policy decides when a node may reset into its new image:
  ``all`` (every verified node at once; the string is offline once, shortest) or
  ``rolling`` (``rolling_k`` nodes at a time, the next group only after the previous
  one has confirmed or rolled back, so the rest of the string keeps the site
  running). Reboots and self-tests within a group run concurrently; a node that
  fails rolls back by itself and does not hold up the others.

A broadcast carries the decoded image only, so the nodes' sessions do not take a
package's stored bytes here: a compressed package is decoded on the host, and a
delta or encrypted package is refused by the pipeline with its reason (update
such a string one unit after another instead). Should the nodes still ask for
different bytes, one broadcast cannot serve them all: each node is then written
addressed and the string report says so.

Without a broadcast, :func:`run_one_by_one` updates several units after each other
through the plain pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bmsfw.errors import BmsfwError
from bmsfw.package import TrustAnchors
from bmsfw.protocol.modbus import codec
from bmsfw.protocol.modbus.broadcast import BroadcastSender
from bmsfw.protocol.modbus.client import ModbusBus, ModbusSession
from bmsfw.protocol.modbus.errors import ModbusRepairError
from bmsfw.protocol.modbus.registers import INPUT
from bmsfw.protocol.session import (
    BootStatus,
    Channel,
    ConfigSnapshot,
    DeviceIdentity,
    LinkQuality,
    SelfTestResult,
    Telemetry,
    TesterCredentials,
    TransferState,
)
from bmsfw.update.errors import TransferInterruptedError, UpdateFailedNoRollbackError
from bmsfw.update.events import Event, EventSink
from bmsfw.update.pipeline import AskConfirmation, UpdateOptions, run_update
from bmsfw.update.profile import UpdateProfile
from bmsfw.update.report import UpdateReport, write_report

__all__ = [
    "StringPolicy",
    "StringReport",
    "StringRow",
    "run_one_by_one",
    "run_string_update",
]

logger = logging.getLogger(__name__)

Activation = Literal["all", "rolling"]
_Stage = Literal["pre", "transfer", "post"]


@dataclass(frozen=True)
class StringPolicy:
    """How a string is updated (flags ``--activation``, ``--rolling-k`` of ``bmsfw update``)."""

    activation: Activation = "all"
    rolling_k: int = 1
    max_repair_rounds: int = 4
    settle_s: float = 0.01  # the nodes' time to apply the last broadcast frame
    # How long a node may wait for the others at a shared step before it gives up.
    rendezvous_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.activation not in ("all", "rolling"):
            raise ValueError(f"activation must be 'all' or 'rolling', not {self.activation!r}")
        if self.rolling_k < 1:
            raise ValueError(f"rolling_k must be at least 1, not {self.rolling_k}")
        if self.max_repair_rounds < 0 or self.rendezvous_timeout_s <= 0:
            raise ValueError("max_repair_rounds must be >= 0 and rendezvous_timeout_s > 0")


@dataclass(frozen=True)
class StringRow:
    """One line of the string summary table."""

    unit: int
    serial: str
    before: str
    now: str
    outcome: str  # the report's outcome, or "skipped" for a node refused before any write
    failed_step: str
    error_code: str
    repaired_blocks: int
    group: int  # activation group (1-based); 0 when the node never reached the reset


@dataclass
class StringReport:
    """The per-node reports (same format as single updates) plus the string's summary."""

    port: str
    rate: str
    policy: StringPolicy
    reports: list[UpdateReport]
    rows: list[StringRow]
    transfer: dict[str, Any] = field(default_factory=dict)
    total_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        t = self.transfer
        how = (
            f"one broadcast of {t.get('payload_bytes', 0)} bytes in {t.get('duration_s', 0):.2f} s"
            f" ({t.get('frames', 0)} frames, {t.get('repair_frames', 0)} repair frame(s))"
            if t.get("mode") == "broadcast"
            else f"transfer: {t.get('mode', 'none')}"
        )
        activation = (
            "all at once"
            if self.policy.activation == "all"
            else f"rolling, {self.policy.rolling_k} at a time"
        )
        return (
            f"string {self.port} @ {self.rate}: {len(self.rows)} node(s): {parts}; {how}; "
            f"activation {activation}; total {self.total_s:.1f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "rate": self.rate,
            "ok": self.ok,
            "policy": dataclasses.asdict(self.policy),
            "transfer": dict(self.transfer),
            "total_s": round(self.total_s, 3),
            "summary": self.summary(),
            "nodes": [dataclasses.asdict(r) for r in self.rows],
            "reports": [r.to_dict() for r in self.reports],
        }


# --- the rendezvous ------------------------------------------------------------------


class _Rendezvous:
    """Where the node threads meet: the one transfer, and their turn to reset."""

    def __init__(self, bus: ModbusBus, units: Sequence[int], policy: StringPolicy) -> None:
        self.bus = bus
        self.policy = policy
        self.cond = threading.Condition()
        self.live: set[int] = set(units)
        self.stage: dict[int, _Stage] = dict.fromkeys(units, "pre")
        self.payloads: dict[int, bytes] = {}
        self.mode: Literal["", "broadcast", "addressed"] = ""
        self.sent = 0  # payload bytes broadcast so far
        self.total = 0
        self.done = False
        self.error: BmsfwError | None = None
        self.stats: dict[str, Any] = {}
        self.at_reset: set[int] = set()
        self.released: set[int] = set()
        self.group_of: dict[int, int] = {}
        self.groups = 0
        self.repairs: dict[int, dict[str, int]] = {}
        self.payloads_sent_to: frozenset[int] = frozenset()
        self._sender: threading.Thread | None = None

    def join(self) -> None:
        if self._sender is not None:
            self._sender.join()

    def _wait(self, predicate: Callable[[], bool], unit: int, what: str) -> None:
        if not self.cond.wait_for(predicate, timeout=self.policy.rendezvous_timeout_s):
            waiting = sorted(u for u in self.live if self.stage[u] == "pre")
            raise TransferInterruptedError(
                f"unit {unit}: waited {self.policy.rendezvous_timeout_s:g} s for the string "
                f"at {what} (still busy: units {waiting})"
            )

    def leave(self, unit: int) -> None:
        """The node's pipeline returned (whatever the outcome)."""
        with self.cond:
            self.live.discard(unit)
            self.at_reset.discard(unit)
            self.cond.notify_all()

    def passed_transfer(self, unit: int) -> None:
        with self.cond:
            self.stage[unit] = "post"
            self.cond.notify_all()

    # transfer -------------------------------------------------------------------

    def transfer(self, session: ModbusSession, payload: bytes, start_offset: int) -> Iterator[int]:
        unit = session.unit
        with self.cond:
            self.stage[unit] = "transfer"
            self.payloads[unit] = payload
            self.cond.notify_all()
            self._wait(
                lambda: self.mode != "" or all(self.stage[u] != "pre" for u in self.live),
                unit,
                "the broadcast",
            )
            if self.mode == "":
                self._start(len(payload))
            mode = self.mode
        if mode == "addressed" or unit not in self.payloads_sent_to:
            # Either the nodes want different bytes, or this node arrived after the
            # broadcast (it was not erased in time to hear it): write it addressed.
            yield from session.write(payload, start_offset=start_offset)
            return
        yield from self._follow_broadcast()
        stats = _repair(session, payload, self.policy.max_repair_rounds)
        with self.cond:
            self.repairs[unit] = stats
        yield len(payload)

    def _start(self, size: int) -> None:
        """Called with the lock held by the first thread to see everybody ready."""
        waiting = {u: p for u, p in self.payloads.items() if self.stage[u] == "transfer"}
        digests = {hashlib.sha256(p).digest() for p in waiting.values()}
        if len(digests) != 1:
            self.mode = "addressed"
            logger.warning(
                "the nodes need different transfer bytes (%d variants): writing each addressed",
                len(digests),
            )
            return
        self.mode = "broadcast"
        self.total = size
        self.payloads_sent_to = frozenset(waiting)
        payload = next(iter(waiting.values()))
        self._sender = threading.Thread(
            target=self._broadcast, args=(payload,), name="bmsfw-broadcast", daemon=True
        )
        self._sender.start()

    def _broadcast(self, payload: bytes) -> None:
        sender = BroadcastSender(self.bus)
        started = time.perf_counter()
        try:
            for frame in sender.send(payload):
                with self.cond:
                    self.sent = frame.offset + frame.length
                    self.cond.notify_all()
            # Every broadcast byte must be across the (half-duplex) wire before a node is
            # asked for its bitmap.
            time.sleep(self.policy.settle_s)
        except BmsfwError as exc:
            logger.warning("broadcast stopped after %d frame(s): %s", sender.frames, exc)
            with self.cond:
                self.error = exc
        finally:
            duration = time.perf_counter() - started
            with self.cond:
                self.stats = {
                    "frames": sender.frames,
                    "wire_bytes": sender.wire_bytes,
                    "duration_s": round(duration, 3),
                    "wire_time_s": round(sender.wire_time_s, 3),
                }
                self.done = True
                self.cond.notify_all()

    def _follow_broadcast(self) -> Iterator[int]:
        seen = 0

        def moved_on(seen_before: int) -> Callable[[], bool]:
            return lambda: self.done or self.sent > seen_before

        while True:
            with self.cond:
                self.cond.wait_for(moved_on(seen), timeout=1.0)
                sent, done, error = self.sent, self.done, self.error
            if error is not None:
                raise TransferInterruptedError(f"the broadcast stopped at byte {sent}: {error}")
            if done:
                return  # the node's own total comes after its repair
            if sent > seen:
                seen = sent
                yield sent

    # reset ----------------------------------------------------------------------

    def await_reset_turn(self, unit: int) -> int:
        """Block until the policy lets ``unit`` reset; returns its activation group."""
        k = 10**6 if self.policy.activation == "all" else self.policy.rolling_k
        with self.cond:
            self.stage[unit] = "post"
            self.at_reset.add(unit)
            self.cond.notify_all()

            def my_turn() -> bool:
                if unit in self.released:
                    return True
                pending = self.live - self.released
                busy = self.live & self.released
                if busy or not pending or not pending <= self.at_reset:
                    return False
                group = sorted(self.at_reset - self.released)[:k]
                self.groups += 1
                for member in group:
                    self.released.add(member)
                    self.group_of[member] = self.groups
                logger.info("activation group %d: units %s", self.groups, group)
                self.cond.notify_all()
                return unit in self.released

            if not self.cond.wait_for(my_turn, timeout=self.policy.rendezvous_timeout_s):
                raise UpdateFailedNoRollbackError(
                    f"unit {unit}: verified and activated but its turn to reset did not come "
                    f"within {self.policy.rendezvous_timeout_s:g} s; it boots the new image "
                    "at its next reset"
                )
            self.at_reset.discard(unit)
            return self.group_of[unit]


def _repair(session: ModbusSession, image: bytes, max_rounds: int) -> dict[str, int]:
    """Rewrite (addressed) the blocks this node lacks or holds damaged."""
    bus, unit = session.bus, session.unit
    frames = repaired = 0
    missing: set[int] = set()
    for round_no in range(max_rounds + 1):
        block_size, block_count, missing_count = bus.read_input(unit, INPUT.BLOCK_SIZE, 3)
        missing = set(session.missing_blocks(block_count, missing_count))
        crcs = bus.read_input(unit, INPUT.BLOCK_CRC, 2 * block_count)
        for i in range(block_count):
            expected = zlib.crc32(image[i * block_size : (i + 1) * block_size]) & 0xFFFFFFFF
            if i not in missing and codec.join_u32(crcs[2 * i : 2 * i + 2]) != expected:
                missing.add(i)
        if not missing:
            return {
                "repair_frames": frames,
                "repaired_blocks": repaired,
                "repair_rounds": round_no,
            }
        if round_no == max_rounds:
            break
        repaired += len(missing)
        logger.info("unit %d: repairing %d block(s)", unit, len(missing))
        for block in sorted(missing):
            start = block * block_size
            for _ in session.write_range(image, start, start + block_size):
                frames += 1
    raise ModbusRepairError(
        f"unit {unit}: {len(missing)} block(s) still missing after {max_rounds} repair rounds"
    )


class _StringMember:
    """A node's session as its pipeline sees it: shared steps go through the rendezvous."""

    # A broadcast carries the decoded image only: a node in an encoded stream ignores
    # broadcast frames (docs/modbus.md). So the pipeline decodes a compressed package on
    # the host, and refuses a delta or encrypted one with its reason.
    accepts_stored = False

    def __init__(self, session: ModbusSession, rendezvous: _Rendezvous) -> None:
        self.session = session
        self.rendezvous = rendezvous
        self.group = 0

    def identify(self) -> DeviceIdentity:
        return self.session.identify()

    def read_telemetry(self) -> Telemetry:
        return self.session.read_telemetry()

    def read_boot_status(self) -> BootStatus:
        return self.session.read_boot_status()

    def read_image_digest(self) -> bytes:
        return self.session.read_image_digest()

    def link_check(self) -> LinkQuality:
        return self.session.link_check()

    def read_config(self) -> ConfigSnapshot:
        return self.session.read_config()

    def write_config(self, snapshot: ConfigSnapshot) -> None:
        self.session.write_config(snapshot)

    def authenticate(self, credentials: TesterCredentials) -> None:
        self.session.authenticate(credentials)

    def prepare(
        self, header: bytes, *, channel: Channel = "wired", downgrade_authorised: bool = False
    ) -> TransferState:
        state = self.session.prepare(
            header, channel=channel, downgrade_authorised=downgrade_authorised
        )
        # One broadcast carries the whole image to every node: a bank half-written by an
        # earlier attempt is erased rather than resumed, so all nodes start alike.
        return dataclasses.replace(state, contiguous_bytes=0)

    def erase(self) -> None:
        self.session.erase()

    def write(self, image: bytes, *, start_offset: int = 0) -> Iterator[int]:
        return self.rendezvous.transfer(self.session, image, start_offset)

    def verify(self) -> None:
        self.rendezvous.passed_transfer(self.session.unit)
        self.session.verify()

    def activate(self) -> None:
        self.session.activate()

    def reset(self) -> None:
        self.group = self.rendezvous.await_reset_turn(self.session.unit)
        self.session.reset()

    def wait_boot(self, timeout_s: float) -> BootStatus:
        return self.session.wait_boot(timeout_s)

    def read_self_test(self) -> SelfTestResult:
        return self.session.read_self_test()

    def confirm(self) -> None:
        self.session.confirm()

    def rollback(self) -> None:
        self.session.rollback()

    def close(self) -> None:
        """The string owns the bus; the caller closes it."""

    @property
    def address(self) -> str:
        """How the node is reached (the pipeline's transfer-rate floor depends on the link)."""
        return self.session.address


# --- entry points --------------------------------------------------------------------


def _ask_once(
    profile: UpdateProfile, options: UpdateOptions, ask: AskConfirmation | None
) -> UpdateOptions:
    """Confirmations are about the site, not a pack: ask them once for the whole string."""
    confirmed = set(options.confirmed)
    if ask is not None:
        for item in profile.confirmations:
            if item.id not in confirmed and ask(item):
                confirmed.add(item.id)
    return dataclasses.replace(options, confirmed=frozenset(confirmed))


def _locked(sink: EventSink | None) -> EventSink:
    lock = threading.Lock()

    def emit(event: Event) -> None:
        if sink is not None:
            with lock:
                sink(event)

    return emit


def run_string_update(
    sessions: Sequence[ModbusSession],
    package: bytes,
    trust: TrustAnchors,
    options: UpdateOptions,
    *,
    policy: StringPolicy | None = None,
    profile: UpdateProfile | None = None,
    sink: EventSink | None = None,
    ask: AskConfirmation | None = None,
) -> StringReport:
    """Update every unit of ``sessions`` (one RS485 bus) with one broadcast transfer.

    Returns the per-node reports in the order of ``sessions`` and the string summary.
    Reports are written to ``options.report_dir`` once they carry the string's
    transfer data; audit records are appended by each node's pipeline.
    """
    if not sessions:
        raise ValueError("no units to update")
    bus = sessions[0].bus
    if any(s.bus is not bus for s in sessions):
        raise ValueError("a string update needs every unit on the same bus")
    units = [s.unit for s in sessions]
    if len(set(units)) != len(units):
        raise ValueError(f"unit ids repeat: {units}")
    policy = policy or StringPolicy()
    chosen = profile or UpdateProfile()
    shared = dataclasses.replace(_ask_once(chosen, options, ask), report_dir=None)
    rendezvous = _Rendezvous(bus, units, policy)
    members = [_StringMember(s, rendezvous) for s in sessions]
    reports: dict[int, UpdateReport] = {}
    emit = _locked(sink)
    started = time.monotonic()

    def run_node(member: _StringMember) -> None:
        unit = member.session.unit
        try:
            reports[unit] = run_update(member, package, trust, shared, profile=chosen, sink=emit)
        finally:
            rendezvous.leave(unit)

    threads = [
        threading.Thread(target=run_node, args=(m,), name=f"bmsfw-unit{m.session.unit}")
        for m in members
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rendezvous.join()
    missing = [u for u in units if u not in reports]
    if missing:
        raise RuntimeError(f"the pipeline of unit(s) {missing} ended without a report")

    ordered: list[UpdateReport] = []
    rows = []
    for member in members:
        unit = member.session.unit
        report = reports[unit]
        repair = rendezvous.repairs.get(unit, {})
        if report.transfer:
            # what the string shared with this node: the broadcast, its group, its repair
            shared_transfer = dataclasses.replace(
                report.transfer,
                mode=rendezvous.mode if unit in rendezvous.payloads_sent_to else "addressed",
                activation_group=member.group,
                repair_frames=repair.get("repair_frames"),
                repaired_blocks=repair.get("repaired_blocks"),
                repair_rounds=repair.get("repair_rounds"),
            )
            report = dataclasses.replace(report, transfer=shared_transfer)
        if options.report_dir is not None:
            path = write_report(report, options.report_dir)
            report = dataclasses.replace(report, report_path=str(path))
        ordered.append(report)
        wrote = any(s.step == "transfer" for s in report.steps)
        rows.append(
            StringRow(
                unit=unit,
                serial=report.serial,
                before=report.device_before.app_version if report.device_before else "",
                now=report.running_version,
                outcome="skipped" if report.outcome == "refused" and not wrote else report.outcome,
                failed_step=report.failed_step,
                error_code=report.error.code if report.error else "",
                repaired_blocks=repair.get("repaired_blocks", 0),
                group=member.group,
            )
        )
    transfer: dict[str, Any] = {"mode": rendezvous.mode or "none"}
    if rendezvous.mode == "broadcast":
        transfer.update(
            rendezvous.stats,
            payload_bytes=rendezvous.total,
            units=sorted(rendezvous.payloads_sent_to),
            repair_frames=sum(r.get("repair_frames", 0) for r in rendezvous.repairs.values()),
        )
    result = StringReport(
        port=bus.settings.port,
        rate=bus.settings.rate,
        policy=policy,
        reports=ordered,
        rows=rows,
        transfer=transfer,
        total_s=time.monotonic() - started,
    )
    logger.info("%s", result.summary())
    return result


def run_one_by_one(
    sessions: Sequence[Any],
    package: bytes,
    trust: TrustAnchors,
    options: UpdateOptions,
    *,
    profile: UpdateProfile | None = None,
    sink: EventSink | None = None,
    ask: AskConfirmation | None = None,
) -> list[UpdateReport]:
    """Update several units after each other, each through the whole pipeline.

    The way to update a string without a broadcast: only one node is ever down at a
    time, and one that fails does not stop the next.
    """
    chosen = profile or UpdateProfile()
    shared = _ask_once(chosen, options, ask)
    return [run_update(s, package, trust, shared, profile=chosen, sink=sink) for s in sessions]
