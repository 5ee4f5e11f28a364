"""Bus taps: record every frame a link carries, for the evidence of an update.

A tap is a listener the link calls for each frame it sends or receives, with
the direction; the recorders here keep what they hear, stamped from one
clock so the record is in wire order. They never change, delay or drop a
frame, and a recorder that fails is logged and otherwise ignored by the link.

* :class:`CanFrameRecorder` — attach to a :class:`~bmsfw.link.wirebus.WireBus`
  (``bus.add_listener(recorder)``); :meth:`~CanFrameRecorder.messages` returns
  python-can messages ready for ``can.BLFWriter``/``can.ASCWriter``.
* :class:`SerialFrameRecorder` — for byte links (RS485/Modbus, USB serial):
  the link calls it with each request frame it writes and each chunk of bytes
  it reads; :meth:`~SerialFrameRecorder.lines` is a timestamped frame log.
* :class:`MessageTap` — puts the same listener interface on a message transport
  with ``async send(data)`` / ``async receive()`` (smpclient's SMP transports over
  serial, UDP and BLE): every whole SMP message sent and received.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import can

__all__ = ["CanFrameRecorder", "MessageTap", "SerialFrame", "SerialFrameRecorder"]

log = logging.getLogger(__name__)


class _Clock:
    """Wall-clock stamps that never go backwards (one record, one order)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = 0.0

    def stamp(self) -> float:
        self._last = max(self._last, self._clock())
        return self._last


class CanFrameRecorder:
    """Keeps every CAN frame a WireBus hands to its inner bus or to its reader.

    Frames are kept as compact tuples and become python-can messages only when
    :meth:`messages` is asked for them: a ``Message`` copy per frame took twice the
    time on the sending thread and 1.5x the memory (``benchmarks/bench_evidence.py``).
    """

    def __init__(self, channel: int = 1, *, clock: Callable[[], float] = time.time) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._clock = _Clock(clock)
        self._frames: list[tuple[float, int, int, int, bytes, bool]] = []

    def __call__(self, msg: can.Message, *, received: bool) -> None:
        flags = (
            msg.is_extended_id
            | msg.is_remote_frame << 1
            | msg.is_error_frame << 2
            | msg.is_fd << 3
            | msg.bitrate_switch << 4
            | msg.error_state_indicator << 5
        )
        with self._lock:
            self._frames.append(
                (self._clock.stamp(), msg.arbitration_id, flags, msg.dlc, bytes(msg.data), received)
            )

    def messages(self) -> list[can.Message]:
        with self._lock:
            frames = list(self._frames)
        return [
            can.Message(
                timestamp=stamp,
                arbitration_id=arbitration_id,
                is_extended_id=bool(flags & 1),
                is_remote_frame=bool(flags & 2),
                is_error_frame=bool(flags & 4),
                is_fd=bool(flags & 8),
                bitrate_switch=bool(flags & 16),
                error_state_indicator=bool(flags & 32),
                channel=self.channel,
                dlc=dlc,
                data=data,
                is_rx=received,
            )
            for stamp, arbitration_id, flags, dlc, data, received in frames
        ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)


@dataclass(frozen=True)
class SerialFrame:
    timestamp: float
    sent: bool  # True: the host wrote it; False: bytes the host read
    data: bytes

    def line(self) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.timestamp))
        micros = round((self.timestamp % 1) * 1e6) % 1_000_000
        direction = "TX" if self.sent else "RX"
        return f"{stamp}.{micros:06d}Z {direction} {len(self.data):4d} {self.data.hex(' ')}"


class SerialFrameRecorder:
    """Keeps each frame written to and each chunk read from a serial link."""

    HEADER = "# bmsfw serial frame log/1: UTC time, TX (host wrote) or RX (host read), bytes, hex"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = _Clock(clock)
        self._frames: list[SerialFrame] = []

    def __call__(self, data: bytes, *, received: bool) -> None:
        if not data:
            return
        with self._lock:
            self._frames.append(SerialFrame(self._clock.stamp(), not received, bytes(data)))

    def frames(self) -> list[SerialFrame]:
        with self._lock:
            return list(self._frames)

    def lines(self) -> str:
        return "\n".join([self.HEADER, *(f.line() for f in self.frames())]) + "\n"

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)


class MessageTap:
    """Listeners on a transport of whole messages: ``listener(data, received=...)`` for
    each message the transport sends and each one it receives, as sent and as received.

    Wraps ``transport.send`` and ``transport.receive`` on that one instance (every
    other way the transport's client talks, such as ``send_and_receive``, goes through
    them); a listener that fails is logged and otherwise ignored.
    """

    def __init__(self, transport: Any) -> None:
        self._listeners: tuple[Callable[..., None], ...] = ()
        send, receive = transport.send, transport.receive

        async def tapped_send(data: bytes) -> None:
            self._tell(data, received=False)
            await send(data)

        async def tapped_receive() -> bytes:
            data: bytes = await receive()
            self._tell(data, received=True)
            return data

        transport.send = tapped_send
        transport.receive = tapped_receive

    def add_listener(self, listener: Callable[..., None]) -> None:
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[..., None]) -> None:
        self._listeners = tuple(x for x in self._listeners if x is not listener)

    def _tell(self, data: bytes, *, received: bool) -> None:
        for listener in self._listeners:
            try:
                listener(bytes(data), received=received)
            except Exception:  # a broken recorder must not break the link
                log.exception("message listener failed")
