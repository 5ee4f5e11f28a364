"""A hostile BMS on RS485: our own Modbus RTU framer on a pty, not the virtual BMS.

Frames are cut at the line's silence, CRC-checked and answered from a register
dict and an identity-object dict written from docs/modbus.md; a test puts lies in
them. ``writes`` lists every write request (function 0x06/0x10) it received.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import struct
import threading
import tty
from dataclasses import dataclass
from typing import Self


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

    def __enter__(self) -> Self:
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
                    late = self.delay_s + self._serve_delay()
                    if late and self._stop.wait(late):
                        return
                    os.write(self.master, frame(answer))
                    self.answered += 1
            buf = b""

    def _serve_delay(self) -> float:
        """How much later than ``delay_s`` the answer just made goes out."""
        return 0.0

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


# --------------------------------------------------------------------------- a whole BMS
# Addresses from docs/modbus.md ("Register map (version 1)"), written out here so the
# fake shares no code with the host it attacks.
COMMAND_REGISTER, UPLOAD, UPLOAD_END, WINDOW = 0x1000, 0x2000, 0x7000, 0x7FFF
DOC_SELECT, DOC_LENGTH, DOC_DATA = 0x0F00, 0x2000, 0x2002
PREPARE, ERASE, VERIFY, ACTIVATE, RESET, CONFIRM, ROLLBACK = 1, 2, 3, 4, 5, 6, 7
AUTH_CHALLENGE, AUTH_PROVE, WRITE_CONFIG, ABORT = 8, 9, 10, 11
IMAGE_STATES = {"none": 0, "confirmed": 1, "test": 2, "reverted": 3}


def to_registers(text: str | bytes, count: int) -> list[int]:
    raw = (text.encode() if isinstance(text, str) else text)[: 2 * count].ljust(2 * count, b"\0")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]


def canonical(obj: object) -> bytes:
    """The configuration document's canonical JSON (docs/uds.md, DID 0x0150)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def u32(value: int) -> list[int]:
    return [value >> 16 & 0xFFFF, value & 0xFFFF]


@dataclass
class RtuBehaviour:
    """What the hostile BMS on RS485 says. Defaults: an honest BMS-16S that updates."""

    vendor: str = "ACME"
    model: str = "BMS-16S"
    hw_revision: str = "C"
    serial: str | bytes = "RS-0001"
    serial_later: str = ""  # identity drift: answered from the second identify on
    bootloader_version: str = "2.1.0"
    version: str = "1.0.0+0"
    counter: int = 1
    image_digest: bytes = hashlib.sha256(b"old image").digest()
    digest_override: bytes | None = None  # the active image's digest, whatever runs
    confirm_refused: bool = False  # CONFIRM: exception 0x04, last_result 210
    confirm_makes_confirmed: bool = True  # ... yet the boot status says "confirmed"
    counter_frozen: bool = False  # the security counter never moves
    new_counter: int = 2  # what a confirm raises the counter to (the test release's)
    window_delay_s: float = 0.0  # every transfer-window write answered this late
    last_message: bytes = b"CONFIRM refused: nothing to confirm"  # text of a refusal
    self_test_detail: str = ""  # the self-test document's detail of its one check
    config_document: bytes | None = None  # None: a valid configuration document
    doc_length: int | None = None  # the length it claims for a document (None: the real)
    soc_raw: int = 5000  # 0.01 %
    temps_raw: tuple[int, int] = (250, 251)  # 0.1 degC, s16 as u16


class RtuBms(HostileRtuBms):
    """A whole BMS behind the pty, enough for `bmsfw update` from identify to confirm.

    Its state is a few fields; every input register is computed from them on each read.
    ``commands`` lists every command it was asked to run, refused or not.
    """

    def __init__(self, behaviour: RtuBehaviour, unit: int = 1) -> None:
        super().__init__(unit)
        self.b = behaviour
        self.version = behaviour.version
        self.counter = behaviour.counter
        self.bank = 0
        self.image_state = "confirmed"
        self.digest = behaviour.image_digest
        self.identifies = 0
        self.commands: list[int] = []
        self.auth_state = 0
        self.challenge = b""
        self.seq = 0
        self.last_result = 0
        self.last_message = b""
        self.doc = 0
        self.xfer_state = 0
        self.erased = 0
        self.received = bytearray()
        self.activated = False
        self.selftest_state = 0
        self.selftest_version = ""
        self.old = (self.version, self.bank, self.digest)  # what a rollback returns to
        self.holding.update({0x000C: 1152, 0x000D: 0})  # 115200 baud, the spec's gap
        self.new_version = ""  # what the test's release installs (MCUboot form)
        self.image_size = 0  # its image's size (the last register may carry a pad byte)
        self._late = 0.0

    def _serve_delay(self) -> float:
        late, self._late = self._late, 0.0
        return late

    def answer(self, req: bytes) -> bytes | None:
        unit, function = req[0], req[1]
        if unit != self.unit:
            return None
        if function == 0x2B:
            self.identifies += 1
            self.identity = self._identity()
        elif function == 0x04:
            self.input = self._registers(*struct.unpack(">HH", req[2:6]))
        elif function == 0x10:
            address, count = struct.unpack(">HH", req[2:6])
            values = [struct.unpack(">H", req[7 + 2 * i : 9 + 2 * i])[0] for i in range(count)]
            self.writes.append((function, address))
            refusal = self._write(address, values)
            if refusal is not None:
                return bytes([unit, function | 0x80, refusal])
            return bytes([unit, function]) + req[2:6]
        return super().answer(req)

    # ------------------------------------------------------------------ what it says

    def _identity(self) -> dict[int, bytes]:
        b = self.b
        serial = b.serial_later if b.serial_later and self.identifies > 1 else b.serial
        texts: dict[int, str | bytes] = {
            0x00: b.vendor,
            0x05: b.model,
            0x80: serial,
            0x81: b.hw_revision,
            0x82: b.bootloader_version,
            0x83: self.version,
            0x84: str(self.counter),
            0x85: "AB"[self.bank],
            0x86: "1",
        }
        return {k: v.encode() if isinstance(v, str) else v for k, v in texts.items()}

    def _registers(self, address: int, count: int) -> dict[int, int]:
        b = self.b
        regs: dict[int, int] = {0x0000: 1, 0x0001: b.soc_raw, 0x0006: 24_000, 0x000A: 16}
        regs.update(zip(range(0x0002, 0x0004), u32(57_600), strict=True))
        regs.update(dict.fromkeys(range(0x0010, 0x0020), 36_000))
        regs[0x000B] = len(b.temps_raw)
        regs.update(enumerate((t & 0xFFFF for t in b.temps_raw), 0x0050))
        boot = [4, self.bank, IMAGE_STATES[self.image_state], 1, *u32(self.counter)]
        boot += to_registers(self.version, 16)
        regs.update(enumerate(boot, 0x0100))
        digest = self.b.digest_override or self.digest
        regs.update(enumerate(to_registers(digest, 16), 0x0140))
        selftest = [self.selftest_state, 1, 0, 0, *to_registers(self.selftest_version, 16)]
        regs.update(enumerate(selftest, 0x0200))
        xfer = [self.xfer_state, self.last_result, *u32(self.image_size if self.xfer_state else 0)]
        xfer += [*u32(len(self.received)), 512, 0, 0, self.auth_state, self.erased, self.seq]
        regs.update(enumerate(xfer, 0x0300))
        regs.update(enumerate(to_registers(self.last_message, 64), 0x0310))
        regs.update(enumerate(to_registers(self.challenge, 32), 0x0400))
        regs[0x0420] = len(self.challenge)
        if DOC_LENGTH <= address < DOC_DATA + 0x4000:
            document = self._document()
            length = len(document) if b.doc_length is None else b.doc_length
            regs.update(zip(range(DOC_LENGTH, DOC_DATA), u32(length), strict=True))
            data = to_registers(document, (len(document) + 1) // 2)
            regs.update(enumerate(data, DOC_DATA))
        return {a: regs.get(a, 0) for a in range(address, address + count)}

    def _document(self) -> bytes:
        if self.doc == 2:
            check = {"name": "cells", "passed": True, "value": "3.600 V", "limit": "3.0-4.2 V"}
            return json.dumps([{**check, "detail": self.b.self_test_detail}]).encode()
        if self.b.config_document is not None:
            return self.b.config_document
        config = {"cell_ov_mv": 3650, "rs485_unit": self.unit}
        calibration = {"current_gain": 1.0}
        body = {"config": config, "calibration": calibration}
        checksum = hashlib.sha256(canonical(body)).hexdigest()
        return canonical({"schema_version": 1, **body, "checksum": checksum})

    # ------------------------------------------------------------------ what it is told

    def _write(self, address: int, values: list[int]) -> int | None:
        """Take a 0x10 write; an exception code when refused."""
        if address == DOC_SELECT:
            self.doc = values[0]
        elif address >= WINDOW:
            offset = values[0] * 65536 + 2 * (address + 1 - 0x8000)
            data = b"".join(struct.pack(">H", v) for v in values[1:])
            if len(self.received) < offset + len(data):
                self.received.extend(bytes(offset + len(data) - len(self.received)))
            self.received[offset : offset + len(data)] = data
            self.xfer_state = 3
            self._late = self.b.window_delay_s
        elif address == COMMAND_REGISTER and len(values) == 2:
            return self._command(values[1])
        for i, value in enumerate(values):
            self.holding[address + i] = value
        return None

    def _command(self, command: int) -> int | None:
        self.commands.append(command)
        b = self.b
        if command == AUTH_CHALLENGE:
            self.challenge, self.auth_state = os.urandom(32), 1
        elif command == AUTH_PROVE:
            self.auth_state = 2  # a hostile BMS needs no proof; the host's checks are tested
        elif command == PREPARE:
            self.xfer_state, self.erased, self.received = 1, 0, bytearray()
        elif command == ERASE:
            self.xfer_state, self.erased = 2, 1
        elif command == VERIFY:
            self.xfer_state = 4
        elif command == ACTIVATE:
            self.xfer_state, self.activated = 5, True
        elif command == RESET:
            self._reset()
        elif command == ROLLBACK:
            self.version, self.bank, self.digest = self.old
            self.image_state, self.auth_state = "confirmed", 0
        elif command == CONFIRM:
            if b.confirm_refused:
                if b.confirm_makes_confirmed:
                    self.image_state = "confirmed"  # the lie: refused, and yet confirmed
                self.last_result, self.last_message = 210, b.last_message
                return 0x04
            self.image_state = "confirmed"
            if not b.counter_frozen:
                self.counter = max(self.counter, b.new_counter)
        self.seq = (self.seq + 1) & 0xFFFF
        self.last_result, self.last_message = 0, b""
        return None

    def _reset(self) -> None:
        self.auth_state, self.challenge = 0, b""
        if not self.activated:
            return
        self.activated, self.xfer_state, self.erased = False, 0, 0
        self.old = (self.version, self.bank, self.digest)
        self.version, self.bank, self.image_state = self.new_version, 1 - self.bank, "test"
        image = bytes(self.received[: self.image_size or len(self.received)])
        self.digest = hashlib.sha256(image).digest()
        self.selftest_state, self.selftest_version = 2, self.new_version
