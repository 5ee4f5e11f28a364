"""UART character framing: serial line parameters and what a receiver decodes.

Pure code. :func:`uart_transcode` answers "the sender transmits these bytes
with its settings; what does a receiver with other settings read?" by laying
the characters out as bit levels in time (idle high, start bit low, data LSB
first, parity, stop bits) and sampling them the way a UART does: wait for a
falling edge, then sample each bit in its middle at the receiver's own baud
rate. Like Linux with ``INPCK`` off (pyserial's default), a character with a
parity or framing error is still delivered. A wrong baud rate thus gives
garbage, exactly as on a real line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bmsfw.link.errors import SerialConfigError
from bmsfw.link.wire import FRAME_GAPS, modbus_silence_s, serial_char_bits

__all__ = ["SerialParams", "uart_transcode"]


@dataclass(frozen=True)
class SerialParams:
    """Serial line settings. Modbus RTU's default is 8E1 (Modbus over serial line V1.02)."""

    baud_bps: int = 19_200
    parity: str = "E"
    stop_bits: int = 1
    data_bits: int = 8
    frame_gap: str = "spec"  # Modbus t3.5: see bmsfw.link.wire.FRAME_GAPS

    def __post_init__(self) -> None:
        if self.baud_bps <= 0:
            raise SerialConfigError(f"baud rate must be positive, got {self.baud_bps}")
        if self.parity not in ("N", "E", "O"):
            raise SerialConfigError(f"parity must be N, E or O, got {self.parity!r}")
        if self.stop_bits not in (1, 2):
            raise SerialConfigError(f"stop bits must be 1 or 2, got {self.stop_bits}")
        if self.data_bits not in (7, 8):
            raise SerialConfigError(f"data bits must be 7 or 8, got {self.data_bits}")
        if self.frame_gap not in FRAME_GAPS:
            raise SerialConfigError(
                f"frame gap must be one of {FRAME_GAPS}, got {self.frame_gap!r}"
            )

    @property
    def char_bits(self) -> int:
        """Bits per character: start + data + parity + stop."""
        return int(serial_char_bits(self.data_bits, self.parity, self.stop_bits))

    @property
    def char_time_s(self) -> float:
        return self.char_bits / self.baud_bps

    @property
    def silence_s(self) -> float:
        """Modbus RTU t3.5 inter-frame silence at this baud rate and frame gap."""
        return modbus_silence_s(self.baud_bps, self.char_bits, self.frame_gap)

    @property
    def raw_char_rate_per_s(self) -> float:
        """Characters (payload bytes) per second with no gaps at all."""
        return self.baud_bps / self.char_bits

    def __str__(self) -> str:
        return f"{self.baud_bps} {self.data_bits}{self.parity}{self.stop_bits}"


def _parity_bit(byte: int, data_bits: int, parity: str) -> list[int]:
    if parity == "N":
        return []
    ones = bin(byte & ((1 << data_bits) - 1)).count("1")
    even_bit = ones & 1
    return [even_bit if parity == "E" else even_bit ^ 1]


def _levels(data: bytes, params: SerialParams) -> list[int]:
    levels: list[int] = []
    for byte in data:
        levels.append(0)
        levels.extend((byte >> i) & 1 for i in range(params.data_bits))
        levels.extend(_parity_bit(byte, params.data_bits, params.parity))
        levels.extend([1] * params.stop_bits)
    return levels


def uart_transcode(data: bytes, sender: SerialParams, receiver: SerialParams) -> bytes:
    """What a UART set to ``receiver`` reads when ``sender`` sends ``data`` back to back."""
    if (sender.baud_bps, sender.data_bits, sender.parity, sender.stop_bits) == (
        receiver.baud_bps,
        receiver.data_bits,
        receiver.parity,
        receiver.stop_bits,
    ):
        return bytes(data)
    levels = _levels(data, sender)
    n_bits = len(levels)
    tx_bit_s = 1.0 / sender.baud_bps
    rx_bit_s = 1.0 / receiver.baud_bps
    frame_bits = 1 + receiver.data_bits + (0 if receiver.parity == "N" else 1) + 1

    def level_at(t: float) -> int:
        index = math.floor(t / tx_bit_s + 1e-9)
        return levels[index] if 0 <= index < n_bits else 1

    out = bytearray()
    hunt_from = 0.0
    while True:
        # Find the first 1 -> 0 transition at or after hunt_from (edges sit on sender bit edges).
        if hunt_from <= 0.0:
            first, previous = 0, 1  # the line idles high before the first character
        else:
            first = math.floor(hunt_from / tx_bit_s + 1e-9) + 1
            previous = level_at(hunt_from)
        edge = None
        for k in range(first, n_bits):
            if previous == 1 and levels[k] == 0:
                edge = k * tx_bit_s
                break
            previous = levels[k]
        if edge is None:
            return bytes(out)
        byte = 0
        for bit in range(receiver.data_bits):
            byte |= level_at(edge + (1 + bit + 0.5) * rx_bit_s) << bit
        out.append(byte)
        # Resume hunting after the middle of the (first) stop bit, as a UART does.
        hunt_from = edge + (frame_bits - 0.5) * rx_bit_s
        if hunt_from >= n_bits * tx_bit_s:
            return bytes(out)
