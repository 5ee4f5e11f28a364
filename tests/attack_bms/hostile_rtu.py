"""A hostile BMS on RS485: our own Modbus RTU framer on a pty, not the virtual BMS.

Frames are cut at the line's silence, CRC-checked and answered from a register
dict and an identity-object dict written from docs/modbus.md; a test puts lies in
them. ``writes`` lists every write request (function 0x06/0x10) it received.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import tty


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


class HostileRtuBms:
    """Unit ``unit`` behind a pty; ``port`` is the path the host opens."""

    def __init__(self, unit: int = 1) -> None:
        self.unit = unit
        self.input: dict[int, int] = {}
        self.holding: dict[int, int] = {}
        self.identity: dict[int, bytes] = {}
        self.writes: list[tuple[int, int]] = []  # (function, address)
        self.delay_s = 0.0  # a slow BMS: every answer this late (inside the host's time-out)
        self.answered = 0
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="hostile-rtu")

    def __enter__(self) -> HostileRtuBms:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self.master)
        os.close(self.slave)

    def _serve(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.005 if buf else 0.05)
            if ready:
                buf += os.read(self.master, 4096)
                continue
            if len(buf) >= 4 and crc16(buf[:-2]) == struct.unpack("<H", buf[-2:])[0]:
                answer = self.answer(buf[:-2])
                if answer is not None:
                    if self.delay_s and self._stop.wait(self.delay_s):
                        return
                    os.write(self.master, frame(answer))
                    self.answered += 1
            buf = b""

    def answer(self, req: bytes) -> bytes | None:
        unit, function = req[0], req[1]
        if unit != self.unit:
            return None
        head = bytes([unit, function])
        if function in (0x03, 0x04):
            address, count = struct.unpack(">HH", req[2:6])
            regs = self.input if function == 0x04 else self.holding
            values = [regs.get(address + i, 0) for i in range(count)]
            return head + bytes([2 * count]) + b"".join(struct.pack(">H", v) for v in values)
        if function == 0x10:
            address, count = struct.unpack(">HH", req[2:6])
            self.writes.append((function, address))
            for i in range(count):
                self.holding[address + i] = struct.unpack(">H", req[7 + 2 * i : 9 + 2 * i])[0]
            return head + req[2:6]
        if function == 0x06:
            self.writes.append((function, struct.unpack(">H", req[2:4])[0]))
            return req
        if function == 0x2B and req[2] == 0x0E:
            objects = b"".join(
                bytes([oid, len(value)]) + value for oid, value in sorted(self.identity.items())
            )
            return head + bytes([0x0E, req[3], 0x83, 0x00, 0x00, len(self.identity)]) + objects
        return bytes([unit, function | 0x80, 0x01])
