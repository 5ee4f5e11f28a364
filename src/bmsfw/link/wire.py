"""The wire-time model (docs/links.md): bits on the wire, counters, pacing.

Pure formulas first (no I/O, pinned by table tests), then the two stateful pieces
every link shares: :class:`WireCounter` (thread-safe counters, snapshot as the
frozen :class:`WireStats`) and :class:`WireClock` (occupancy of one physical bus,
used to pace senders to the physical rate when a link is throttled).

CAN, nominal bits without stuffing (ISO 11898-1:2015 field by field):

* classic, 11-bit id: SOF 1 + id 11 + RTR 1 + IDE 1 + r0 1 + DLC 4 + data 8·n
  + CRC 15 + CRC delimiter 1 + ACK 1 + ACK delimiter 1 + EOF 7 + IFS 3
  = **47 + 8·n** (111 at n = 8).
* classic, 29-bit id: adds SRR 1 + extended id 18 + r1 1 = **67 + 8·n**.
* CAN FD, 11-bit id: arbitration phase at the nominal bitrate: SOF 1 + id 11 +
  RRS 1 + IDE 1 + FDF 1 + res 1 + BRS 1 = 17 bits; the tail ACK 1 + ACK
  delimiter 1 + EOF 7 + IFS 3 = 12 bits, also nominal: **29 nominal bits**.
  Data phase (after the BRS sample point) at the data bitrate: ESI 1 + DLC 4 +
  data 8·n + stuff count 4 + CRC (17 if n <= 16, else 21) + CRC delimiter 1 =
  **8·n + 27** (n <= 16) or **8·n + 31** (n > 16). n is the padded FD length
  (0..8, 12, 16, 20, 24, 32, 48, 64).
* CAN FD, 29-bit id: the arbitration phase grows by SRR 1 + extended id 18 =
  **48 nominal bits**; the data phase is unchanged.
* CAN FD without bit-rate switch: all bits at the nominal bitrate.

So a 64-byte FD frame at 500 kbit/s / 2 Mbit/s takes 29 × 2 µs + 543 × 0.5 µs
= 329.5 µs, and a classic 8-byte frame at 500 kbit/s takes 111 × 2 µs = 222 µs.

Serial (UART): 1 start + data bits + parity (0/1) + stop bits per character;
Modbus RTU frames are separated by 3.5 character times of silence, fixed at
1.75 ms above 19,200 baud (Modbus over serial line V1.02, 2.5.1.1).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = [
    "CAN_FD_LENGTHS",
    "FRAME_GAPS",
    "CanWireModel",
    "WireClock",
    "WireCounter",
    "WireStats",
    "can_fd_padded_length",
    "can_frame_bits",
    "modbus_silence_s",
    "serial_char_bits",
]

#: The payload lengths a CAN FD frame can carry (DLC 0..15).
CAN_FD_LENGTHS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


def can_fd_padded_length(length: int) -> int:
    """The FD payload length a frame of ``length`` bytes is padded to on the wire."""
    for size in CAN_FD_LENGTHS:
        if length <= size:
            return size
    raise ValueError(f"a CAN FD frame carries at most 64 bytes, got {length}")


def can_frame_bits(
    length: int,
    *,
    extended_id: bool = False,
    fd: bool = False,
    bitrate_switch: bool = True,
    remote: bool = False,
) -> tuple[int, int]:
    """Nominal bits of one CAN frame: ``(bits at the nominal rate, bits at the data rate)``.

    No bit stuffing (the worst case adds up to ~20 %; we model the nominal frame so
    efficiency numbers are against the physical limit). Interframe space included.
    For a classic frame, and for FD without bit-rate switch, the second element is 0.
    """
    if length < 0:
        raise ValueError(f"frame length must be >= 0, got {length}")
    if not fd:
        if length > 8:
            raise ValueError(f"a classic CAN frame carries at most 8 bytes, got {length}")
        data_bits = 0 if remote else 8 * length
        return (67 if extended_id else 47) + data_bits, 0
    padded = can_fd_padded_length(length)
    nominal = 48 if extended_id else 29
    data_phase = 8 * padded + (27 if padded <= 16 else 31)
    if not bitrate_switch:
        return nominal + data_phase, 0
    return nominal, data_phase


@dataclass(frozen=True)
class CanWireModel:
    """Bit timing of one CAN bus: converts frames into wire time."""

    bitrate_bps: int = 500_000
    data_bitrate_bps: int = 2_000_000

    def __post_init__(self) -> None:
        if self.bitrate_bps <= 0 or self.data_bitrate_bps <= 0:
            raise ValueError(
                f"bitrates must be positive, got {self.bitrate_bps}/{self.data_bitrate_bps}"
            )

    def frame_time_s(
        self,
        length: int,
        *,
        extended_id: bool = False,
        fd: bool = False,
        bitrate_switch: bool = True,
        remote: bool = False,
    ) -> float:
        """Seconds one frame occupies the bus (interframe space included)."""
        nominal, data = can_frame_bits(
            length, extended_id=extended_id, fd=fd, bitrate_switch=bitrate_switch, remote=remote
        )
        return nominal / self.bitrate_bps + data / self.data_bitrate_bps

    def raw_payload_rate_bytes_per_s(self, *, fd: bool = False, extended_id: bool = False) -> float:
        """Payload bytes per second with back-to-back full frames (8 or 64 bytes)."""
        length = 64 if fd else 8
        return length / self.frame_time_s(length, extended_id=extended_id, fd=fd)


def serial_char_bits(data_bits: int = 8, parity: str = "E", stop_bits: float = 1) -> float:
    """Bits per UART character: 1 start + data + parity (0 or 1) + stop bits."""
    return 1 + data_bits + (0 if parity.upper() == "N" else 1) + stop_bits


# How long the line stays silent between two Modbus RTU frames (t3.5):
# "spec": what the Modbus serial-line specification (V1.02, 2.5.1.1) recommends:
#   3.5 character times up to 19,200 baud, a fixed 1.75 ms above (so that a slow
#   CPU need not time out per character); at 921,600 baud that is 147 characters.
# "chars": 3.5 character times at every baud rate, for devices that detect the end
#   of a frame in hardware (a UART receiver time-out / idle-line interrupt counts
#   bit times). Both ends of a line must use the same setting, like the baud rate.
FRAME_GAPS = ("spec", "chars")


def modbus_silence_s(baud_bps: int, char_bits: float = 11, frame_gap: str = "spec") -> float:
    """The Modbus RTU inter-frame silence t3.5 for ``frame_gap`` (see :data:`FRAME_GAPS`)."""
    if frame_gap not in FRAME_GAPS:
        raise ValueError(f"frame gap must be one of {FRAME_GAPS}, got {frame_gap!r}")
    if baud_bps > 19_200 and frame_gap == "spec":
        return 0.00175
    return 3.5 * char_bits / baud_bps


@dataclass(frozen=True)
class WireStats:
    """A snapshot of one link's counters. ``*_tx`` is what this end sent."""

    frames_tx: int = 0
    frames_rx: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0
    bits_tx: float = 0
    bits_rx: float = 0
    wire_time_tx_s: float = 0.0
    wire_time_rx_s: float = 0.0
    dropped: int = 0
    corrupted: int = 0
    delayed: int = 0
    suppressed: int = 0  # swallowed by silence, bus-off or a pulled cable
    collisions: int = 0

    @property
    def wire_time_s(self) -> float:
        """Wire time of everything this end sent and received."""
        return self.wire_time_tx_s + self.wire_time_rx_s


_COUNTER_FIELDS = (
    "frames_tx",
    "frames_rx",
    "bytes_tx",
    "bytes_rx",
    "bits_tx",
    "bits_rx",
    "wire_time_tx_s",
    "wire_time_rx_s",
    "dropped",
    "corrupted",
    "delayed",
    "suppressed",
    "collisions",
)


class WireCounter:
    """Thread-safe mutable counters behind :class:`WireStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(_COUNTER_FIELDS, 0)

    def add(self, **increments: float) -> None:
        with self._lock:
            for name, value in increments.items():
                self._values[name] += value

    def snapshot(self) -> WireStats:
        with self._lock:
            values = dict(self._values)
        return WireStats(
            frames_tx=int(values["frames_tx"]),
            frames_rx=int(values["frames_rx"]),
            bytes_tx=int(values["bytes_tx"]),
            bytes_rx=int(values["bytes_rx"]),
            bits_tx=values["bits_tx"],
            bits_rx=values["bits_rx"],
            wire_time_tx_s=values["wire_time_tx_s"],
            wire_time_rx_s=values["wire_time_rx_s"],
            dropped=int(values["dropped"]),
            corrupted=int(values["corrupted"]),
            delayed=int(values["delayed"]),
            suppressed=int(values["suppressed"]),
            collisions=int(values["collisions"]),
        )

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(_COUNTER_FIELDS, 0)


class WireClock:
    """Occupancy of one physical bus: when it is free again (monotonic seconds).

    ``reserve`` books the next slot: a frame starts no earlier than it was handed
    over and no earlier than the previous frame ended, and ends ``duration_s``
    later. Senders deliver a frame at its booked end time, so sleep overshoot
    never accumulates (the schedule, not the wake-up time, sets the next start).
    One clock is shared by every throttled bus object on the same channel in one
    process; across processes each process paces only its own frames.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free_at = 0.0

    def reserve(self, duration_s: float, *, not_before: float | None = None) -> float:
        """Book ``duration_s`` of bus time; return the monotonic time the frame ends."""
        now = time.monotonic() if not_before is None else not_before
        with self._lock:
            start = max(now, self._free_at)
            self._free_at = start + duration_s
            return self._free_at

    @property
    def free_at(self) -> float:
        with self._lock:
            return self._free_at
