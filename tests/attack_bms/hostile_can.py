"""A hostile BMS on CAN: our own UDS server on python-can + can-isotp, not the virtual BMS.

It speaks the documented wire format (docs/uds.md: DIDs, routine status records,
0x29 authentication, RequestDownload/TransferData) straight from bytes, with no
bmsfw code on the device side, and lies where a test tells it to: every answer
is a value in :class:`Behaviour` or a hook. It records every request that would
change the device (``writes``), so a test can show that nothing was written
after the first inconsistency.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import can
import isotp

REQUEST_ID, RESPONSE_ID = 0x7E0, 0x7E8  # node 1, 11-bit (docs/uds.md, addressing)

# services that change the device (what "nothing written" counts)
WRITE_SERVICES = frozenset({0x2E, 0x31, 0x34, 0x36, 0x37, 0x11, 0x14})

RID_STAGE, RID_ERASE, RID_VERIFY = 0x0201, 0xFF00, 0xFF01
RID_ACTIVATE, RID_CONFIRM, RID_ROLLBACK = 0x0202, 0x0203, 0x0204
RUN_STATES = ("application", "booting", "self-test", "bootloader", "off")
IMAGE_STATES = ("confirmed", "test", "reverted", "none")


def str8(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return bytes([len(raw)]) + raw


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Behaviour:
    """What the hostile BMS says. Defaults: an honest BMS-16S that updates correctly."""

    vendor: str = "ACME"
    model: str = "BMS-16S"
    hw_revision: str = "C"
    serial: str = "SN-0001"
    serial_later: str = ""  # identity drift: answered from the second identify on
    bootloader_version: str = "2.1.0"
    version: str = "1.0.0+0"
    counter: int = 1
    bank: str = "A"
    image_digest: bytes = hashlib.sha256(b"old image").digest()
    soc_raw: int = 5000  # 0.01 %
    cells_raw: tuple[int, ...] = (36000,) * 16  # 0.1 mV
    temps_raw: tuple[int, ...] = (250, 251)  # 0.1 degC, signed
    config_json: bytes | None = None  # None: a valid document
    confirm_status: bytes = b"\x00"  # the routine status record of CONFIRM
    confirm_makes_confirmed: bool = True  # the boot status after a confirm says "confirmed"
    rollback_works: bool = True  # an acknowledged rollback really returns to the old image
    counter_frozen: bool = False  # the security counter never moves (anti-rollback not raised)
    new_counter: int = 2  # what a confirm raises the counter to (the test release's)
    block_length: int = 1026  # maxNumberOfBlockLength in the RequestDownload answer
    isotp_block_size: int = 0
    isotp_stmin: int = 0
    slow_from_download: bool = False  # the flow control above only once the download starts
    did_override: dict[int, bytes] = field(default_factory=dict)  # raw answers per DID
    nrc_dids: frozenset[int] = frozenset()  # DIDs answered requestOutOfRange
    # DID 0x0104 (bank size u32, sector size u32, banks u8): b"" not reported (NRC 0x31);
    # ``flash_layout_later`` is answered from the second identify on (layout drift)
    flash_layout: bytes = b""
    flash_layout_later: bytes = b""
    # a slow BMS: requests starting with ``stall_prefix`` are answered 0x78 (response
    # pending) every ``pending_interval_s`` for ``stall_s`` seconds (inf: for ever)
    # before the real answer; with ``stall_after_reset`` only once a reset was asked for
    stall_prefix: bytes = b"\xff"
    stall_s: float = 0.0
    pending_interval_s: float = 0.3
    stall_after_reset: bool = False
    # a loaded device: the transfer block with this counter is first answered only after
    # ``late_s`` (past the tester's P2), so the tester sends it again and both get answered
    late_block: int = 0
    late_did: int = 0  # the same for the first read of this DID
    late_s: float = 0.4


@dataclass
class _State:
    version: str
    image_state: str = "confirmed"
    counter: int = 1
    bank: str = "A"
    digest: bytes = b""
    received: bytearray = field(default_factory=bytearray)
    staged_version: str = ""
    activated: bool = False
    old: tuple[str, str, bytes] = ("", "", b"")  # version, bank, digest to roll back to


class HostileUdsBms:
    """One node on a python-can virtual bus channel, served from a thread."""

    def __init__(self, channel: str, behaviour: Behaviour) -> None:
        self.b = behaviour
        self.s = _State(
            behaviour.version,
            counter=behaviour.counter,
            bank=behaviour.bank,
            digest=behaviour.image_digest,
        )
        self.writes: list[str] = []  # one line per request that changes the device
        self.identifies = 0
        self.resets = 0
        self.stalled = 0  # requests answered 0x78 first
        self.pending_sent = 0
        self.late_answers = 0  # transfer blocks answered after the tester's P2
        self.late_reads = 0  # reads of ``late_did``
        self._last_block = b""  # counter of the last transfer block written
        self.hooks: dict[int, Callable[[bytes], bytes | None]] = {}  # sid -> raw answer
        self._bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self._notifier = can.Notifier(self._bus, [], timeout=0.05)
        slow_now = not behaviour.slow_from_download
        params = {
            "blocksize": behaviour.isotp_block_size if slow_now else 0,
            "stmin": behaviour.isotp_stmin if slow_now else 0,
            "tx_padding": 0xCC,
            "max_frame_size": 1 << 20,
        }
        self._stack = isotp.NotifierBasedCanStack(
            self._bus,
            self._notifier,
            address=isotp.Address(
                isotp.AddressingMode.Normal_11bits, txid=RESPONSE_ID, rxid=REQUEST_ID
            ),
            params=params,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="hostile-bms")

    def __enter__(self) -> HostileUdsBms:
        self._stack.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._stack.stop()
        self._notifier.stop()
        self._bus.shutdown()

    # ------------------------------------------------------------------ serving

    def _serve(self) -> None:
        request: bytes | None = None
        while not self._stop.is_set():
            if request is None:
                got = self._stack.recv(block=True, timeout=0.05)
                if not got:
                    continue
                request = bytes(got)
            if self._stalls(request):
                request = self._stall(request)  # a new request ends the stall
                if request is not None:
                    continue
            else:
                answer = self.answer(request)
                if answer is not None:
                    self._stack.send(answer)
            request = None

    def _stalls(self, request: bytes) -> bool:
        b = self.b
        return (
            b.stall_s > 0
            and request.startswith(b.stall_prefix)
            and (not b.stall_after_reset or self.resets > 0)
        )

    def _stall(self, request: bytes) -> bytes | None:
        """Answer 0x78 until ``stall_s`` passed; return a new request that cut it short."""
        self.stalled += 1
        until = time.monotonic() + self.b.stall_s
        pending = bytes([0x7F, request[0], 0x78])
        while time.monotonic() < until and not self._stop.is_set():
            self._stack.send(pending)
            self.pending_sent += 1
            got = self._stack.recv(block=True, timeout=self.b.pending_interval_s)
            if got:
                return bytes(got)
        if not self._stop.is_set():
            answer = self.answer(request)
            if answer is not None:
                self._stack.send(answer)
        return None

    def answer(self, req: bytes) -> bytes | None:
        sid = req[0]
        if sid in self.hooks:
            return self.hooks[sid](req)
        if sid in WRITE_SERVICES:
            self.writes.append(req[:4].hex())
        handler = {
            0x10: lambda: bytes([0x50, req[1], 0x00, 0x32, 0x01, 0xF4]),
            0x3E: lambda: None if req[1] & 0x80 else b"\x7e\x00",
            0x22: lambda: self._read(req),
            0x27: lambda: bytes([0x67, req[1]]) + (b"\x00" * 4 if req[1] % 2 else b""),
            0x29: lambda: self._auth(req),
            0x31: lambda: self._routine(req),
            0x34: self._download,
            0x36: lambda: self._transfer(req),
            0x37: lambda: b"\x77",
            0x11: lambda: self._reset(req),
            0x2E: lambda: b"\x6e" + req[1:3],
            0x19: lambda: b"\x59\x02\xff",
            0x14: lambda: b"\x54",
        }.get(sid)
        if handler is None:
            return bytes([0x7F, sid, 0x11])
        return handler()

    def _auth(self, req: bytes) -> bytes:
        if req[1] == 0x01:
            return b"\x69\x01\x11" + struct.pack(">H", 16) + os.urandom(16) + b"\0\0"
        return b"\x69\x03\x12\x00\x00"

    # ------------------------------------------------------------------ DIDs

    def _read(self, req: bytes) -> bytes:
        did = struct.unpack(">H", req[1:3])[0]
        if did == self.b.late_did:
            self.late_reads += 1
            # the first read answered past P2; the tester's repeat after the next request
            time.sleep(self.b.late_s if self.late_reads == 1 else 0.05)
        data = self.did(did)
        if data is None:
            return bytes([0x7F, 0x22, 0x31])
        return b"\x62" + req[1:3] + data

    def did(self, did: int) -> bytes | None:
        b, s = self.b, self.s
        if did in b.nrc_dids:
            return None
        if did in b.did_override:
            return b.did_override[did]
        if did == 0xF18C:
            self.identifies += 1
            drifted = b.serial_later and self.identifies > 1
            return (b.serial_later if drifted else b.serial).encode()
        texts = {
            0xF18A: b.vendor,
            0xF187: b.model,
            0xF191: b.model,
            0xF193: b.hw_revision,
            0xF195: b.bootloader_version,
            0xF189: s.version,
            0xF188: s.version,
            0x0101: s.bank,
        }
        if did in texts:
            return texts[did].encode()
        if did == 0x0104:
            later = b.flash_layout_later and self.identifies > 1
            return (b.flash_layout_later if later else b.flash_layout) or None
        if did == 0x0100:
            return struct.pack(">I", s.counter)
        if did == 0x0102:
            return s.digest
        if did == 0x0110:
            return struct.pack(">H", b.soc_raw)
        if did == 0x0111:
            return struct.pack(">I", 57_600)
        if did == 0x0112:
            return struct.pack(">i", 0)
        if did == 0x0113:
            return struct.pack(">H", 24_000)
        if did == 0x0114:
            return bytes([len(b.cells_raw)]) + b"".join(struct.pack(">H", v) for v in b.cells_raw)
        if did == 0x0115:
            return bytes([len(b.temps_raw)]) + b"".join(struct.pack(">h", v) for v in b.temps_raw)
        if did == 0x0116:
            return b"\x00"
        if did == 0x0117:
            return b"\x01"
        if did == 0x0120:
            return self.boot_record()
        if did == 0x0130:
            return (
                b"\x01"
                + str8(s.version)
                + b"\x01\x01"
                + b"".join(str8(t) for t in ("supply", "24.0 V", "18-30 V", ""))
            )
        if did == 0x0140:
            return struct.pack(">IIBH", 0, 0, 0, 0)
        if did == 0x0150:
            return self.config_document()
        return None

    def boot_record(self) -> bytes:
        s = self.s
        return (
            bytes([RUN_STATES.index("application"), IMAGE_STATES.index(s.image_state)])
            + str8(s.bank)
            + str8(s.version)
            + struct.pack(">II", 1, s.counter)
            + str8("")
        )

    def config_document(self) -> bytes:
        if self.b.config_json is not None:
            return self.b.config_json
        config = {"cell_ov_mv": 3650, "can_node": 1}
        calibration = {"current_gain": 1.0}
        checksum = hashlib.sha256(
            canonical({"config": config, "calibration": calibration})
        ).hexdigest()
        return canonical(
            {
                "schema_version": 1,
                "config": config,
                "calibration": calibration,
                "checksum": checksum,
            }
        )

    # ------------------------------------------------------------------ programming

    def _routine(self, req: bytes) -> bytes:
        rid = struct.unpack(">H", req[2:4])[0]
        head = b"\x71\x01" + req[2:4]
        s = self.s
        if rid == RID_STAGE:
            s.received.clear()
            return head + b"\x00" + struct.pack(">IIBH", 0, 0, 0, 0)
        if rid == RID_CONFIRM:
            if self.b.confirm_makes_confirmed:
                s.image_state = "confirmed"
                if not self.b.counter_frozen:
                    s.counter = max(s.counter, self.b.new_counter)
            return head + self.b.confirm_status
        if rid == RID_ROLLBACK:
            if self.b.rollback_works and s.old[0]:
                s.version, s.bank, s.digest = s.old
                s.image_state = "confirmed"
            return head + b"\x00"
        if rid == RID_ACTIVATE:
            s.activated = True
        return head + b"\x00"

    def _download(self) -> bytes:
        self._last_block = b""
        if self.b.slow_from_download:  # from now on, ask the tester for tiny bursts
            self._stack.params.blocksize = self.b.isotp_block_size
            self._stack.params.stmin = self.b.isotp_stmin
        return b"\x74\x20" + struct.pack(">H", self.b.block_length)

    def _transfer(self, req: bytes) -> bytes:
        if req[1:2] == self._last_block:  # a repeated block: acknowledged, not written again
            if req[1] == self.b.late_block:
                time.sleep(0.05)  # still busy: this answer comes after the tester's next block
            return b"\x76" + req[1:2]
        self._last_block = req[1:2]
        if req[1] == self.b.late_block and not self.late_answers:
            self.late_answers += 1
            time.sleep(self.b.late_s)
        self.s.received += req[2:]
        return b"\x76" + req[1:2]

    def _reset(self, req: bytes) -> bytes:
        s = self.s
        self.resets += 1
        if s.activated and self.new_version:
            s.old = (s.version, s.bank, s.digest)
            s.version, s.bank = self.new_version, "B" if s.bank == "A" else "A"
            s.digest = hashlib.sha256(bytes(s.received)).digest()
            s.image_state = "test"
            s.activated = False
        return b"\x51" + req[1:2]

    new_version: str = ""  # what the test's release installs (MCUboot form)
