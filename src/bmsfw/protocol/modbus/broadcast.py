"""Broadcast update of a whole RS485 string: send the image once, repair, activate.

1. Per node (addressed): identify, authenticate, prepare (release header), erase.
2. Once for all (unit 0, no replies): the image through the transfer window.
3. Per node: read the missing-block bitmap and the per-block CRC-32s, rewrite
   only the blocks that are missing or differ (addressed), until none are left.
4. Per node: verify, activate.
5. Reset by the activation policy: ``all`` resets every node at once (the string
   is offline once, shortest); ``rolling`` resets ``rolling_k`` nodes at a time
   (the rest keeps the site running). Reboots and self-tests of a group run
   concurrently on the devices; a node whose self-test fails reverts by itself
   and never holds up the others. Nodes that pass are confirmed.

The report lists every node with its outcome, whatever happened to the others.

A broadcast carries the *decoded* image only (raw window writes): per-node
repair rewrites lost blocks out of order, which a stream decoder cannot take
(EncodedTransfer decodes strictly in sequence, and nothing but the image may be
written into the bank). So a compressed release is broadcast as the image the
updater decoded; a delta or encrypted release, which only each BMS can decode,
is refused before any node is touched (BMSFW-E380): update those nodes one by
one with their stored bytes.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bmsfw.errors import BmsfwError
from bmsfw.link.wire import modbus_silence_s
from bmsfw.package import Manifest, decode_header
from bmsfw.protocol.modbus import codec
from bmsfw.protocol.modbus.client import ModbusBus, ModbusSession
from bmsfw.protocol.modbus.errors import (
    ModbusBroadcastEncodedError,
    ModbusFrameError,
    ModbusNoReplyError,
    ModbusRepairError,
)
from bmsfw.protocol.modbus.registers import INPUT
from bmsfw.protocol.session import BootStatus, SelfTestResult, TesterCredentials

__all__ = [
    "BroadcastPolicy",
    "BroadcastReport",
    "BroadcastSender",
    "NodeOutcome",
    "broadcast_update",
    "check_broadcastable",
    "serial_wire_time_s",
]

log = logging.getLogger(__name__)

Outcome = Literal["confirmed", "rolled-back", "failed", "not-confirmed"]


@dataclass(frozen=True)
class BroadcastPolicy:
    activation: Literal["all", "rolling"] = "all"
    rolling_k: int = 1
    boot_timeout_s: float = 60.0
    max_repair_rounds: int = 4
    confirm: bool = True  # confirm nodes whose self-test passed
    settle_s: float = 0.01  # the nodes' time to apply the last frame

    def __post_init__(self) -> None:
        if self.activation not in ("all", "rolling"):
            raise ValueError(f"activation must be 'all' or 'rolling', not {self.activation!r}")
        if self.rolling_k < 1:
            raise ValueError("rolling_k must be at least 1")


@dataclass(frozen=True)
class NodeOutcome:
    unit: int
    serial: str = ""
    old_version: str = ""
    running_version: str = ""
    result: Outcome = "failed"
    repaired_blocks: int = 0
    repair_rounds: int = 0
    revert_reason: str = ""
    self_test: SelfTestResult | None = None
    error: dict[str, str] | None = None
    step: str = ""  # the step that failed, if any


@dataclass(frozen=True)
class BroadcastReport:
    nodes: tuple[NodeOutcome, ...]
    image_size: int
    broadcast_frames: int
    broadcast_s: float
    broadcast_wire_s: float
    repair_frames: int
    total_s: float
    rate: str
    timeline: tuple[tuple[str, float], ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(n.result == "confirmed" for n in self.nodes)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.result] = counts.get(node.result, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        return (
            f"{len(self.nodes)} node(s): {parts}; image {self.image_size} bytes broadcast in "
            f"{self.broadcast_s:.2f} s ({self.broadcast_frames} frames), "
            f"{self.repair_frames} repair frame(s), total {self.total_s:.2f} s at {self.rate}"
        )


def serial_wire_time_s(
    frames: int, nbytes: int, baud_bps: int, char_bits: float = 11, frame_gap: str = "spec"
) -> float:
    """Characters plus one t3.5 silence per frame (:func:`~bmsfw.link.wire.modbus_silence_s`)."""
    return nbytes * char_bits / baud_bps + frames * modbus_silence_s(baud_bps, char_bits, frame_gap)


@dataclass
class _Node:
    session: ModbusSession
    outcome: dict[str, Any]
    alive: bool = True

    def fail(self, step: str, exc: BmsfwError) -> None:
        self.alive = False
        self.outcome.update(result="failed", step=step, error=exc.to_dict())
        log.warning("unit %d: %s failed: %s", self.session.unit, step, exc)


class BroadcastSender:
    """Send a payload once to every node (unit 0) through the transfer window.

    No reply paces a broadcast, so the master keeps the line rate and the t3.5
    silence itself; that also keeps the port's buffer (and its write time-out) from
    filling on a slow line. :attr:`frames` and :attr:`wire_bytes` count what has been
    sent so far, also when a write fails part-way.
    """

    def __init__(self, bus: ModbusBus) -> None:
        self.bus = bus
        self.frames = 0
        self.wire_bytes = 0

    def send(self, payload: bytes) -> Iterator[codec.WindowWrite]:
        """Write ``payload`` frame by frame, yielding each frame once it is written."""
        settings = self.bus.settings
        char_s = settings.char_bits / settings.baud_bps
        next_at = time.perf_counter()
        for frame in codec.window_writes(payload):
            now = time.perf_counter()
            if now < next_at:
                time.sleep(next_at - now)
            self.bus.write(0, frame.address, frame.values)
            nbytes = 9 + 2 * len(frame.values)  # RTU frame of a 0x10 write
            next_at = max(now, next_at) + nbytes * char_s + settings.silence_s
            self.frames += 1
            self.wire_bytes += nbytes
            yield frame

    @property
    def wire_time_s(self) -> float:
        """The line time of what was sent: characters plus one t3.5 per frame."""
        settings = self.bus.settings
        return serial_wire_time_s(
            self.frames, self.wire_bytes, settings.baud_bps, settings.char_bits, settings.frame_gap
        )


def _expected_crcs(image: bytes, block_size: int) -> list[int]:
    return [
        zlib.crc32(image[o : o + block_size]) & 0xFFFFFFFF for o in range(0, len(image), block_size)
    ]


def _repair(node: _Node, image: bytes, max_rounds: int) -> int:
    """Rewrite missing or damaged blocks; returns the number of frames sent."""
    session = node.session
    frames = 0
    for round_no in range(max_rounds + 1):
        regs = session.bus.read_input(session.unit, INPUT.BLOCK_SIZE, 3)
        block_size, block_count, missing_count = regs
        missing = set(session.missing_blocks(block_count, missing_count))
        crcs = session.bus.read_input(session.unit, INPUT.BLOCK_CRC, 2 * block_count)
        expected = _expected_crcs(image, block_size)
        for i in range(block_count):
            if i not in missing and codec.join_u32(crcs[2 * i : 2 * i + 2]) != expected[i]:
                missing.add(i)
        if not missing:
            return frames
        if round_no == max_rounds:
            break
        node.outcome["repair_rounds"] = round_no + 1
        node.outcome["repaired_blocks"] = node.outcome.get("repaired_blocks", 0) + len(missing)
        log.info("unit %d: repairing %d block(s)", session.unit, len(missing))
        for block in sorted(missing):
            start = block * block_size
            for _ in session.write_range(image, start, start + block_size):
                frames += 1
    raise ModbusRepairError(
        f"unit {session.unit}: {len(missing)} block(s) still missing after {max_rounds} rounds"
    )


def check_broadcastable(header: bytes, image: bytes) -> None:
    """Refuse a release a broadcast cannot carry (see the module doc); sends nothing."""
    try:
        component = Manifest.from_json_bytes(decode_header(header).manifest).component("app")
    except (BmsfwError, KeyError, ValueError):
        return  # the BMS verifies the header itself and refuses it at PREPARE
    if component.is_delta or component.encryption != "none":
        kind = "a delta patch" if component.is_delta else f"encrypted ({component.encryption})"
        raise ModbusBroadcastEncodedError(
            f"release app component is {kind}: only each BMS can decode it from an unbroken "
            "stream, which a broadcast with repair cannot give; update the nodes one by one"
        )
    if len(image) != component.image_size:
        raise ModbusBroadcastEncodedError(
            f"a broadcast carries the decoded image ({component.image_size} bytes), not "
            f"{len(image)} bytes (stored {component.encoding} bytes?)"
        )


def _boot_all(
    nodes: list[_Node], policy: BroadcastPolicy, poll_s: float = 0.05
) -> dict[int, BootStatus]:
    """Wait for every node of a group to be back in its application (concurrently)."""
    deadline = time.monotonic() + policy.boot_timeout_s
    pending = {n.session.unit: n for n in nodes}
    booted: dict[int, BootStatus] = {}
    seen_down: set[int] = set()
    while pending and time.monotonic() < deadline:
        for unit, node in list(pending.items()):
            try:
                status = node.session.read_boot_status()
            except (ModbusNoReplyError, ModbusFrameError):
                seen_down.add(unit)
                continue
            if status.run_state != "application":
                seen_down.add(unit)
                continue
            if status.image_state == "confirmed" and unit not in seen_down:
                continue  # the reset has not taken the node down yet
            booted[unit] = status
            del pending[unit]
        if pending:
            time.sleep(poll_s)
    for unit, node in pending.items():
        node.alive = False
        node.outcome.update(
            result="failed",
            step="boot",
            error={
                "code": "BMSFW-E255",
                "message": f"unit {unit} not back within {policy.boot_timeout_s} s",
            },
        )
    return booted


def broadcast_update(
    bus: ModbusBus,
    units: Sequence[int],
    header: bytes,
    image: bytes,
    credentials: TesterCredentials,
    *,
    policy: BroadcastPolicy | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> BroadcastReport:
    """Update every unit in ``units`` on ``bus`` with one broadcast of ``image``.

    ``image`` is the decoded image (for a compressed release too); a delta or an
    encrypted release cannot be broadcast (BMSFW-E380, nothing sent).
    """
    check_broadcastable(header, image)
    policy = policy or BroadcastPolicy()
    started = time.monotonic()
    timeline: list[tuple[str, float]] = []

    def mark(what: str) -> None:
        timeline.append((what, time.monotonic() - started))
        if progress is not None:
            progress(what, len(timeline))

    nodes = [_Node(bus.session(u), {"unit": u}) for u in units]

    # 1. per node: identify, authenticate, prepare, erase
    for node in nodes:
        step = "identify"
        try:
            try:
                ident = node.session.identify()
            except (ModbusNoReplyError, ModbusFrameError):
                ident = node.session.identify()  # one more try: a reply lost on a busy line
            node.outcome.update(serial=ident.serial, old_version=ident.app_version)
            step = "authenticate"
            node.session.authenticate(credentials)
            step = "prepare"
            node.session.prepare(header)
            step = "erase"
            node.session.erase()
        except BmsfwError as exc:
            node.fail(step, exc)
    mark("prepared")

    # 2. the image once, to everybody
    live = [n for n in nodes if n.alive]
    sender = BroadcastSender(bus)
    bcast_started = time.monotonic()
    if live:
        for _frame in sender.send(image):
            pass
        # Barrier: the port buffers what we wrote; an addressed reply can only come
        # after every broadcast byte has crossed the (half-duplex) wire.
        time.sleep(policy.settle_s)
        for node in live:
            try:
                bus.read_input(node.session.unit, INPUT.MAP_VERSION, 1)
                break
            except BmsfwError:
                continue
    broadcast_s = time.monotonic() - bcast_started
    mark("broadcast")

    # 3.-4. per node: repair, verify, activate
    repair_frames = 0
    for node in live:
        step = "repair"
        try:
            repair_frames += _repair(node, image, policy.max_repair_rounds)
            step = "verify"
            node.session.verify()
            step = "activate"
            node.session.activate()
        except BmsfwError as exc:
            node.fail(step, exc)
    mark("verified")

    # 5. reset by policy; boots and self-tests run concurrently within a group
    live = [n for n in nodes if n.alive]
    k = len(live) if policy.activation == "all" else policy.rolling_k
    for g in range(0, len(live), max(1, k)):
        group = live[g : g + k]
        for node in group:
            try:
                node.session.reset()
            except BmsfwError as exc:
                node.fail("reset", exc)
        booted = _boot_all([n for n in group if n.alive], policy)
        for node in group:
            status = booted.get(node.session.unit)
            if status is None:
                continue
            _finish(node, status, policy)
        mark(f"group {g // max(1, k) + 1} done")

    outcomes = tuple(NodeOutcome(**n.outcome) for n in nodes)
    report = BroadcastReport(
        nodes=outcomes,
        image_size=len(image),
        broadcast_frames=sender.frames,
        broadcast_s=broadcast_s,
        broadcast_wire_s=sender.wire_time_s,
        repair_frames=repair_frames,
        total_s=time.monotonic() - started,
        rate=bus.settings.rate,
        timeline=tuple(timeline),
    )
    log.info("broadcast update: %s", report.summary())
    return report


def _finish(node: _Node, status: BootStatus, policy: BroadcastPolicy) -> None:
    node.outcome["running_version"] = status.running_version
    if status.image_state == "reverted":
        node.outcome.update(result="rolled-back", revert_reason=status.last_revert_reason)
        with contextlib.suppress(BmsfwError):
            node.outcome["self_test"] = node.session.read_self_test()
        return
    try:
        result = node.session.read_self_test()
        node.outcome["self_test"] = result
        if status.image_state != "test":
            node.outcome.update(result="failed", step="boot")
            return
        if not result.passed:
            # The device reverts by itself at its watchdog; ask now rather than wait.
            node.session.rollback()
            node.outcome.update(result="rolled-back", revert_reason="self-test failed")
            return
        if policy.confirm:
            node.session.confirm()
            node.outcome["result"] = "confirmed"
        else:
            node.outcome["result"] = "not-confirmed"
    except BmsfwError as exc:
        node.fail("confirm", exc)
