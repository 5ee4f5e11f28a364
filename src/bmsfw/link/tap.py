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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import can

__all__ = ["CanFrameRecorder", "SerialFrame", "SerialFrameRecorder"]


class _Clock:
    """Wall-clock stamps that never go backwards (one record, one order)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = 0.0

    def stamp(self) -> float:
        self._last = max(self._last, self._clock())
        return self._last


class CanFrameRecorder:
    """Keeps every CAN frame a WireBus hands to its inner bus or to its reader."""

    def __init__(self, channel: int = 1, *, clock: Callable[[], float] = time.time) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._clock = _Clock(clock)
        self._messages: list[can.Message] = []

    def __call__(self, msg: can.Message, *, received: bool) -> None:
        with self._lock:
            copy = can.Message(
                timestamp=self._clock.stamp(),
                arbitration_id=msg.arbitration_id,
                is_extended_id=msg.is_extended_id,
                is_remote_frame=msg.is_remote_frame,
                is_error_frame=msg.is_error_frame,
                channel=self.channel,
                dlc=msg.dlc,
                data=bytes(msg.data),
                is_fd=msg.is_fd,
                is_rx=received,
                bitrate_switch=msg.bitrate_switch,
                error_state_indicator=msg.error_state_indicator,
            )
            self._messages.append(copy)

    def messages(self) -> list[can.Message]:
        with self._lock:
            return list(self._messages)

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)


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
