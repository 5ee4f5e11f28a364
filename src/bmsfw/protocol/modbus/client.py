"""``BmsSession`` over Modbus RTU (pymodbus ``ModbusSerialClient`` + pyserial).

One :class:`ModbusBus` owns the serial port (one master per RS485 string); any
number of :class:`ModbusSession` objects share it, one per unit id. The
broadcast updater uses the bus directly for unit-0 writes.

Commands (prepare, erase, verify, ...) are written to the control register
together with their argument in one function-0x10 request. The device counts
executed commands in ``INPUT.COMMAND_SEQ``; when a reply is lost the client
polls that counter instead of repeating a command blindly, so a lost reply
never erases twice or resets a node that already reset.

``ModbusSession.write`` takes the decoded image, or the staged component's
*stored* bytes (compressed, delta patch, ciphertext): it then announces their
encoding in ``transfer_encoding`` first and the BMS decodes as they arrive
(docs/modbus.md, "Encoded transfers"); such a stream always starts at 0.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bmsfw.errors import BmsfwError
from bmsfw.link.wire import FRAME_GAPS, modbus_silence_s, serial_char_bits
from bmsfw.package import Component, Manifest, decode_header
from bmsfw.protocol.boot_wait import wait_for_application
from bmsfw.protocol.bounds import (
    counter_value,
    decode_config_document,
    decoded,
    device_text,
    flash_layout_text,
    strict_json,
)
from bmsfw.protocol.deadline import StepBudgets, StepClock, session_step
from bmsfw.protocol.errors import (
    DeviceActivateFailedError,
    DeviceHeaderRejectedError,
    DeviceVerifyFailedError,
    StepDeadlineError,
)
from bmsfw.protocol.modbus import codec
from bmsfw.protocol.modbus.errors import (
    ModbusBusyError,
    ModbusCommandRefusedError,
    ModbusExceptionResponseError,
    ModbusFrameError,
    ModbusInvalidResponseError,
    ModbusMapVersionError,
    ModbusNoReplyError,
    ModbusPortError,
    ModbusSerialParamsError,
    ModbusUnitIdError,
)
from bmsfw.protocol.modbus.registers import (
    COMMAND_NAMES,
    COMMANDS_NEEDING_AUTH,
    CONFIG_REGISTERS,
    HOLDING,
    IDENTITY_OBJECTS,
    INPUT,
    MAP_VERSION,
    MAX_READ_REGISTERS,
    MAX_WRITE_REGISTERS,
    AuthState,
    Command,
    SelfTestState,
)
from bmsfw.protocol.session import (
    BootStatus,
    Channel,
    ConfigSnapshot,
    DeviceIdentity,
    LinkQuality,
    SelfTestCheck,
    SelfTestResult,
    Telemetry,
    TesterCredentials,
    TransferState,
    staging_flags,
)

__all__ = [
    "COMMON_BAUDS",
    "ModbusBus",
    "ModbusSession",
    "SerialSettings",
    "open_modbus_bus",
    "open_modbus_session",
    "serial_url",
]

log = logging.getLogger(__name__)
_Check = Callable[[str], None]  # raises when the session step's deadline has passed
_T = TypeVar("_T")

COMMON_BAUDS: tuple[int, ...] = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
DOC_CONFIG = 1
DOC_SELFTEST = 2


@dataclass(frozen=True)
class SerialSettings:
    """Serial line settings and client timing (8E1 is the Modbus default)."""

    port: str
    baud_bps: int = 115_200
    parity: str = "E"
    stopbits: int = 1
    timeout_s: float = 0.5
    retries: int = 2
    command_timeout_s: float = 10.0
    frame_gap: str = "spec"  # Modbus t3.5 between frames: bmsfw.link.wire.FRAME_GAPS

    def __post_init__(self) -> None:
        if self.parity not in ("N", "E", "O"):
            raise ModbusSerialParamsError(f"parity must be N, E or O, got {self.parity!r}")
        if self.stopbits not in (1, 2):
            raise ModbusSerialParamsError(f"stop bits must be 1 or 2, got {self.stopbits}")
        if not 300 <= self.baud_bps <= 4_000_000:
            raise ModbusSerialParamsError(f"baud rate {self.baud_bps} is not a serial baud rate")
        if self.timeout_s <= 0 or self.retries < 0:
            raise ModbusSerialParamsError("timeout_s must be > 0 and retries >= 0")
        if self.frame_gap not in FRAME_GAPS:
            raise ModbusSerialParamsError(
                f"frame gap must be one of {', '.join(FRAME_GAPS)}, got {self.frame_gap!r}"
            )

    @property
    def rate(self) -> str:
        gap = "" if self.frame_gap == "spec" else ", 3.5-character frame gap"
        return f"{self.baud_bps} 8{self.parity}{self.stopbits}{gap}"

    @property
    def char_bits(self) -> int:
        return int(serial_char_bits(8, self.parity, self.stopbits))

    @property
    def silence_s(self) -> float:
        """t3.5 on this line."""
        return modbus_silence_s(self.baud_bps, self.char_bits, self.frame_gap)


def serial_url(port: str) -> str:
    """The pyserial URL for ``port``: ptys go through the ``simpty`` handler (parity on ptys)."""
    import os

    import serial

    package = "bmsfw.protocol.modbus._pyserial"
    if package not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(package)
    if "://" not in port and os.path.realpath(port).startswith("/dev/pts/"):
        return "simpty://" + port
    return port


@functools.cache
def _prompt_serial_client() -> Any:
    """pymodbus's serial client, receiving bytes the moment they arrive.

    pymodbus 3's sync client waits for an answer by polling the port every
    millisecond (or 4 character times) until two polls see the same byte count,
    so every reply costs 1-2 ms after its last byte; at 921,600 baud a whole
    255-character request takes 3 ms. Here ``recv(None)`` blocks in the port's
    ``read`` (select) until the first byte, then returns what has arrived; the
    transaction's RTU framer collects a frame across calls as it does for the
    async client, so nothing else changes.
    """
    from pymodbus.client import ModbusSerialClient
    from pymodbus.exceptions import ConnectionException

    class PromptSerialClient(ModbusSerialClient):
        # Counted here, not in trace_packet: the transaction traces its whole receive
        # buffer after every recv, so a reply arriving in pieces would count twice.
        received_bytes = 0
        on_receive: Any = None  # ModbusBus._received: bytes read, for bus taps

        def recv(self, size: int | None) -> bytes:
            data = self._recv(size)
            self.received_bytes += len(data)
            if data and self.on_receive is not None:
                self.on_receive(data)
            return data

        def _recv(self, size: int | None) -> bytes:
            if size is not None or not self.socket:
                return bytes(super().recv(size))
            try:
                data = bytes(self.socket.read(1))  # the client timeout bounds the wait
                waiting = self.socket.in_waiting if data else 0
                return data + bytes(self.socket.read(waiting)) if waiting else data
            except (BlockingIOError, InterruptedError):
                raise
            except OSError:
                self.close()  # type: ignore[no-untyped-call]
                raise ConnectionException(str(self)) from None

    return PromptSerialClient


class ModbusBus:
    """The master end of one RS485 string: a pymodbus serial client plus counters."""

    def __init__(self, settings: SerialSettings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self.bytes_tx = 0
        self.frames_ok = 0
        self.no_replies = 0
        self._client = _prompt_serial_client()(
            serial_url(settings.port),
            baudrate=settings.baud_bps,
            parity=settings.parity,
            stopbits=settings.stopbits,
            bytesize=8,
            timeout=settings.timeout_s,
            retries=settings.retries,
            trace_packet=self._trace,
        )
        try:
            connected = self._client.connect()
        except Exception as exc:  # pyserial raises SerialException / OSError variants
            raise ModbusPortError(f"cannot open {settings.port}: {exc}") from exc
        if not connected:
            raise ModbusPortError(f"cannot open serial port {settings.port}")
        self._listeners: tuple[Any, ...] = ()
        self._client.on_receive = self._received

    def add_listener(self, listener: Any) -> None:
        """Call ``listener(data, received=...)`` with each frame written and chunk read.

        A bus tap (:class:`bmsfw.link.tap.SerialFrameRecorder`); never changes the bytes.
        """
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Any) -> None:
        self._listeners = tuple(x for x in self._listeners if x is not listener)

    def _tell(self, data: bytes, received: bool) -> None:
        for listener in self._listeners:
            try:
                listener(bytes(data), received=received)
            except Exception:  # a broken recorder must not break the link
                log.exception("serial frame listener failed")

    def _received(self, data: bytes) -> None:
        if self._listeners:
            self._tell(data, True)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.bytes_tx += len(data)
            if self._listeners:
                self._tell(data, False)
        return data

    @property
    def bytes_rx(self) -> int:
        """Bytes received on the port (whatever they were)."""
        return int(self._client.received_bytes)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ModbusBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def session(self, unit: int) -> ModbusSession:
        return ModbusSession(self, unit)

    # ------------------------------------------------------------------ raw requests

    def _call(
        self, unit: int, what: str, fn: Any, before: _Check | None = None, **kwargs: Any
    ) -> Any:
        from pymodbus.exceptions import ModbusException

        if before is not None:
            before(what)  # the session's step deadline, checked before every request
        rx_before = self.bytes_rx
        with self._lock:
            try:
                response = fn(device_id=unit, **kwargs)
            except ModbusException as exc:
                self.no_replies += 1
                if self.bytes_rx > rx_before:
                    raise ModbusFrameError(
                        f"unit {unit}: {what}: {self.bytes_rx - rx_before} bytes received but "
                        f"no valid reply at {self.settings.rate} on {self.settings.port}"
                    ) from exc
                raise ModbusNoReplyError(
                    f"unit {unit}: no reply to {what} at {self.settings.rate} on "
                    f"{self.settings.port} (timeout {self.settings.timeout_s} s, "
                    f"{self.settings.retries} retries)"
                ) from exc
        if response is None:
            return None
        if response.isError():
            raise ModbusExceptionResponseError(
                f"unit {unit}: {what}: exception code {getattr(response, 'exception_code', '?')}"
            )
        self.frames_ok += 1
        return response

    def read_input(
        self, unit: int, address: int, count: int, *, before: _Check | None = None
    ) -> list[int]:
        out: list[int] = []
        while count > 0:
            n = min(count, MAX_READ_REGISTERS)
            resp = self._call(
                unit,
                f"read input registers 0x{address:04X}+{n}",
                self._client.read_input_registers,
                before,
                address=address,
                count=n,
            )
            out.extend(resp.registers[:n])
            address += n
            count -= n
        return out

    def read_holding(
        self, unit: int, address: int, count: int, *, before: _Check | None = None
    ) -> list[int]:
        out: list[int] = []
        while count > 0:
            n = min(count, MAX_READ_REGISTERS)
            resp = self._call(
                unit,
                f"read holding registers 0x{address:04X}+{n}",
                self._client.read_holding_registers,
                before,
                address=address,
                count=n,
            )
            out.extend(resp.registers[:n])
            address += n
            count -= n
        return out

    def write(
        self, unit: int, address: int, values: Sequence[int], *, before: _Check | None = None
    ) -> None:
        """Function 0x10; unit 0 is a broadcast (sent, no reply awaited)."""
        values = list(values)
        for start in range(0, len(values), MAX_WRITE_REGISTERS):
            chunk = values[start : start + MAX_WRITE_REGISTERS]
            self._call(
                unit,
                f"write registers 0x{address + start:04X}+{len(chunk)}",
                self._client.write_registers,
                before,
                address=address + start,
                values=chunk,
                no_response_expected=(unit == 0),
            )

    def read_device_information(
        self, unit: int, *, before: _Check | None = None
    ) -> dict[int, bytes]:
        """All identity objects (extended read 0x03), following "more follows"."""
        info: dict[int, bytes] = {}
        object_id = 0
        for _ in range(16):
            resp = self._call(
                unit,
                "read device identification",
                self._client.read_device_information,
                before,
                read_code=0x03,
                object_id=object_id,
            )
            info.update(resp.information)
            if not resp.more_follows:
                break
            object_id = resp.next_object_id
        return info


def _app_component(header: bytes) -> Component | None:
    """The app component the header names (the device verified it; here only read)."""
    try:
        return Manifest.from_json_bytes(decode_header(header).manifest).component("app")
    except (BmsfwError, KeyError, ValueError):
        return None


def _self_test_checks(raw: bytes) -> tuple[SelfTestCheck, ...]:
    """The self-test document: a JSON list of {name, passed, value, limit, detail}."""
    detail = strict_json(raw, "self-test document")
    if not isinstance(detail, list):
        raise ValueError("not a JSON list")
    checks = []
    for c in detail:
        if not isinstance(c, dict) or not isinstance(c.get("passed"), bool):
            raise ValueError("a check is not an object with a true/false 'passed'")
        checks.append(
            SelfTestCheck(
                name=str(c["name"]),
                passed=c["passed"],
                value=str(c.get("value", "")),
                limit=str(c.get("limit", "")),
                detail=str(c.get("detail", "")),
            )
        )
    return tuple(checks)


class ModbusSession:
    """A connection to one BMS on a Modbus RTU string (implements ``BmsSession``)."""

    #: ``write`` takes a component's stored bytes (compressed, delta, encrypted) as
    #: well as decoded images: the BMS decodes them (docs/modbus.md, encoded transfers).
    accepts_stored = True

    def __init__(
        self,
        bus: ModbusBus,
        unit: int,
        *,
        owns_bus: bool = False,
        budgets: StepBudgets | None = None,
    ) -> None:
        if not 1 <= unit <= 247:
            raise ModbusUnitIdError(f"unit id {unit} is outside 1..247")
        self.bus = bus
        self.unit = unit
        self.steps = StepClock()  # per-step deadlines (E366), docs/modbus.md
        self._budgets = budgets or StepBudgets()
        self._owns_bus = owns_bus
        self._staged: Component | None = None  # app component of the last staged header
        self._credentials: TesterCredentials | None = None

    @property
    def step_budgets(self) -> StepBudgets:
        return self._budgets

    @property
    def address(self) -> str:
        return f"modbus:{self.bus.settings.port}@{self.bus.settings.rate}/unit {self.unit}"

    # ------------------------------------------------------------------ helpers

    def _input(self, address: int, count: int) -> list[int]:
        return self.bus.read_input(self.unit, address, count, before=self.steps.check)

    def _upload(self, data: bytes) -> None:
        regs = codec.bytes_to_registers(data)
        if len(regs) > HOLDING.UPLOAD_END - HOLDING.UPLOAD:
            raise ModbusCommandRefusedError(
                f"unit {self.unit}: {len(data)} bytes do not fit the 40 KiB upload buffer"
            )
        self.bus.write(self.unit, HOLDING.UPLOAD, regs, before=self.steps.check)
        self.bus.write(
            self.unit, HOLDING.UPLOAD_LENGTH, codec.split_u32(len(data)), before=self.steps.check
        )

    def _read_result(self) -> tuple[int, str]:
        regs = self._input(INPUT.LAST_RESULT, 1)
        text = codec.registers_to_ascii(self._input(INPUT.LAST_MESSAGE, 64))
        return regs[0], text

    def command(self, command: Command, arg: int = 0) -> None:
        """Run one command; raises the matching error when the device refuses it.

        The BMS ends an authentication when it reboots, after an idle time-out and
        on a new AUTH_CHALLENGE (docs/modbus.md): a command that needs one
        authenticates again first with the credentials last given to
        :meth:`authenticate`.
        """
        name = COMMAND_NAMES[command]
        auth_state, _, seq_before = self._input(INPUT.AUTH_STATE, 3)
        if (
            command in COMMANDS_NEEDING_AUTH
            and auth_state != AuthState.AUTHENTICATED
            and self._credentials is not None
        ):
            log.info("unit %d: authentication ended on the BMS; authenticating again", self.unit)
            self.authenticate(self._credentials)
            seq_before = self._input(INPUT.COMMAND_SEQ, 1)[0]
        try:
            self.bus.write(
                self.unit, HOLDING.COMMAND_ARG, [arg, int(command)], before=self.steps.check
            )
        except ModbusExceptionResponseError:
            self._raise_refusal(command)
        except (ModbusNoReplyError, ModbusFrameError):
            # The reply (or the request) was lost: poll the command counter, never repeat.
            self._await_command(command, seq_before)
        log.debug("unit %d: %s done", self.unit, name)

    def _await_command(self, command: Command, seq_before: int) -> None:
        deadline = time.monotonic() + self.bus.settings.command_timeout_s
        while time.monotonic() < deadline:
            try:
                seq = self._input(INPUT.COMMAND_SEQ, 1)[0]
            except (ModbusNoReplyError, ModbusFrameError):
                continue
            if seq == seq_before:
                # Never executed: the request itself was lost; send it once more.
                self.bus.write(
                    self.unit, HOLDING.COMMAND_ARG, [0, int(command)], before=self.steps.check
                )
                return
            result, _ = self._read_result()
            if result:
                self._raise_refusal(command)
            return
        raise ModbusBusyError(
            f"unit {self.unit}: no answer to {COMMAND_NAMES[command]} within "
            f"{self.bus.settings.command_timeout_s} s"
        )

    def _raise_refusal(self, command: Command) -> None:
        result, text = self._read_result()
        device_code = f"BMSFW-E{result:03d}" if result else ""
        message = f"unit {self.unit}: {COMMAND_NAMES[command]} refused"
        if device_code:
            message += f" ({device_code})"
        if text:
            message += f": {text}"
        from bmsfw.protocol.device_errors import NotConfirmableError, RollbackBlockedError

        error_class: type[BmsfwError] | None = {
            Command.PREPARE: DeviceHeaderRejectedError,
            Command.VERIFY: DeviceVerifyFailedError,
            Command.ACTIVATE: DeviceActivateFailedError,
            Command.CONFIRM: NotConfirmableError,
            Command.ROLLBACK: RollbackBlockedError,
        }.get(command)
        if error_class is not None:
            raise error_class(message)
        raise ModbusCommandRefusedError(message, device_code=device_code, command=command.name)

    def _decode(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run a decoder: a value outside physics is E365, any other refusal E381."""
        return decoded(f"unit {self.unit}: {what}", fn, ModbusInvalidResponseError)

    def _read_document(self, doc: int) -> bytes:
        self.bus.write(self.unit, HOLDING.DOC_SELECT, [doc], before=self.steps.check)
        length = codec.join_u32(self._input(INPUT.DOC_LENGTH, 2))
        window = 2 * INPUT.DOC_DATA_REGISTERS
        if length > window:
            raise ModbusInvalidResponseError(
                f"unit {self.unit}: document {doc} of {length} bytes does not fit its "
                f"{window}-byte window"
            )
        regs = self._input(INPUT.DOC_DATA, (length + 1) // 2)
        return codec.registers_to_bytes(regs)[:length]

    # ------------------------------------------------------------------ BmsSession

    @session_step("identify", "identify_s")
    def identify(self) -> DeviceIdentity:
        info = self.bus.read_device_information(self.unit, before=self.steps.check)

        def text(key: str) -> str:
            raw = info.get(IDENTITY_OBJECTS[key], b"")
            return self._decode(f"identity object {key}", lambda: device_text(raw, key))

        layout = text("flash_layout")
        map_version = text("map_version")
        if map_version and map_version != str(MAP_VERSION):
            raise ModbusMapVersionError(
                f"unit {self.unit} publishes register map version {map_version}, "
                f"this client speaks {MAP_VERSION}"
            )
        return DeviceIdentity(
            vendor=text("vendor"),
            model=text("model") or text("product_code"),
            hw_revision=text("hw_revision"),
            serial=text("serial"),
            bootloader_version=text("bootloader_version"),
            app_version=text("app_version") or text("revision"),
            security_counter=self._decode(
                "identity object security_counter",
                lambda: counter_value(text("security_counter") or "0"),
            ),
            active_bank=text("active_bank"),
            address=self.address,
            flash_layout=self._decode(
                "identity object flash_layout",
                lambda: flash_layout_text(layout, "flash_layout") if layout else None,
            ),
            image_key_hashes=self._read_image_keys(),
        )

    def _read_image_keys(self) -> tuple[str, ...]:
        """Input registers ``image_key_count`` / ``image_key_hashes``; 0 keys: not reported.

        A BMS whose map lacks them answers an exception: it reports none either, and
        only its bootloader checks the image key (as before the registers existed).
        """
        count = INPUT.IMAGE_KEY_HASHES_END - INPUT.IMAGE_KEY_COUNT
        try:
            regs = self._input(INPUT.IMAGE_KEY_COUNT, count)
        except ModbusExceptionResponseError:
            return ()
        return self._decode("image keys", lambda: codec.decode_image_keys(regs))

    @session_step("read telemetry", "read_s")
    def read_telemetry(self) -> Telemetry:
        start, end = codec.TELEMETRY_BLOCK
        regs = self._input(start, end - start)
        if regs[INPUT.MAP_VERSION] != MAP_VERSION:
            raise ModbusMapVersionError(
                f"unit {self.unit} publishes register map version {regs[0]}, "
                f"this client speaks {MAP_VERSION}"
            )
        return self._decode("telemetry", lambda: codec.decode_telemetry(regs))

    @session_step("read boot status", "read_s")
    def read_boot_status(self) -> BootStatus:
        return codec.decode_boot_status(
            self._input(INPUT.RUN_STATE, INPUT.BOOT_BLOCK_END - INPUT.RUN_STATE)
        )

    @session_step("read image digest", "read_s")
    def read_image_digest(self) -> bytes:
        """SHA-256 of the image in the active bank (input registers ``image_sha256``)."""
        regs = self._input(INPUT.IMAGE_SHA256, INPUT.IMAGE_SHA256_END - INPUT.IMAGE_SHA256)
        digest = codec.registers_to_bytes(regs)
        if not any(digest):
            raise ModbusCommandRefusedError(
                f"unit {self.unit} reports no valid image in its active bank (digest all zero)",
                command="READ_IMAGE_DIGEST",
            )
        return digest

    @session_step("link check", "read_s")
    def link_check(self, round_trips: int = 5) -> LinkQuality:
        errors = 0
        times: list[float] = []
        for _ in range(round_trips):
            started = time.perf_counter()
            try:
                ok = self._input(INPUT.MAP_VERSION, 1)[0] == MAP_VERSION
            except (ModbusNoReplyError, ModbusFrameError):
                ok = False
            if ok:
                times.append(time.perf_counter() - started)
            else:
                errors += 1
        configured = None
        settings = self.bus.settings
        if times:
            baud, gap = (
                next(c for c in CONFIG_REGISTERS if c.key == key)
                for key in ("rs485_baud", "rs485_char_timed_gap")
            )
            assert gap.address == baud.address + 1
            try:
                raw_baud, raw_gap = self.bus.read_holding(
                    self.unit, baud.address, 2, before=self.steps.check
                )
                configured = round(raw_baud * baud.scale)
                # The frame gap matters only where the two settings differ (above 19,200).
                if settings.baud_bps > 19_200 and bool(raw_gap) != (settings.frame_gap == "chars"):
                    configured = None
            except BmsfwError:
                errors += 1
        return LinkQuality(
            echo_ok=bool(times) and errors == 0,
            round_trips=round_trips,
            errors=errors,
            rate=settings.rate,
            rate_matches=configured == settings.baud_bps,
            round_trip_ms=1000 * sum(times) / len(times) if times else 0.0,
        )

    @session_step("read configuration", "config_s")
    def read_config(self) -> ConfigSnapshot:
        raw = self._read_document(DOC_CONFIG)
        return self._decode("configuration", lambda: decode_config_document(raw))

    @session_step("write configuration", "config_s")
    def write_config(self, snapshot: ConfigSnapshot) -> None:
        doc = {
            "schema_version": snapshot.schema_version,
            "config": dict(snapshot.config),
            "calibration": dict(snapshot.calibration),
            "checksum": snapshot.checksum,
        }
        self._upload(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        self.command(Command.WRITE_CONFIG)

    @session_step("authenticate", "authenticate_s")
    def authenticate(self, credentials: TesterCredentials) -> None:
        # The same certificate check and proof of possession as UDS 0x29 on CAN
        # (docs/uds.md): DER chain leaf first, signature over the device challenge.
        from bmsfw.protocol.uds._auth import chain_pem_to_der, sign_challenge

        self.command(Command.AUTH_CHALLENGE)
        length = self._input(INPUT.CHALLENGE_LENGTH, 1)[0]
        challenge = codec.registers_to_bytes(self._input(INPUT.CHALLENGE, 32))[:length]
        try:
            chain_der = chain_pem_to_der(credentials.certificate_chain_pem)
            signature = sign_challenge(
                credentials.private_key_pem, challenge, credentials.passphrase
            )
        except ValueError as exc:
            raise ModbusCommandRefusedError(
                f"tester credentials unusable: {exc}", command="AUTH_PROVE"
            ) from exc
        self._upload(codec.pack_auth_proof(chain_der, signature))
        self.command(Command.AUTH_PROVE)
        self._credentials = credentials

    @property
    def staged_component(self) -> Component | None:
        """The app component of the header last staged with :meth:`prepare`."""
        return self._staged

    @session_step("stage release header", "prepare_s")
    def prepare(
        self, header: bytes, *, channel: Channel = "wired", downgrade_authorised: bool = False
    ) -> TransferState:
        self._staged = None
        self._upload(header)
        self.command(
            Command.PREPARE, staging_flags(channel, downgrade_authorised=downgrade_authorised)
        )
        self._staged = _app_component(header)
        return self.transfer_state()

    def transfer_state(self) -> TransferState:
        regs = self._input(INPUT.XFER_STATE, INPUT.COMMAND_SEQ + 1 - INPUT.XFER_STATE)

        def at(addr: int, n: int = 1) -> list[int]:
            return regs[addr - INPUT.XFER_STATE : addr - INPUT.XFER_STATE + n]

        total = codec.join_u32(at(INPUT.TOTAL_SIZE, 2))
        block_size = at(INPUT.BLOCK_SIZE)[0] or 1
        missing = self.missing_blocks(at(INPUT.BLOCK_COUNT)[0], at(INPUT.MISSING_COUNT)[0])
        ranges: list[tuple[int, int]] = []
        for block in missing:
            offset = block * block_size
            length = min(block_size, total - offset)
            if ranges and ranges[-1][0] + ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
            else:
                ranges.append((offset, length))
        return TransferState(
            total_size=total,
            contiguous_bytes=codec.join_u32(at(INPUT.CONTIGUOUS_BYTES, 2)),
            erased=bool(at(INPUT.ERASED)[0]),
            missing_ranges=tuple(ranges),
        )

    def missing_blocks(self, block_count: int, missing_count: int | None = None) -> list[int]:
        """Block indices the device has not received (reads only the bitmap words needed)."""
        if block_count == 0 or missing_count == 0:
            return []
        regs = self._input(INPUT.MISSING_BITMAP, (block_count + 15) // 16)
        bits = codec.bitmap_from_registers(regs, block_count)
        return [i for i, bit in enumerate(bits) if bit]

    def block_crcs(self, block_count: int) -> list[int]:
        """CRC-32 of each transfer block as the BMS holds it (two registers per block)."""
        regs = self._input(INPUT.BLOCK_CRC, 2 * block_count)
        return [codec.join_u32(regs[i : i + 2]) for i in range(0, len(regs), 2)]

    @session_step("erase", "erase_s")
    def erase(self) -> None:
        self.command(Command.ERASE)

    def write_range(self, image: bytes, start: int, end: int) -> Iterator[int]:
        """Addressed window writes for ``image[start:end]``; yields the offset reached."""
        for frame in codec.window_writes(image, start, end):
            try:
                self.bus.write(self.unit, frame.address, frame.values, before=self.steps.check)
            except ModbusExceptionResponseError:
                result, text = self._read_result()
                raise ModbusCommandRefusedError(
                    f"unit {self.unit}: write at offset {frame.offset} refused"
                    f" (BMSFW-E{result:03d}): {text}",
                    device_code=f"BMSFW-E{result:03d}",
                    command="WRITE",
                ) from None
            yield frame.offset + frame.length

    def write(self, image: bytes, *, start_offset: int = 0) -> Iterator[int]:
        """Transfer ``image[start_offset:]``; yields the offset reached after each frame.

        ``image`` is the decoded image (resumable at any even offset), or the staged
        component's stored bytes when it is stored encoded and ``len(image)`` is its
        ``stored_size``: the encoding is announced first and the stream starts at 0.
        """
        component = self._staged
        stored = component is not None and codec.is_encoded(component)
        if stored and component is not None and len(image) == component.stored_size:
            if start_offset != 0:
                raise ValueError("an encoded transfer cannot resume: it starts at byte 0")
            self._announce(codec.transfer_encoding(component))
            yield from self.write_range(image, 0, len(image))
            return
        # Resume from an even offset (a register carries two bytes).
        yield from self.write_range(image, start_offset - start_offset % 2, len(image))

    def _announce(self, encoding: int) -> None:
        try:
            self.bus.write(
                self.unit, HOLDING.TRANSFER_ENCODING, [encoding], before=self.steps.check
            )
        except ModbusExceptionResponseError:
            result, text = self._read_result()
            raise ModbusCommandRefusedError(
                f"unit {self.unit}: transfer encoding 0x{encoding:02X} refused"
                f" (BMSFW-E{result:03d}): {text}",
                device_code=f"BMSFW-E{result:03d}",
                command="TRANSFER_ENCODING",
            ) from None

    @session_step("verify", "verify_s")
    def verify(self) -> None:
        self.command(Command.VERIFY)

    @session_step("activate", "activate_s")
    def activate(self) -> None:
        self.command(Command.ACTIVATE)

    @session_step("reset", "reset_s")
    def reset(self) -> None:
        self.command(Command.RESET)

    def wait_boot(self, timeout_s: float, poll_s: float = 0.05) -> BootStatus:
        with self.steps.step("wait for boot", timeout_s):
            return wait_for_application(
                self.read_boot_status,
                timeout_s=timeout_s,
                poll_s=poll_s,
                silent=(ModbusNoReplyError, ModbusFrameError),  # rebooting nodes are silent
                stop=(StepDeadlineError,),  # each poll starts before the boot deadline only
                who=f"unit {self.unit}",
            )

    @session_step("read self-test", "read_s")
    def read_self_test(self) -> SelfTestResult:
        regs = self._input(INPUT.SELFTEST_STATE, INPUT.SELFTEST_BLOCK_END - INPUT.SELFTEST_STATE)
        state = regs[0]
        version = codec.registers_to_ascii(regs[INPUT.SELFTEST_VERSION - INPUT.SELFTEST_STATE :])
        checks: tuple[SelfTestCheck, ...] = ()
        if state in (SelfTestState.PASSED, SelfTestState.FAILED):
            raw = self._read_document(DOC_SELFTEST) or b"[]"
            checks = self._decode("self-test document", lambda: _self_test_checks(raw))
        return SelfTestResult(passed=state == SelfTestState.PASSED, checks=checks, version=version)

    @session_step("confirm", "confirm_s")
    def confirm(self) -> None:
        self.command(Command.CONFIRM)

    @session_step("rollback", "rollback_s")
    def rollback(self) -> None:
        self.command(Command.ROLLBACK)

    def close(self) -> None:
        if self._owns_bus:
            self.bus.close()

    def __enter__(self) -> ModbusSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_modbus_bus(
    port: str,
    baud: int = 115_200,
    parity: str = "E",
    stopbits: int = 1,
    *,
    timeout_s: float = 0.5,
    retries: int = 2,
    frame_gap: str = "spec",
) -> ModbusBus:
    """Open the master end of an RS485 string (or a USB virtual COM port)."""
    return ModbusBus(
        SerialSettings(
            port=port,
            baud_bps=baud,
            parity=parity,
            stopbits=stopbits,
            timeout_s=timeout_s,
            retries=retries,
            frame_gap=frame_gap,
        )
    )


def open_modbus_session(
    port: str,
    unit: int = 1,
    baud: int = 115_200,
    parity: str = "E",
    stopbits: int = 1,
    *,
    timeout_s: float = 0.5,
    retries: int = 2,
    budgets: StepBudgets | None = None,
) -> ModbusSession:
    """A ``BmsSession`` to one unit; closing the session closes the port."""
    if not 1 <= unit <= 247:
        raise ModbusUnitIdError(f"unit id {unit} is outside 1..247")
    bus = open_modbus_bus(port, baud, parity, stopbits, timeout_s=timeout_s, retries=retries)
    return ModbusSession(bus, unit, owns_bus=True, budgets=budgets)
