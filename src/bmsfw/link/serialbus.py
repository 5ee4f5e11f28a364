"""A simulated RS485 bus on pseudo-terminals: one host port, N device attachments.

What it models, and why:

* **One host side pty** (:attr:`RS485Bus.host_path`): what a USB-RS485 adapter
  is to a laptop. pymodbus/pyserial open it like ``/dev/ttyUSB0``.
* **Device attachments**: :meth:`RS485Bus.attach_pty` gives each node its own pty
  path (a pymodbus serial server per node opens it, so several nodes with their
  own unit ids share the bus exactly as on a real string), and
  :meth:`RS485Bus.attach_endpoint` gives an in-process byte endpoint for code
  that does not want a serial port.
* **Half duplex broadcast**: everything one talker sends reaches every other
  attachment (not itself: adapters disable their receiver while driving the
  line). When two talkers overlap in time, the overlapping characters are
  garbled (bitwise AND of both, as a receiver sees two drivers fight) for every
  listener. Throttled, overlap follows the wire timeline; unthrottled, only data
  that arrives in the same instant collides (without pacing there is no honest
  notion of "still on the wire").
* **Serial settings per attachment**: the baud rate and stop bits of a pty
  attachment are read live from the pty with ``termios`` (on Linux master and
  slave share termios, so whatever pyserial set on the slave is visible on the
  master). The Linux pty driver forces CS8 and clears PARENB, so parity cannot
  be seen that way: it comes from the attachment's configured :class:`SerialParams`.
  A receiver whose settings differ from the sender's decodes the bit stream at
  its own rate (:func:`~bmsfw.link.uart.uart_transcode`): garbage, as on a real line.
* **Wire time**: per character (start + data + parity + stop bits), plus the
  Modbus t3.5 silence before each frame and the device's turnaround before it
  answers. Throttled, the bridge delivers bytes no earlier than the line could
  carry them; unthrottled, immediately. Counted either way.
* **Faults**: drop or corrupt a fraction of bytes (seeded), silence the whole
  line, pull one attachment's cable (its bytes vanish both ways).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import itertools
import logging
import os
import random
import selectors
import struct
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from bmsfw.link.errors import LinkClosedError, SerialConfigError, SerialLinkError
from bmsfw.link.uart import SerialParams, uart_transcode
from bmsfw.link.wire import WireCounter, WireStats

__all__ = ["RS485Bus", "SerialAttachment", "SerialFaults", "SerialParams", "open_serial_port"]

logger = logging.getLogger(__name__)

_TCGETS2 = 0x802C542A  # Linux: struct termios2 with c_ispeed/c_ospeed (custom baud rates)
_BOTHER = 0o010000
_READ_CHUNK = 4096
# Stop reading a talker while this much of its data waits for wire time (back-pressure
# into the pty, so a writer blocks like on a real UART instead of buffering forever).
_MAX_BACKLOG = 1024
# Throttled deliveries are cut into pieces so listeners see bytes arrive progressively:
# at least 32 characters, and at least this much wire time per piece. Every piece is one
# write into every listener's pty (tens of microseconds of kernel time each), so at
# 921,600 baud 32-character pieces cost the bus more CPU than the line has time.
_DELIVERY_PIECE = 32
_DELIVERY_PIECE_S = 0.002

_BAUD_BY_CONSTANT: dict[int, int] = {
    getattr(termios, name): int(name[1:])
    for name in dir(termios)
    if name.startswith("B") and name[1:].isdigit()
}


@dataclass(frozen=True)
class SerialFaults:
    """Line faults. Fractions are per byte, 0.0..1.0; the RNG is seeded."""

    drop_fraction: float = 0.0
    corrupt_fraction: float = 0.0
    silent: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop_fraction", "corrupt_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SerialConfigError(f"{name} must be within 0.0..1.0, got {value}")


class SerialAttachment:
    """One place on the bus: the host port, a device pty, or an in-process endpoint."""

    def __init__(
        self,
        bus: RS485Bus,
        name: str,
        params: SerialParams,
        *,
        pty: bool,
        turnaround_s: float = 0.0,
        follow_termios: bool = True,
    ) -> None:
        self.bus = bus
        self.name = name
        self.configured = params
        self.turnaround_s = turnaround_s
        self.follow_termios = follow_termios and pty
        self.cable_pulled = False
        self.counter = WireCounter()
        self.master_fd = -1
        self.slave_fd = -1
        self.path = ""
        self._inbox: deque[bytes] = deque()
        self._inbox_cond = threading.Condition()
        self.backlog = 0
        if pty:
            try:
                self.master_fd, self.slave_fd = os.openpty()
                # Raw from the start: a cooked pty would echo the bridge's writes back.
                tty.setraw(self.slave_fd)
                self.path = os.ttyname(self.slave_fd)
            except OSError as exc:
                raise SerialLinkError(f"cannot create a pty for {name}: {exc}") from exc
            os.set_blocking(self.master_fd, False)
            self._apply_configured_termios()

    def _apply_configured_termios(self) -> None:
        # Start the slave at the configured baud so a port opened without settings matches.
        attrs = termios.tcgetattr(self.slave_fd)
        constant = next(
            (c for c, b in _BAUD_BY_CONSTANT.items() if b == self.configured.baud_bps), None
        )
        if constant is not None:
            attrs[4] = attrs[5] = constant
        if self.configured.stop_bits == 2:
            attrs[2] |= termios.CSTOPB
        else:
            attrs[2] &= ~termios.CSTOPB
        termios.tcsetattr(self.slave_fd, termios.TCSANOW, attrs)

    @property
    def params(self) -> SerialParams:
        """The settings this attachment uses right now (live from termios for a pty)."""
        if not self.follow_termios or self.master_fd < 0:
            return self.configured
        try:
            attrs = termios.tcgetattr(self.master_fd)
            baud = _BAUD_BY_CONSTANT.get(attrs[5], 0)
            if attrs[5] == _BOTHER or not baud:
                buf = bytearray(44)
                fcntl.ioctl(self.master_fd, _TCGETS2, buf)
                baud = struct.unpack_from("I", buf, 40)[0]
            stop_bits = 2 if attrs[2] & termios.CSTOPB else 1
        except OSError:
            return self.configured
        if baud <= 0:
            return self.configured
        return replace(self.configured, baud_bps=baud, stop_bits=stop_bits)

    # -- in-process endpoint API ----------------------------------------------------

    def write(self, data: bytes) -> None:
        """Transmit ``data`` onto the bus from this attachment (in-process endpoints)."""
        self.bus._talk(self, bytes(data), time.monotonic())

    def read(self, timeout_s: float = 1.0) -> bytes:
        """Everything received so far, waiting up to ``timeout_s`` for the first byte."""
        deadline = time.monotonic() + timeout_s
        with self._inbox_cond:
            while not self._inbox:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                self._inbox_cond.wait(remaining)
            data = b"".join(self._inbox)
            self._inbox.clear()
            return data

    def _deliver(self, data: bytes) -> None:
        self.counter.add(bytes_rx=len(data), bits_rx=len(data) * self.configured.char_bits)
        if self.master_fd >= 0:
            try:
                os.write(self.master_fd, data)
            except BlockingIOError:
                # Nobody reads this port: its input buffer is full, the bytes are lost
                # like a UART overrun.
                logger.debug("%s: input overrun, %d bytes lost", self.name, len(data))
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EAGAIN):
                    raise
            return
        with self._inbox_cond:
            self._inbox.append(data)
            self._inbox_cond.notify_all()

    def stats(self) -> WireStats:
        return self.counter.snapshot()

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master_fd = self.slave_fd = -1


@dataclass
class _Transmission:
    talker: SerialAttachment
    params: SerialParams
    data: bytearray
    start_s: float
    end_s: float
    collided: bool = False


class RS485Bus:
    """The simulated bus. Use as a context manager, or call :meth:`start` / :meth:`close`."""

    def __init__(
        self,
        params: SerialParams | None = None,
        *,
        throttle: bool = False,
        faults: SerialFaults | None = None,
        name: str = "rs485",
    ) -> None:
        self.params = params or SerialParams()
        self.throttle = throttle
        self.name = name
        self.counter = WireCounter()
        self._faults = faults or SerialFaults()
        self._rng = random.Random(self._faults.seed)
        self._lock = threading.RLock()
        self._attachments: list[SerialAttachment] = []
        self._heap: list[tuple[float, int, SerialAttachment, bytes, _Transmission]] = []
        self._seq = itertools.count()
        self._line_free_s = 0.0
        self._last_talker: SerialAttachment | None = None
        self._current: _Transmission | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._thread: threading.Thread | None = None
        self.host = SerialAttachment(self, "host", self.params, pty=True)
        self._attachments.append(self.host)

    # -- set-up ---------------------------------------------------------------------

    @property
    def host_path(self) -> str:
        """The pty path the host (pymodbus client, pyserial) opens."""
        return self.host.path

    def attach_pty(
        self,
        name: str,
        *,
        params: SerialParams | None = None,
        turnaround_s: float = 0.0,
        follow_termios: bool = True,
    ) -> SerialAttachment:
        """A device attachment with its own pty; open ``attachment.path`` on the device side."""
        return self._attach(
            SerialAttachment(
                self,
                name,
                params or self.params,
                pty=True,
                turnaround_s=turnaround_s,
                follow_termios=follow_termios,
            )
        )

    def attach_endpoint(
        self, name: str, *, params: SerialParams | None = None, turnaround_s: float = 0.0
    ) -> SerialAttachment:
        """An in-process attachment: ``write(bytes)`` and ``read(timeout_s)``."""
        return self._attach(
            SerialAttachment(
                self, name, params or self.params, pty=False, turnaround_s=turnaround_s
            )
        )

    def _attach(self, attachment: SerialAttachment) -> SerialAttachment:
        with self._lock:
            if self._closed:
                raise LinkClosedError(f"bus {self.name} is closed")
            if any(a.name == attachment.name for a in self._attachments):
                attachment.close()
                raise SerialConfigError(
                    f"bus {self.name} already has an attachment {attachment.name!r}"
                )
            self._attachments.append(attachment)
        self._wake()
        return attachment

    @property
    def attachments(self) -> tuple[SerialAttachment, ...]:
        with self._lock:
            return tuple(self._attachments)

    @property
    def faults(self) -> SerialFaults:
        return self._faults

    @faults.setter
    def faults(self, faults: SerialFaults) -> None:
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)

    def pull_cable(self, name: str, pulled: bool = True) -> None:
        """Disconnect (or reconnect) one attachment: its bytes vanish both ways."""
        for attachment in self.attachments:
            if attachment.name == name:
                attachment.cable_pulled = pulled
                return
        raise SerialConfigError(f"bus {self.name} has no attachment {name!r}")

    def stats(self) -> WireStats:
        """Line totals: every frame and character any talker put on the bus."""
        return self.counter.snapshot()

    def start(self) -> RS485Bus:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"rs485-{self.name}", daemon=True
                )
                self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        for attachment in self.attachments:
            attachment.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def __enter__(self) -> RS485Bus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the line ---------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _apply_faults(self, data: bytes) -> bytes:
        faults = self._faults
        if not (faults.drop_fraction or faults.corrupt_fraction):
            return data
        out = bytearray()
        dropped = corrupted = 0
        for byte in data:
            if faults.drop_fraction and self._rng.random() < faults.drop_fraction:
                dropped += 1
                continue
            flip = 0
            if faults.corrupt_fraction and self._rng.random() < faults.corrupt_fraction:
                flip = 1 << self._rng.randrange(8)
                corrupted += 1
            out.append(byte ^ flip)
        self.counter.add(dropped=dropped, corrupted=corrupted)
        return bytes(out)

    def _talk(self, talker: SerialAttachment, data: bytes, now: float) -> None:
        """``talker`` drives ``data`` onto the line, arriving from its port at ``now``."""
        with self._lock:
            if self._closed:
                raise LinkClosedError(f"bus {self.name} is closed")
            if talker.cable_pulled or self._faults.silent:
                talker.counter.add(suppressed=len(data))
                self.counter.add(suppressed=len(data))
                return
            params = talker.params
            char_s = params.char_time_s
            current = self._current
            # Throttled, a transmission lasts its wire time; unthrottled it is
            # instantaneous, so only data read in the same instant overlaps.
            overlapping = (
                current is not None
                and current.talker is not talker
                and (now < current.end_s if self.throttle else now <= current.end_s)
            )
            continuing = (
                not overlapping
                and self._last_talker is talker
                and now <= self._line_free_s + params.silence_s
            )
            wire_s = len(data) * char_s
            if overlapping:
                assert current is not None
                start = now
            elif continuing:
                start = max(now, self._line_free_s) if self.throttle else now
            else:
                gap = params.silence_s
                if self._last_talker is not None and self._last_talker is not talker:
                    gap = max(gap, talker.turnaround_s)
                start = max(now, self._line_free_s + gap) if self.throttle else now
                talker.counter.add(frames_tx=1, wire_time_tx_s=gap)
                self.counter.add(frames_tx=1, wire_time_tx_s=gap)
            data = self._apply_faults(data)
            bits = len(data) * params.char_bits
            talker.counter.add(bytes_tx=len(data), bits_tx=bits, wire_time_tx_s=wire_s)
            self.counter.add(bytes_tx=len(data), bits_tx=bits, wire_time_tx_s=wire_s)
            if overlapping:
                assert current is not None
                self._collide(
                    current=current,
                    talker=talker,
                    data=data,
                    params=params,
                    start=start,
                    wire_s=wire_s,
                )
                return
            end = start + wire_s if self.throttle else start
            if continuing and current is not None and current.talker is talker:
                current.data.extend(data)
                current.end_s = max(current.end_s, end)
                transmission = current
            else:
                transmission = _Transmission(talker, params, bytearray(data), start, end)
                self._current = transmission
            self._line_free_s = max(self._line_free_s, end)
            self._last_talker = talker
            self._schedule(transmission, data, start, char_s)

    def _schedule(self, tx: _Transmission, data: bytes, start: float, char_s: float) -> None:
        if not self.throttle:
            self._deliver_now(tx, data)
            return
        size = max(_DELIVERY_PIECE, int(_DELIVERY_PIECE_S / char_s))
        for offset in range(0, len(data), size):
            piece = data[offset : offset + size]
            at = start + (offset + len(piece)) * char_s
            heapq.heappush(self._heap, (at, next(self._seq), tx.talker, piece, tx))
            tx.talker.backlog += len(piece)
        self._wake()

    def _collide(
        self,
        *,
        current: _Transmission,
        talker: SerialAttachment,
        data: bytes,
        params: SerialParams,
        start: float,
        wire_s: float,
    ) -> None:
        """Two talkers at once: garble what overlaps on the wire."""
        self.counter.add(collisions=1)
        current.talker.counter.add(collisions=1)
        talker.counter.add(collisions=1)
        logger.debug("%s: collision between %s and %s", self.name, current.talker.name, talker.name)
        current.collided = True
        other = bytearray(data)
        if self.throttle:
            # Pieces of the current transmission not yet delivered carry the AND of
            # both drivers, character by character.
            mixed_heap = []
            for at, seq, owner, piece, tx in sorted(self._heap):
                carried = piece
                if tx is current and other:
                    n = min(len(piece), len(other))
                    garbled = bytes(x & y for x, y in zip(piece[:n], other[:n], strict=True))
                    carried = garbled + piece[n:]
                    del other[:n]
                mixed_heap.append((at, seq, owner, carried, tx))
            heapq.heapify(mixed_heap)
            self._heap = mixed_heap
        else:
            # Unthrottled, the first talker's bytes are already delivered; the
            # newcomer's are garbled against them.
            ref = bytes(current.data) or b"\x00"
            other = bytearray(b & ref[i % len(ref)] for i, b in enumerate(other))
        if other:
            tx = _Transmission(talker, params, other, start, start + wire_s, True)
            self._schedule(tx, bytes(other), max(start, self._line_free_s), params.char_time_s)
        self._line_free_s = max(self._line_free_s, start + wire_s)

    def _deliver_now(self, tx: _Transmission, data: bytes) -> None:
        for attachment in self._attachments:
            if attachment is tx.talker or attachment.cable_pulled:
                continue
            attachment._deliver(uart_transcode(data, tx.params, attachment.params))

    def _run(self) -> None:
        # select(2), not epoll: epoll_wait's time-out is whole milliseconds, so every
        # delivery due in less than 1 ms would come up to 1 ms late (a 921,600-baud
        # 8-character reply takes 0.1 ms). select takes microseconds; the bus has
        # a few dozen descriptors at most.
        selector = selectors.SelectSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        registered: dict[int, SerialAttachment] = {}
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    now = time.monotonic()
                    while self._heap and self._heap[0][0] <= now:
                        _, _, talker, piece, tx = heapq.heappop(self._heap)
                        talker.backlog -= len(piece)
                        self._deliver_now(tx, piece)
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - now)
                    wanted = {
                        a.master_fd: a
                        for a in self._attachments
                        if a.master_fd >= 0 and a.backlog < _MAX_BACKLOG
                    }
                for fd in list(registered):
                    if fd not in wanted:
                        selector.unregister(fd)
                        del registered[fd]
                for fd, attachment in wanted.items():
                    if fd not in registered:
                        selector.register(fd, selectors.EVENT_READ, attachment)
                        registered[fd] = attachment
                events = selector.select(timeout)
                now = time.monotonic()
                for key, _ in events:
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        continue
                    attachment = key.data
                    try:
                        data = os.read(attachment.master_fd, _READ_CHUNK)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        # EIO: no process holds the slave open right now; not an error.
                        if exc.errno != errno.EIO:
                            logger.warning("%s: read from %s: %s", self.name, attachment.name, exc)
                        continue
                    if data:
                        try:
                            self._talk(attachment, data, now)
                        except LinkClosedError:
                            return
        finally:
            selector.close()


def open_serial_port(path: str, params: SerialParams, *, timeout_s: float = 1.0) -> Any:
    """Open ``path`` with pyserial at ``params``; errors become :class:`SerialLinkError`."""
    import serial

    try:
        return serial.Serial(
            path,
            baudrate=params.baud_bps,
            bytesize=params.data_bits,
            parity=params.parity,
            stopbits=params.stop_bits,
            timeout=timeout_s,
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise SerialLinkError(f"cannot open serial port {path} at {params}: {exc}") from exc
