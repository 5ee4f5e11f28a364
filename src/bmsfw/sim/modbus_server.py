"""Modbus RTU server for the virtual BMS: register map v1 (docs/modbus.md) over pymodbus.

One :class:`ModbusBmsNode` per BMS translates register accesses into calls on
the BMS's device interface (:class:`~bmsfw.sim.interface.BmsDevice`);
:func:`serve_node` runs it as a pymodbus ``ModbusSerialServer`` on its own serial
port (on the simulated RS485 bus each node owns one device-side attachment, so the
nodes share the wire like real ones: a node answers only its own unit id, executes
broadcasts silently, and two talkers would garble).

Written against pymodbus's ``SimDevice`` API (the 4.0 datastore): the register
blocks live in a ``SimDevice`` and an async ``action`` fills reads from the
device and turns writes into commands. Read Device Identification (0x2B/0x0E) is
answered per node by a request class bound to the node, because pymodbus keeps
one process-wide identity otherwise and several nodes share a process here.

Encoded transfers (docs/modbus.md, "Encoded transfers"): writing a non-zero
``transfer_encoding`` announces that the window now carries the staged
component's *stored* bytes (compressed, delta patch, ciphertext). The value
must be the staged manifest's (``codec.transfer_encoding``) and the bank must
be blank; the node then feeds window writes, strictly in order, to
:class:`~bmsfw.sim._stream_decode.EncodedTransfer` and finishes the stream
(sizes, digests, a delta applied active -> inactive) at ``VERIFY``. A decoder
cannot resume mid-stream: an interrupted encoded transfer starts again at 0
after ``ERASE``. Broadcasts never enter or feed an encoded stream.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bmsfw.errors import BmsfwError
from bmsfw.link.wire import modbus_silence_s
from bmsfw.package import Component
from bmsfw.protocol.device_errors import NotVerifiedError
from bmsfw.protocol.modbus import codec
from bmsfw.protocol.modbus.registers import (
    AUTH_IDLE_TIMEOUT_S,
    COMMANDS_NEEDING_AUTH,
    CONFIG_REGISTERS,
    HOLDING,
    IDENTITY_OBJECTS,
    INPUT,
    MAP_VERSION,
    TRANSFER_PAGE_BYTES,
    AuthState,
    Command,
    SelfTestState,
    TransferStateCode,
)
from bmsfw.protocol.session import ConfigSnapshot, SelfTestResult, decode_staging_flags
from bmsfw.sim._stream_decode import EncodedTransfer
from bmsfw.sim.config import snapshot_checksum
from bmsfw.sim.interface import BmsDevice

__all__ = [
    "ModbusBmsNode",
    "build_sim_device",
    "serve_node",
]

log = logging.getLogger(__name__)

DOC_CONFIG = 1
DOC_SELFTEST = 2
_SERVED_FCS = frozenset((0x03, 0x04, 0x06, 0x10, 0x2B))
_BROADCAST_FCS = frozenset((0x06, 0x10))
# Silence that drops a half-received frame. Longer than t3.5 on purpose: a pty
# delivers a frame in pieces, and a busy simulator (16 nodes in one process)
# can leave tens of ms between them; junk is caught by the frame checks instead.
MIN_FRAME_GAP_S = 0.25
CHALLENGE_BYTES = 32


def _error_number(exc: BaseException) -> int:
    code = getattr(exc, "code", "")
    if isinstance(code, str) and code.startswith("BMSFW-E"):
        try:
            return int(code[7:])
        except ValueError:
            return 1
    return 1


class ModbusBmsNode:
    """Register map v1 in front of one BMS; pure request handling, no I/O."""

    def __init__(
        self,
        device: BmsDevice,
        unit: int,
        *,
        auth_idle_timeout_s: float = AUTH_IDLE_TIMEOUT_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id {unit} outside 1..247")
        self.device = device
        self.unit = unit
        self.auth_idle_timeout_s = auth_idle_timeout_s
        self._now = monotonic
        self._last_request = monotonic()
        self._boot_epoch: object = None
        self.upload = bytearray((HOLDING.UPLOAD_END - HOLDING.UPLOAD) * 2)
        self.upload_length = 0
        self.window_page = 0
        self.command_arg = 0
        self.command_seq = 0
        self.last_result = 0
        self.last_message = ""
        self.auth = AuthState.NONE
        self.challenge = b""
        self.doc_select = 0
        self.document = b""
        self.xfer_failed = False
        self.window_writes = 0
        self.broadcast_writes = 0
        self.in_broadcast = False  # set by the server around each request
        # the encoded stream in progress (transfer_encoding != 0), see the module doc
        self.encoded: EncodedTransfer | None = None
        self.stream_encoding = 0
        self.stream_offset = 0
        self.stream_size = 0
        self._component: Component | None = None  # the staged app component (cache)

    # ------------------------------------------------------------------ session

    def touch(self) -> None:
        """Every request to this unit (or a broadcast) calls this first.

        Authentication ends, as documented, when the BMS rebooted since the last
        request (RESET, ROLLBACK, a revert, a power cycle) or after
        ``auth_idle_timeout_s`` without a request; AUTH_CHALLENGE starts a new one.
        """
        now = self._now()
        epoch = self._epoch()
        if self.auth != AuthState.NONE:
            if epoch != self._boot_epoch:
                self._end_auth("the BMS rebooted")
            elif now - self._last_request > self.auth_idle_timeout_s:
                self._end_auth(f"no request for {self.auth_idle_timeout_s:g} s")
        self._boot_epoch = epoch
        self._last_request = now

    def _self_test(self) -> SelfTestResult | None:
        try:
            return self.device.self_test()
        except BmsfwError:
            return None  # none completed since the last reset

    def _write_config(self, snapshot: ConfigSnapshot) -> None:
        """Register writes carry no checksum: the node computes it over what it writes."""
        checksum = snapshot.checksum or snapshot_checksum(snapshot.config, snapshot.calibration)
        self.device.restore_snapshot(
            ConfigSnapshot(snapshot.schema_version, snapshot.config, snapshot.calibration, checksum)
        )

    def _epoch(self) -> object:
        try:
            return None if self.device.dead else self.device.boot_epoch
        except BmsfwError:
            return None

    def _end_auth(self, why: str) -> None:
        log.info("unit %d: authentication ended (%s)", self.unit, why)
        self.auth = AuthState.NONE
        self.challenge = b""
        self._end_stream()

    # ------------------------------------------------------------------ identity

    def identity_objects(self) -> dict[int, bytes]:
        ident = self.device.identity()
        values = {
            "vendor": ident.vendor,
            "product_code": ident.model,
            "revision": ident.app_version,
            "vendor_url": "https://example.invalid/bms",
            "product_name": f"{ident.model} battery management system",
            "model": ident.model,
            "user_application": "bmsfw virtual BMS",
            "serial": ident.serial,
            "hw_revision": ident.hw_revision,
            "bootloader_version": ident.bootloader_version,
            "app_version": ident.app_version,
            "security_counter": str(ident.security_counter),
            "active_bank": ident.active_bank,
            "map_version": str(MAP_VERSION),
        }
        if ident.flash_layout is not None:
            layout = ident.flash_layout
            values["flash_layout"] = (
                f"{layout.bank_size_bytes}/{layout.sector_size_bytes}/{layout.banks}"
            )
        return {IDENTITY_OBJECTS[k]: v.encode("utf-8") for k, v in values.items()}

    # ------------------------------------------------------------------ reads

    def read_input(self, address: int, count: int) -> list[int]:
        """Values of input registers ``address .. address+count-1``."""
        out: list[int] = []
        cache: dict[str, list[int]] = {}
        for addr in range(address, address + count):
            out.append(self._input_at(addr, cache))
        return out

    def _block(
        self, cache: dict[str, list[int]], name: str, make: Callable[[], list[int]]
    ) -> list[int]:
        if name not in cache:
            cache[name] = make()
        return cache[name]

    def _input_at(self, addr: int, cache: dict[str, list[int]]) -> int:
        start, end = codec.TELEMETRY_BLOCK
        if start <= addr < end:
            regs = self._block(
                cache,
                "telemetry",
                lambda: codec.encode_telemetry(self.device.telemetry(), map_version=MAP_VERSION),
            )
            return regs[addr - start]
        if INPUT.RUN_STATE <= addr < INPUT.BOOT_BLOCK_END:
            regs = self._block(
                cache, "boot", lambda: codec.encode_boot_status(self.device.boot_status())
            )
            return regs[addr - INPUT.RUN_STATE]
        if INPUT.IMAGE_SHA256 <= addr < INPUT.IMAGE_SHA256_END:
            regs = self._block(cache, "digest", self._digest_block)
            return regs[addr - INPUT.IMAGE_SHA256]
        if INPUT.IMAGE_KEY_COUNT <= addr < INPUT.IMAGE_KEY_HASHES_END:
            regs = self._block(
                cache,
                "keys",
                lambda: codec.encode_image_keys(self.device.identity().image_key_hashes),
            )
            return regs[addr - INPUT.IMAGE_KEY_COUNT]
        if INPUT.SELFTEST_STATE <= addr < INPUT.SELFTEST_BLOCK_END:
            regs = self._block(cache, "selftest", self._selftest_block)
            return regs[addr - INPUT.SELFTEST_STATE]
        if INPUT.XFER_STATE <= addr < INPUT.XFER_BLOCK_END:
            regs = self._block(cache, "xfer", self._xfer_block)
            return regs[addr - INPUT.XFER_STATE]
        if INPUT.CHALLENGE <= addr < INPUT.CHALLENGE + 32:
            regs = codec.bytes_to_registers(self.challenge.ljust(64, b"\0"))
            return regs[addr - INPUT.CHALLENGE]
        if addr == INPUT.CHALLENGE_LENGTH:
            return len(self.challenge)
        if INPUT.MISSING_BITMAP <= addr < INPUT.MISSING_BITMAP + INPUT.MISSING_BITMAP_REGISTERS:
            regs = self._block(cache, "bitmap", self._bitmap_block)
            index = addr - INPUT.MISSING_BITMAP
            return regs[index] if index < len(regs) else 0
        if INPUT.BLOCK_CRC <= addr < INPUT.BLOCK_CRC + INPUT.BLOCK_CRC_REGISTERS:
            block, word = divmod(addr - INPUT.BLOCK_CRC, 2)
            crcs = self._block(cache, "crcs", self._block_crcs)
            return codec.split_u32(crcs[block])[word] if block < len(crcs) else 0
        if addr in (INPUT.DOC_LENGTH, INPUT.DOC_LENGTH + 1):
            return codec.split_u32(len(self.document))[addr - INPUT.DOC_LENGTH]
        if INPUT.DOC_DATA <= addr < INPUT.DOC_DATA + INPUT.DOC_DATA_REGISTERS:
            index = (addr - INPUT.DOC_DATA) * 2
            chunk = self.document[index : index + 2].ljust(2, b"\0")
            return (chunk[0] << 8) | chunk[1]
        return 0

    def _digest_block(self) -> list[int]:
        try:
            digest = self.device.image_digest()
        except BmsfwError as exc:
            log.info("unit %d: no active image digest: %s", self.unit, exc)
            digest = bytes(32)  # all zero: no valid image in the active bank
        return codec.bytes_to_registers(digest)

    def _selftest_block(self) -> list[int]:
        result = self._self_test()
        regs = [0] * (INPUT.SELFTEST_BLOCK_END - INPUT.SELFTEST_STATE)
        if result is None:
            status = self.device.boot_status()
            running = status.run_state in ("self-test", "booting")
            regs[0] = SelfTestState.RUNNING if running else SelfTestState.NONE
            return regs
        regs[0] = SelfTestState.PASSED if result.passed else SelfTestState.FAILED
        regs[1] = len(result.checks)
        mask = 0
        for i, check in enumerate(result.checks[:32]):
            if not check.passed:
                mask |= 1 << i
        regs[2:4] = codec.split_u32(mask)
        regs[4:20] = codec.ascii_to_registers(result.version, 16)
        return regs

    def _status(self) -> Any:
        return self.device.transfer_status()

    def _xfer_block(self) -> list[int]:
        regs = [0] * (INPUT.XFER_BLOCK_END - INPUT.XFER_STATE)
        st = self._status()

        def put(addr: int, values: list[int]) -> None:
            regs[addr - INPUT.XFER_STATE : addr - INPUT.XFER_STATE + len(values)] = values

        written = tuple(getattr(st, "blocks_written", ()))
        state = TransferStateCode.IDLE
        if self.xfer_failed:
            state = TransferStateCode.FAILED
        elif getattr(st, "staged", False):
            if getattr(st, "verified", False):
                state = TransferStateCode.VERIFIED
            elif any(written):
                state = TransferStateCode.RECEIVING
            elif getattr(st, "erased", False):
                state = TransferStateCode.ERASED
            else:
                state = TransferStateCode.PREPARED
        put(INPUT.XFER_STATE, [state])
        put(INPUT.LAST_RESULT, [self.last_result])
        put(INPUT.TOTAL_SIZE, codec.split_u32(getattr(st, "total_size", 0)))
        put(INPUT.CONTIGUOUS_BYTES, codec.split_u32(getattr(st, "contiguous_bytes", 0)))
        put(INPUT.BLOCK_SIZE, [getattr(st, "block_size", 0)])
        put(INPUT.BLOCK_COUNT, [len(written)])
        put(INPUT.MISSING_COUNT, [sum(1 for w in written if not w)])
        put(INPUT.AUTH_STATE, [self.auth])
        put(INPUT.ERASED, [1 if getattr(st, "erased", False) else 0])
        put(INPUT.COMMAND_SEQ, [self.command_seq & 0xFFFF])
        put(INPUT.STREAM_OFFSET, codec.split_u32(self.stream_offset))
        put(INPUT.STREAM_ENCODING, [self.stream_encoding])
        put(INPUT.LAST_MESSAGE, codec.ascii_to_registers(self.last_message, 64))
        return regs

    def _bitmap_block(self) -> list[int]:
        written = tuple(getattr(self._status(), "blocks_written", ()))
        return codec.bitmap_to_registers([not w for w in written], INPUT.MISSING_BITMAP_REGISTERS)[
            : (len(written) + 15) // 16
        ]

    def _block_crcs(self) -> list[int]:
        if not getattr(self._status(), "staged", False):
            return []
        return list(self.device.block_crcs())

    def read_holding(self, address: int, count: int) -> list[int]:
        out = []
        config: dict[str, Any] | None = None
        for addr in range(address, address + count):
            if HOLDING.CONFIG <= addr < HOLDING.CONFIG_END:
                if config is None:
                    config = dict(self.device.config_snapshot().config)
                out.append(self._config_value(addr, config))
            elif addr == HOLDING.DOC_SELECT:
                out.append(self.doc_select)
            elif addr == HOLDING.COMMAND_ARG:
                out.append(self.command_arg)
            elif addr in (HOLDING.UPLOAD_LENGTH, HOLDING.UPLOAD_LENGTH + 1):
                out.append(codec.split_u32(self.upload_length)[addr - HOLDING.UPLOAD_LENGTH])
            elif addr == HOLDING.WINDOW_PAGE:
                out.append(self.window_page)
            elif addr == HOLDING.TRANSFER_ENCODING:
                out.append(self.stream_encoding)
            elif HOLDING.UPLOAD <= addr < HOLDING.UPLOAD_END:
                i = (addr - HOLDING.UPLOAD) * 2
                out.append((self.upload[i] << 8) | self.upload[i + 1])
            else:
                out.append(0)
        return out

    @staticmethod
    def _config_value(addr: int, config: dict[str, Any]) -> int:
        for spec in CONFIG_REGISTERS:
            if spec.address == addr and spec.key in config:
                raw = round(float(config[spec.key]) / spec.scale)
                return codec.to_s16(raw) if spec.type == "s16" else codec.to_u16(raw)
        return 0xFFFF

    # ------------------------------------------------------------------ writes

    def write_holding(self, address: int, values: list[int], *, broadcast: bool = False) -> bool:
        """Apply a write; False means refuse it (exception response when addressed)."""
        end = address + len(values)
        if address >= HOLDING.TRANSFER_WINDOW - 1:  # the page tag sits just before the data
            return self._window_write(address, values, broadcast=broadcast)
        if address >= HOLDING.UPLOAD and end <= HOLDING.UPLOAD_END:
            i = (address - HOLDING.UPLOAD) * 2
            self.upload[i : i + 2 * len(values)] = codec.registers_to_bytes(values)
            return True
        if address >= HOLDING.CONFIG and end <= HOLDING.CONFIG_END:
            return self._config_write(address, values)
        ok = True
        command: int | None = None
        for addr, value in zip(range(address, end), values, strict=True):
            if addr == HOLDING.DOC_SELECT:
                ok = ok and self._select_document(value)
            elif addr == HOLDING.COMMAND_ARG:
                self.command_arg = value
            elif addr == HOLDING.COMMAND:
                command = value
            elif addr == HOLDING.UPLOAD_LENGTH:
                self.upload_length = (value << 16) | (self.upload_length & 0xFFFF)
            elif addr == HOLDING.UPLOAD_LENGTH + 1:
                self.upload_length = (self.upload_length & 0xFFFF0000) | value
            elif addr == HOLDING.WINDOW_PAGE:
                self.window_page = value
            elif addr == HOLDING.TRANSFER_ENCODING:
                ok = ok and self._announce_stream(value, broadcast=broadcast)
            else:
                return False
        if command is not None:
            ok = ok and self.run_command(command)
        return ok

    def _config_write(self, address: int, values: list[int]) -> bool:
        snapshot = self.device.config_snapshot()
        config = dict(snapshot.config)
        by_addr = {spec.address: spec for spec in CONFIG_REGISTERS}
        for addr, raw in zip(range(address, address + len(values)), values, strict=True):
            spec = by_addr.get(addr)
            if spec is None or spec.key not in config:
                return self._refuse(f"no configuration register at 0x{addr:04X}", 1)
            signed = codec.from_s16(raw) if spec.type == "s16" else raw
            value: float = signed * spec.scale
            config[spec.key] = round(value) if isinstance(config[spec.key], int) else value
        try:
            self._write_config(
                ConfigSnapshot(
                    schema_version=snapshot.schema_version,
                    config=config,
                    calibration=snapshot.calibration,
                    checksum="",
                )
            )
        except BmsfwError as exc:
            return self._refuse(exc.message, _error_number(exc))
        self.last_result, self.last_message = 0, ""
        return True

    def _select_document(self, doc: int) -> bool:
        self.doc_select = doc
        if doc == DOC_CONFIG:
            snap = self.device.config_snapshot()
            self.document = json.dumps(
                {
                    "schema_version": snap.schema_version,
                    "config": dict(snap.config),
                    "calibration": dict(snap.calibration),
                    "checksum": snap.checksum,
                },
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
            return True
        if doc == DOC_SELFTEST:
            result = self._self_test()
            checks = (
                []
                if result is None
                else [
                    {
                        "name": c.name,
                        "passed": c.passed,
                        "value": c.value,
                        "limit": c.limit,
                        "detail": c.detail,
                    }
                    for c in result.checks
                ]
            )
            self.document = json.dumps(checks, separators=(",", ":")).encode()
            return True
        self.document = b""
        return False

    def _window_write(self, address: int, values: list[int], *, broadcast: bool) -> bool:
        if address + len(values) > HOLDING.TRANSFER_WINDOW_END:
            return False
        # The hot path of every transfer: the staged size only, not the whole status.
        total = self.device.staged_size()
        if self.auth != AuthState.AUTHENTICATED or total is None:
            # A node that is not part of this update ignores the string's broadcast.
            return (
                self._refuse("transfer window write without an authenticated staged update", 206)
                if not broadcast
                else False
            )
        if len(values) < 2:
            return broadcast or self._refuse("a window write is [page, data...]", 1)
        page = values[0]  # each frame names its page: a lost frame cannot shift others
        offset = page * TRANSFER_PAGE_BYTES + (address + 1 - HOLDING.TRANSFER_WINDOW) * 2
        data = codec.registers_to_bytes(values[1:])
        if self.encoded is not None:
            # A string broadcast carries a decoded image; this node takes its own stream.
            return False if broadcast else self._stream_write(offset, data)
        component = self._staged_component()
        if component is not None and component.encryption != "none":
            # the BMS holds only the ciphertext's digest: decoded bytes cannot verify
            return broadcast or self._refuse(
                "the staged image is encrypted: send its stored bytes with transfer_encoding "
                f"0x{codec.transfer_encoding(component):02X}",
                1,
            )
        data = data[: max(0, total - offset)]
        if not data:
            return broadcast or self._refuse(f"offset {offset} beyond image size {total}", 204)
        try:
            self.device.write_inactive(offset, data)
        except BmsfwError as exc:
            # A repair frame may overlap bytes a broadcast frame already programmed
            # (flash cannot be programmed twice): write only what is still missing.
            if not self._write_missing_only(self._status(), offset, data):
                return self._refuse(exc.message, _error_number(exc))
        self.window_writes += 1
        if broadcast:
            self.broadcast_writes += 1
        return True

    # ------------------------------------------------------------------ encoded streams

    def _staged_component(self) -> Component | None:
        if self._component is None:
            self._component = self.device.staged_component()
        return self._component

    def _end_stream(self) -> None:
        self.encoded = None
        self.stream_encoding = 0
        self.stream_offset = 0
        self.stream_size = 0

    def _announce_stream(self, value: int, *, broadcast: bool) -> bool:
        """``transfer_encoding`` written: 0 = the window carries the image, else stored bytes."""
        if broadcast:
            return False  # encoded streams are addressed only (no repair for a decoder)
        if self.auth != AuthState.AUTHENTICATED:
            return self._refuse("transfer encoding needs an authenticated tester", 349)
        if value == 0:
            self._end_stream()
            return True
        if self.encoded is not None and value == self.stream_encoding and not self.stream_offset:
            return True  # the same announcement again (a lost reply): nothing to restart
        component = self._staged_component()
        if component is None:
            return self._refuse("no release header staged: PREPARE first", 202)
        expected = codec.transfer_encoding(component) if codec.is_encoded(component) else 0
        if value != expected:
            return self._refuse(
                f"transfer encoding 0x{value:02X} does not match the staged release (0x"
                f"{expected:02X}: encoding {component.encoding}, delta {component.is_delta}, "
                f"encryption {component.encryption})",
                1,
            )
        if not self.device.bank_blank():
            return self._refuse("an encoded transfer starts on an erased bank: ERASE first", 203)
        self._end_stream()
        try:
            self.encoded = self.device.begin_encoded()
        except BmsfwError as exc:
            return self._refuse(exc.message, _error_number(exc))
        self.stream_encoding = value
        self.stream_size = component.stored_size
        self.last_result, self.last_message = 0, ""
        return True

    def _stream_write(self, offset: int, data: bytes) -> bool:
        encoded = self.encoded
        assert encoded is not None
        data = data[: max(0, self.stream_size - offset)]  # an odd stream's pad byte
        if offset > self.stream_offset or not data:
            return self._refuse(
                f"encoded stream continues at byte {self.stream_offset}, not {offset}: "
                "it cannot skip; ERASE and send it again from 0",
                204,
            )
        # a repeated frame (its reply was lost) is acknowledged, not decoded twice
        new = data[self.stream_offset - offset :]
        if new:
            try:
                encoded.feed(new)
            except BmsfwError as exc:
                # the stream is broken (corrupt, too long): the decoder cannot go on
                self._end_stream()
                self.xfer_failed = True
                return self._refuse(f"{exc.code}: {exc.message}", _error_number(exc))
            self.stream_offset += len(new)
        self.window_writes += 1
        return True

    def _finish_stream(self) -> None:
        """Before VERIFY: the whole stream arrived; sizes, digests, a delta applied."""
        encoded, received, size = self.encoded, self.stream_offset, self.stream_size
        self._end_stream()
        if encoded is None:
            return
        if received != size:
            raise NotVerifiedError(
                f"the encoded stream is incomplete: {received} of {size} stored bytes; "
                "ERASE and send it again from 0"
            )
        encoded.finish()

    def _write_missing_only(self, st: Any, offset: int, data: bytes) -> bool:
        end = offset + len(data)
        wrote = False
        for gap_start, gap_len in tuple(getattr(st, "missing_ranges", ())):
            lo, hi = max(offset, gap_start), min(end, gap_start + gap_len)
            if lo < hi:
                try:
                    self.device.write_inactive(lo, data[lo - offset : hi - offset])
                except BmsfwError:
                    return False
                wrote = True
        return wrote

    def _refuse(self, message: str, number: int) -> bool:
        self.last_result = number
        self.last_message = message[:128]
        log.info("unit %d refuses: %s", self.unit, message)
        return False

    # ------------------------------------------------------------------ commands

    def run_command(self, value: int) -> bool:
        """Execute one command written to ``HOLDING.COMMAND``; False = refused."""
        self.command_seq += 1
        try:
            command = Command(value)
        except ValueError:
            return self._refuse(f"unknown command {value}", 1)
        if command in COMMANDS_NEEDING_AUTH and self.auth != AuthState.AUTHENTICATED:
            return self._refuse(f"{command.name.lower()} needs an authenticated tester", 349)
        self.last_result, self.last_message = 0, ""
        try:
            self._execute(command)
        except BmsfwError as exc:
            if command in (Command.VERIFY, Command.PREPARE):
                self.xfer_failed = True
            return self._refuse(exc.message, _error_number(exc))
        except ValueError as exc:
            return self._refuse(str(exc), 1)
        return True

    def _upload_bytes(self) -> bytes:
        return bytes(self.upload[: self.upload_length])

    def _execute(self, command: Command) -> None:
        device = self.device
        if command == Command.AUTH_CHALLENGE:
            self.challenge = os.urandom(CHALLENGE_BYTES)
            self.auth = AuthState.CHALLENGED
        elif command == Command.AUTH_PROVE:
            self._prove(self._upload_bytes())
        elif command == Command.PREPARE:
            self.xfer_failed = False
            self._end_stream()
            self._component = None
            channel, downgrade_authorised = decode_staging_flags(self.command_arg)
            header = self._upload_bytes()
            # a delta for another base, or an image for a key this BMS lacks, is
            # refused here: before the erase, before any byte is written
            device.check_release(header)
            device.begin_update(header, channel=channel, downgrade_authorised=downgrade_authorised)
            self.window_page = 0
        elif command == Command.ERASE:
            self._end_stream()
            device.erase_inactive()
        elif command == Command.VERIFY:
            self._finish_stream()
            device.verify_inactive()
        elif command == Command.ACTIVATE:
            device.activate()
        elif command == Command.RESET:
            device.reset()
        elif command == Command.CONFIRM:
            device.confirm()
        elif command == Command.ROLLBACK:
            device.rollback()
        elif command == Command.WRITE_CONFIG:
            doc = json.loads(self._upload_bytes())
            self._write_config(
                ConfigSnapshot(
                    schema_version=int(doc["schema_version"]),
                    config=doc["config"],
                    calibration=doc["calibration"],
                    checksum=str(doc.get("checksum", "")),
                )
            )
        elif command == Command.ABORT:
            self._end_stream()
            self._component = None
            device.abort_update()
            self.xfer_failed = False

    def _prove(self, blob: bytes) -> None:
        from bmsfw.protocol.uds._auth import (
            TesterCertificateRejected,
            verify_proof,
            verify_tester_chain,
        )

        if self.auth != AuthState.CHALLENGED or not self.challenge:
            raise ValueError("no challenge issued: run AUTH_CHALLENGE first")
        challenge, self.challenge = self.challenge, b""  # one proof per challenge
        self.auth = AuthState.NONE
        chain, signature = codec.unpack_auth_proof(blob)
        try:
            tester = verify_tester_chain(
                chain, root_key_hash=self.device.root_key_hash(), now=self.device.now()
            )
        except TesterCertificateRejected as exc:
            raise ValueError(f"tester certificate rejected: {exc.reason}") from None
        if not verify_proof(tester.public_key, challenge, signature):
            raise ValueError("challenge signature does not match the tester certificate")
        self.auth = AuthState.AUTHENTICATED
        log.info("unit %d: tester %s authenticated", self.unit, tester.subject)


def build_sim_device(node: ModbusBmsNode) -> Any:
    """The pymodbus ``SimDevice`` (4.0 datastore) whose action drives ``node``."""
    from pymodbus.constants import ExcCodes
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def action(  # noqa: PLR0917 - pymodbus calls it positionally
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if not node.device.responsive():
            return ExcCodes.DEVICE_BUSY
        node.touch()
        base = address - start_address
        if function_code == 4:
            registers[base : base + count] = node.read_input(address, count)
            return None
        if function_code == 3:
            registers[base : base + count] = node.read_holding(address, count)
            return None
        if function_code in (6, 16) and set_values is not None:
            values = [int(v) for v in set_values]
            if not node.write_holding(address, values, broadcast=node.in_broadcast):
                return ExcCodes.ILLEGAL_VALUE if node.last_result == 1 else ExcCodes.DEVICE_FAILURE
            return None
        return ExcCodes.ILLEGAL_FUNCTION

    bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    holding = [SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)]
    inputs = [SimData(0, count=0x6002, values=0, datatype=DataType.REGISTERS)]
    return SimDevice(id=node.unit, simdata=(bits, list(bits), holding, inputs), action=action)


def _identity_request_class(nodes: dict[int, ModbusBmsNode]) -> type[Any]:
    """A 0x2B/0x0E request class answering from the addressed node's own identity."""
    from pymodbus.pdu.device import DeviceInformationFactory, ModbusDeviceIdentification
    from pymodbus.pdu.mei_message import (
        ReadDeviceInformationRequest,
        ReadDeviceInformationResponse,
    )

    class _Control:
        def __init__(self, objects: dict[int, bytes]) -> None:
            self.Identity = ModbusDeviceIdentification(info=objects)  # type: ignore[no-untyped-call]

    class NodeIdentityRequest(ReadDeviceInformationRequest):
        async def datastore_update(self, context: Any, device_id: int) -> Any:
            node = nodes.get(device_id)
            if node is None:
                return await super().datastore_update(context, device_id)
            node.touch()
            control = _Control(node.identity_objects())
            information = DeviceInformationFactory.get(  # type: ignore[no-untyped-call]
                control, self.read_code, self.object_id
            )
            return ReadDeviceInformationResponse(
                read_code=self.read_code,
                information=information,
                dev_id=device_id,
                transaction_id=self.transaction_id,
            )

    return NodeIdentityRequest


def install_identity(server: Any, nodes: dict[int, ModbusBmsNode]) -> None:
    """Route 0x2B/0x0E on ``server`` to the nodes' own identities."""
    from pymodbus.pdu import DecodePDU

    cls = _identity_request_class(nodes)
    table = {fc: dict(sub) for fc, sub in DecodePDU.pdu_sub_table.items()}
    _, response_cls = table[0x2B][0x0E]
    table[0x2B][0x0E] = (cls, response_cls)
    server.decoder.pdu_sub_table = table


async def serve_node(
    nodes: list[ModbusBmsNode],
    port: str,
    *,
    baud_bps: int = 115_200,
    parity: str = "E",
    stopbits: int = 1,
) -> Any:
    """Start a pymodbus RTU server for ``nodes`` on ``port``; returns the server object.

    Usually one node per server (one device-side attachment per BMS on the
    simulated bus); several nodes on one server share one attachment.
    """
    from pymodbus.server import ModbusSerialServer

    from bmsfw.protocol.modbus.client import serial_url

    devices = [build_sim_device(n) for n in nodes]
    server = ModbusSerialServer(
        devices if len(devices) > 1 else devices[0],
        port=serial_url(port),
        baudrate=baud_bps,
        parity=parity,
        stopbits=stopbits,
        bytesize=8,
        ignore_missing_devices=True,
        broadcast_enable=True,
    )
    install_identity(server, {n.unit: n for n in nodes})
    # Junk is dropped after a silence longer than any t3.5 (the spec's is the longest).
    gap_s = max(modbus_silence_s(baud_bps), MIN_FRAME_GAP_S)
    _install_request_filter(server, nodes, gap_s=gap_s)
    await server.serve_forever(background=True)
    return server


def _install_request_filter(server: Any, nodes: list[ModbusBmsNode], gap_s: float) -> None:
    """Multi-drop behaviour pymodbus's RTU server lacks, added per request.

    On a shared RS485 wire every node hears every frame: other units'
    requests, and the other nodes' replies (which the server-side decoder reads
    as requests). A node must stay silent for anything not addressed to one of
    its units, or it garbles the bus. Broadcasts (unit 0) are executed by every
    node with the ``in_broadcast`` flag set, so refusals stay silent.
    """
    by_unit = {n.unit: n for n in nodes}
    units = set(by_unit)
    accept = units | {0}
    original = server.callback_new_connection

    def new_connection() -> Any:
        handler = original()
        inner = handler.handle_request
        receive = handler.data_received
        last_rx = [0.0]
        buffer = bytearray()
        pending: deque[Any] = deque()

        def data_received(data: bytes) -> None:
            # RTU frames are delimited by silence, which pymodbus ignores, and its
            # framer swallows everything after the first frame of a read. So frames
            # are cut here, one at a time, and junk is dropped at each silence.
            now = time.monotonic()
            if now - last_rx[0] > gap_s and buffer:
                log.log(5, "units %s: drop %d bytes after silence", sorted(units), len(buffer))
                buffer.clear()
            last_rx[0] = now
            buffer.extend(data)
            decoder = handler.framer.decoder
            while len(buffer) >= 4:
                served = _BROADCAST_FCS if buffer[0] == 0 else _SERVED_FCS
                if buffer[0] not in accept or buffer[1] not in served:
                    log.log(5, "units %s: skip %s", sorted(units), bytes(buffer[:8]).hex())
                    buffer.clear()  # another unit's request or another node's reply
                    break
                pdu_class = decoder.lookupPduClass(bytes(buffer))
                size = pdu_class.calculateRtuFrameSize(bytes(buffer)) if pdu_class else 0
                if not size and len(buffer) < 8:
                    break  # the byte count that gives the size has not arrived yet
                if not size or size > 256:
                    log.log(5, "units %s: no frame in %s", sorted(units), bytes(buffer[:8]).hex())
                    buffer.clear()
                    break
                if len(buffer) < size:
                    break
                frame = bytes(buffer[:size])
                del buffer[:size]
                handler.recv_buffer = b""
                handler.last_pdu = None
                receive(frame)
                if handler.last_pdu is not None:
                    pending.append(handler.last_pdu)
            handler.recv_buffer = b""

        async def handle_request() -> None:
            pdu = pending.popleft() if pending else None
            if pdu is None:
                return
            handler.last_pdu = pdu
            broadcast = not pdu.dev_id
            if not broadcast and pdu.dev_id not in units:
                return
            if not broadcast and not by_unit[pdu.dev_id].device.responsive():
                return  # rebooting: silent
            if broadcast and pdu.function_code not in (0x05, 0x06, 0x0F, 0x10):
                return  # broadcast is for writes only (Modbus over serial line 2.1)
            for node in nodes:
                node.in_broadcast = broadcast
            try:
                await inner()
            finally:
                for node in nodes:
                    node.in_broadcast = False

        handler.handle_request = handle_request
        handler.data_received = data_received
        return handler

    server.callback_new_connection = new_connection
