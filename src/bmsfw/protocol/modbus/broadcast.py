"""Broadcast frames of an RS485 string update: the image once to unit 0, paced at line rate.

The string update itself (every node's whole procedure, the shared transfer,
per-node repair of lost blocks, the activation policy) is
:func:`bmsfw.update.string.run_string_update`, which ``bmsfw update --broadcast``
runs; this module only puts the broadcast frames on the wire.

A broadcast carries the *decoded* image only (raw window writes): per-node
repair rewrites lost blocks out of order, which a stream decoder cannot take.
So a compressed release is broadcast as the image the updater decoded; a delta
or encrypted release, which only each BMS can decode, is refused by the update
procedure before any node is written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from bmsfw.link.wire import modbus_silence_s
from bmsfw.protocol.modbus import codec
from bmsfw.protocol.modbus.client import ModbusBus

__all__ = ["BroadcastSender", "serial_wire_time_s"]


def serial_wire_time_s(
    frames: int, nbytes: int, baud_bps: int, char_bits: float = 11, frame_gap: str = "spec"
) -> float:
    """Characters plus one t3.5 silence per frame (:func:`~bmsfw.link.wire.modbus_silence_s`)."""
    return nbytes * char_bits / baud_bps + frames * modbus_silence_s(baud_bps, char_bits, frame_gap)


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
