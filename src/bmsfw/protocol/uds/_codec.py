"""The UDS vocabulary of a bmsfw BMS: identifiers, codes and record layouts.

Pure and I/O-free: both the device's server and the tester's client encode and
decode through these functions, and docs/uds.md documents the same tables so a
BMS firmware team (or any plain UDS client) can implement them. All multi-byte
integers are big-endian, as everywhere in ISO 14229-1. Strings are UTF-8 with a
one-byte length prefix (``str8``) inside records, or the whole payload for the
standard identification DIDs.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from bmsfw.package import Component
from bmsfw.package._encoding import dfi_for
from bmsfw.protocol.bounds import (
    decode_config_document,
    flash_layout,
    image_key_hashes,
    physical_telemetry,
)
from bmsfw.protocol.session import (
    BootStatus,
    ConfigSnapshot,
    FlashLayout,
    ImageState,
    RunState,
    SelfTestCheck,
    SelfTestResult,
    Telemetry,
    TransferState,
)

__all__ = [
    "DID",
    "DTC_STATUS_MASK",
    "NRC",
    "ROUTINE",
    "SID",
    "Session",
    "SessionTiming",
    "config_checksum",
    "decode_boot_status",
    "decode_config",
    "decode_der_chain",
    "decode_flash_layout",
    "decode_image_key_hashes",
    "decode_self_test",
    "decode_telemetry_parts",
    "decode_transfer_state",
    "encode_boot_status",
    "encode_config",
    "encode_flash_layout",
    "encode_image_key_hashes",
    "encode_self_test",
    "encode_transfer_state",
    "is_encoded",
    "nrc_name",
    "seed_key",
    "transfer_dfi",
]


class SID(IntEnum):
    DIAGNOSTIC_SESSION_CONTROL = 0x10
    ECU_RESET = 0x11
    CLEAR_DIAGNOSTIC_INFORMATION = 0x14
    READ_DTC_INFORMATION = 0x19
    READ_DATA_BY_IDENTIFIER = 0x22
    SECURITY_ACCESS = 0x27
    AUTHENTICATION = 0x29
    WRITE_DATA_BY_IDENTIFIER = 0x2E
    ROUTINE_CONTROL = 0x31
    REQUEST_DOWNLOAD = 0x34
    TRANSFER_DATA = 0x36
    REQUEST_TRANSFER_EXIT = 0x37
    TESTER_PRESENT = 0x3E
    NEGATIVE_RESPONSE = 0x7F


class Session(IntEnum):
    DEFAULT = 0x01
    PROGRAMMING = 0x02
    EXTENDED = 0x03


class NRC(IntEnum):
    GENERAL_REJECT = 0x10
    SERVICE_NOT_SUPPORTED = 0x11
    SUBFUNCTION_NOT_SUPPORTED = 0x12
    INCORRECT_MESSAGE_LENGTH_OR_FORMAT = 0x13
    BUSY_REPEAT_REQUEST = 0x21
    CONDITIONS_NOT_CORRECT = 0x22
    REQUEST_SEQUENCE_ERROR = 0x24
    REQUEST_OUT_OF_RANGE = 0x31
    SECURITY_ACCESS_DENIED = 0x33
    AUTHENTICATION_REQUIRED = 0x34
    INVALID_KEY = 0x35
    EXCEEDED_NUMBER_OF_ATTEMPTS = 0x36
    REQUIRED_TIME_DELAY_NOT_EXPIRED = 0x37
    # ISO 14229-1:2020 table A.1 (0x29 Authentication)
    CERTIFICATE_VERIFICATION_FAILED_INVALID_TIME_PERIOD = 0x50
    CERTIFICATE_VERIFICATION_FAILED_INVALID_SIGNATURE = 0x51
    CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST = 0x52
    CERTIFICATE_VERIFICATION_FAILED_INVALID_TYPE = 0x53
    CERTIFICATE_VERIFICATION_FAILED_INVALID_FORMAT = 0x54
    CERTIFICATE_VERIFICATION_FAILED_INVALID_CONTENT = 0x55
    CERTIFICATE_VERIFICATION_FAILED_INVALID_SCOPE = 0x56
    CERTIFICATE_VERIFICATION_FAILED_INVALID_CERTIFICATE = 0x57
    OWNERSHIP_VERIFICATION_FAILED = 0x58
    CHALLENGE_CALCULATION_FAILED = 0x59
    SETTING_ACCESS_RIGHTS_FAILED = 0x5A
    SESSION_KEY_CREATION_DERIVATION_FAILED = 0x5B
    CONFIGURATION_DATA_USAGE_FAILED = 0x5C
    DEAUTHENTICATION_FAILED = 0x5D
    UPLOAD_DOWNLOAD_NOT_ACCEPTED = 0x70
    TRANSFER_DATA_SUSPENDED = 0x71
    GENERAL_PROGRAMMING_FAILURE = 0x72
    WRONG_BLOCK_SEQUENCE_COUNTER = 0x73
    RESPONSE_PENDING = 0x78
    SUBFUNCTION_NOT_SUPPORTED_IN_ACTIVE_SESSION = 0x7E
    SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION = 0x7F


#: dataFormatIdentifier low nibble (encryptingMethod) per the manifest's ``encryption``.
ENCRYPTION_METHODS = {"none": 0x0, "ecies-x25519": 0x1, "ecies-p256": 0x2}
#: compressionMethod bit that marks a detools delta (low 3 bits: the patch's codec).
DFI_DELTA_FLAG = 0x8


def is_encoded(component: Component) -> bool:
    """Whether the component's stored bytes differ from its image (compressed, delta, encrypted)."""
    return component.encoding != "raw" or component.is_delta or component.encryption != "none"


def transfer_dfi(component: Component) -> int:
    """RequestDownload's dataFormatIdentifier for sending ``component``'s *stored* bytes.

    High nibble (compressionMethod): the codec's number (raw 0, zstd 1, lz4 2,
    heatshrink 3, lzma2thumb 4; ``bmsfw.package._encoding.dfi_for``), plus 0x8 for a delta. Low
    nibble (encryptingMethod): 0 clear, 1 ECIES-X25519, 2 ECIES-P256. ``0x00`` is
    the decoded image itself.
    """
    codec = dfi_for(component.encoding)
    if codec >= DFI_DELTA_FLAG:
        raise ValueError(f"codec number {codec} collides with the delta flag")
    compression = codec | (DFI_DELTA_FLAG if component.is_delta else 0)
    try:
        encryption = ENCRYPTION_METHODS[component.encryption]
    except KeyError:
        raise ValueError(f"no encryptingMethod for {component.encryption!r}") from None
    return compression << 4 | encryption


def nrc_name(nrc: int) -> str:
    """The ISO 14229-1 name of a negative response code, in camelCase as the standard writes it."""
    try:
        words = NRC(nrc).name.lower().split("_")
    except ValueError:
        return "unknown"
    return words[0] + "".join(w.capitalize() for w in words[1:])


class DID(IntEnum):
    """Data identifiers. 0xF1xx are ISO 14229-1 Annex C; the rest are manufacturer range."""

    BOOT_SOFTWARE_ID = 0xF180
    ACTIVE_SESSION = 0xF186
    SPARE_PART_NUMBER = 0xF187  # the product model
    ECU_SOFTWARE_NUMBER = 0xF188  # the running application version
    SOFTWARE_VERSION = 0xF189  # the running application version
    SUPPLIER_ID = 0xF18A  # the vendor
    SERIAL_NUMBER = 0xF18C
    HARDWARE_NUMBER = 0xF191  # the product model
    HARDWARE_VERSION = 0xF193  # hardware revision
    SUPPLIER_SOFTWARE_VERSION = 0xF195  # bootloader version
    SYSTEM_NAME = 0xF197
    # manufacturer range 0x0100-0xA5FF
    SECURITY_COUNTER = 0x0100  # uint32
    ACTIVE_BANK = 0x0101  # ASCII "A" or "B"
    ACTIVE_IMAGE_SHA256 = 0x0102  # 32 bytes: SHA-256 of the active image (delta base check)
    IMAGE_KEY_HASHES = 0x0103  # uint8 n, n x 32 bytes: SHA-256 of each fused image key
    FLASH_LAYOUT = 0x0104  # bank size u32, sector size u32, number of banks u8
    STATE_OF_CHARGE = 0x0110  # uint16, 0.01 %
    PACK_VOLTAGE = 0x0111  # uint32, mV
    PACK_CURRENT = 0x0112  # int32, mA, + = charging
    SUPPLY_VOLTAGE = 0x0113  # uint16, mV
    CELL_VOLTAGES = 0x0114  # uint8 n, n x uint16 0.1 mV
    TEMPERATURES = 0x0115  # uint8 n, n x int16 0.1 degC
    ACTIVE_FAULTS = 0x0116  # uint8 n, n x str8
    CONTACTORS = 0x0117  # uint8, 1 = closed
    BOOT_STATUS = 0x0120  # record, see encode_boot_status
    SELF_TEST_RESULT = 0x0130  # record, see encode_self_test
    TRANSFER_STATE = 0x0140  # record, see encode_transfer_state
    CONFIGURATION = 0x0150  # canonical JSON (read / write)
    NODE_ADDRESS = 0x0160  # uint8 node number, uint32 request id, uint32 response id


class ROUTINE(IntEnum):
    """Routine identifiers (RoutineControl 0x31, startRoutine 0x01)."""

    ERASE_MEMORY = 0xFF00  # ISO 14229-1 Annex F: erase the inactive bank
    CHECK_PROGRAMMING_DEPENDENCIES = 0xFF01  # ISO 14229-1 Annex F: verify the image
    CHECK_PRECONDITIONS = 0x0200  # manufacturer: safe to program?
    STAGE_RELEASE_HEADER = 0x0201  # manufacturer: option record = channel(1) + header
    ACTIVATE = 0x0202  # manufacturer: mark the verified bank for a test boot
    CONFIRM = 0x0203  # manufacturer: make the running test image permanent
    ROLLBACK = 0x0204  # manufacturer: revert to the previous bank
    SELF_TEST = 0x0205  # manufacturer: run the self-test now


#: routine status byte (first byte of routineStatusRecord) for verify/preconditions
ROUTINE_OK = 0x00
ROUTINE_FAILED = 0x01

#: ECUReset sub-functions used
HARD_RESET = 0x01

#: ReadDTCInformation reportDTCByStatusMask; status bits we set: testFailed | confirmedDTC
DTC_STATUS_MASK = 0x09

#: SecurityAccess levels (requestSeed = odd, sendKey = odd + 1)
SECURITY_LEVEL_PROGRAMMING = 0x11

#: Authentication 0x29 authenticationReturnParameter values (ISO 14229-1:2020)
AUTH_REQUEST_ACCEPTED = 0x00
AUTH_GENERAL_REJECT = 0x01
AUTH_CONFIGURATION_APCE = 0x02
AUTH_DEAUTHENTICATED = 0x10
AUTH_CERT_VERIFIED_OWNERSHIP_NEEDED = 0x11
AUTH_OWNERSHIP_VERIFIED = 0x12
AUTH_CERT_VERIFIED = 0x13


@dataclass(frozen=True)
class SessionTiming:
    """P2 / P2* as the server reports them in the DiagnosticSessionControl response."""

    p2_s: float = 0.050
    p2_star_s: float = 5.0

    def encode(self) -> bytes:
        # P2 in 1 ms units, P2* in 10 ms units (ISO 14229-1 table 29)
        return struct.pack(">HH", round(self.p2_s * 1000), round(self.p2_star_s * 100))

    @classmethod
    def decode(cls, data: bytes) -> SessionTiming:
        if len(data) < 4:
            raise ValueError(f"session parameter record needs 4 bytes, got {len(data)}")
        p2_ms, p2_star_10ms = struct.unpack(">HH", data[:4])
        return cls(p2_s=p2_ms / 1000, p2_star_s=p2_star_10ms / 100)


def seed_key(seed: bytes, secret: bytes) -> bytes:
    """The SecurityAccess key for ``seed``: first 16 bytes of HMAC-SHA256(secret, seed)."""
    import hmac

    return hmac.new(secret, seed, hashlib.sha256).digest()[:16]


# --------------------------------------------------------------------------- primitives


class _Reader:
    """Sequential reads from a record; a short record raises ValueError naming the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int, field: str) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise ValueError(f"{self._what}: record ends inside field {field!r}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def unpack(self, fmt: str, field: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), field))

    def str8(self, field: str) -> str:
        return self.take(self.u8(field), field).decode("utf-8", errors="replace")

    def done(self) -> None:
        if self._pos != len(self._data):
            raise ValueError(f"{self._what}: {len(self._data) - self._pos} trailing bytes")


def _str8(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw


# --------------------------------------------------------------------------- telemetry


def encode_u16_list(values: tuple[float, ...], scale: float, signed: bool = False) -> bytes:
    fmt = ">h" if signed else ">H"
    return bytes([len(values)]) + b"".join(struct.pack(fmt, round(v * scale)) for v in values)


def decode_u16_list(data: bytes, scale: float, signed: bool = False) -> tuple[float, ...]:
    reader = _Reader(data, "value list")
    n = reader.u8("count")
    fmt = ">h" if signed else ">H"
    values = tuple(reader.unpack(fmt, "value")[0] / scale for _ in range(n))
    reader.done()
    return values


def encode_strings(values: tuple[str, ...]) -> bytes:
    return bytes([len(values)]) + b"".join(_str8(v) for v in values)


def decode_strings(data: bytes) -> tuple[str, ...]:
    reader = _Reader(data, "string list")
    values = tuple(reader.str8("string") for _ in range(reader.u8("count")))
    reader.done()
    return values


def encode_telemetry_did(did: int, telemetry: Telemetry) -> bytes:
    """One telemetry DID's payload from a :class:`Telemetry` record."""
    if did == DID.STATE_OF_CHARGE:
        return struct.pack(">H", round(telemetry.soc_pct * 100))
    if did == DID.PACK_VOLTAGE:
        return struct.pack(">I", round(telemetry.pack_voltage_v * 1000))
    if did == DID.PACK_CURRENT:
        return struct.pack(">i", round(telemetry.pack_current_a * 1000))
    if did == DID.SUPPLY_VOLTAGE:
        return struct.pack(">H", round(telemetry.supply_voltage_v * 1000))
    if did == DID.CELL_VOLTAGES:
        return encode_u16_list(telemetry.cell_voltages_v, 10_000)
    if did == DID.TEMPERATURES:
        return encode_u16_list(telemetry.temperatures_c, 10, signed=True)
    if did == DID.ACTIVE_FAULTS:
        return encode_strings(telemetry.faults)
    if did == DID.CONTACTORS:
        return bytes([1 if telemetry.contactors_closed else 0])
    raise ValueError(f"0x{did:04X} is not a telemetry DID")


TELEMETRY_DIDS: tuple[DID, ...] = (
    DID.STATE_OF_CHARGE,
    DID.PACK_VOLTAGE,
    DID.PACK_CURRENT,
    DID.SUPPLY_VOLTAGE,
    DID.CELL_VOLTAGES,
    DID.TEMPERATURES,
    DID.ACTIVE_FAULTS,
    DID.CONTACTORS,
)


def _scalar(parts: Mapping[int, bytes], did: DID, fmt: str) -> int:
    """One fixed-width telemetry DID: exactly its width, or ValueError naming it."""
    data = parts[did]
    if len(data) != struct.calcsize(fmt):
        raise ValueError(f"DID 0x{did:04X}: {len(data)} bytes, not {struct.calcsize(fmt)}")
    value: int = struct.unpack(fmt, data)[0]
    return value


def decode_telemetry_parts(parts: Mapping[int, bytes]) -> Telemetry:
    """A :class:`Telemetry` from the payloads of every DID in ``TELEMETRY_DIDS``.

    Every DID has its exact documented width; the values must be physically possible
    (:func:`bmsfw.protocol.bounds.physical_telemetry`, raises ``ImplausibleValue``).
    """
    contactors = _scalar(parts, DID.CONTACTORS, ">B")
    if contactors > 1:
        raise ValueError(f"DID 0x{DID.CONTACTORS:04X}: contactor state {contactors}, not 0 or 1")
    return physical_telemetry(
        Telemetry(
            soc_pct=_scalar(parts, DID.STATE_OF_CHARGE, ">H") / 100,
            pack_voltage_v=_scalar(parts, DID.PACK_VOLTAGE, ">I") / 1000,
            pack_current_a=_scalar(parts, DID.PACK_CURRENT, ">i") / 1000,
            supply_voltage_v=_scalar(parts, DID.SUPPLY_VOLTAGE, ">H") / 1000,
            cell_voltages_v=decode_u16_list(parts[DID.CELL_VOLTAGES], 10_000),
            temperatures_c=decode_u16_list(parts[DID.TEMPERATURES], 10, signed=True),
            faults=decode_strings(parts[DID.ACTIVE_FAULTS]),
            contactors_closed=contactors == 1,
        )
    )


# --------------------------------------------------------------------------- boot status

_RUN_STATES: tuple[RunState, ...] = ("application", "booting", "self-test", "bootloader", "off")
_IMAGE_STATES: tuple[ImageState, ...] = ("confirmed", "test", "reverted", "none")


def encode_boot_status(status: BootStatus) -> bytes:
    """run_state u8, image_state u8, active bank str8, version str8, boot_count u32,
    security_counter u32, last revert reason str8."""
    return (
        bytes([_RUN_STATES.index(status.run_state), _IMAGE_STATES.index(status.image_state)])
        + _str8(status.active_bank)
        + _str8(status.running_version)
        + struct.pack(">II", status.boot_count, status.security_counter)
        + _str8(status.last_revert_reason)
    )


def decode_boot_status(data: bytes) -> BootStatus:
    reader = _Reader(data, "boot status DID 0x0120")
    run = reader.u8("run_state")
    image = reader.u8("image_state")
    if run >= len(_RUN_STATES) or image >= len(_IMAGE_STATES):
        raise ValueError(f"boot status: unknown run state {run} or image state {image}")
    bank = reader.str8("active_bank")
    version = reader.str8("running_version")
    boot_count, counter = reader.unpack(">II", "counters")
    reason = reader.str8("last_revert_reason")
    reader.done()
    return BootStatus(
        run_state=_RUN_STATES[run],
        active_bank=bank,
        running_version=version,
        image_state=_IMAGE_STATES[image],
        boot_count=boot_count,
        security_counter=counter,
        last_revert_reason=reason,
    )


# --------------------------------------------------------------------------- self-test


def encode_self_test(result: SelfTestResult) -> bytes:
    """passed u8, version str8, n u8, n x (passed u8, name, value, limit, detail as str8)."""
    out = bytearray([1 if result.passed else 0])
    out += _str8(result.version)
    out.append(len(result.checks))
    for check in result.checks:
        out.append(1 if check.passed else 0)
        for text in (check.name, check.value, check.limit, check.detail):
            out += _str8(text)
    return bytes(out)


def decode_self_test(data: bytes) -> SelfTestResult:
    reader = _Reader(data, "self-test DID 0x0130")
    passed = reader.u8("passed") == 1
    version = reader.str8("version")
    checks = []
    for _ in range(reader.u8("count")):
        check_passed = reader.u8("check.passed") == 1
        name, value, limit, detail = (reader.str8(f) for f in ("name", "value", "limit", "detail"))
        checks.append(SelfTestCheck(name, check_passed, value, limit, detail))
    reader.done()
    return SelfTestResult(passed=passed, checks=tuple(checks), version=version)


# --------------------------------------------------------------------------- image keys


def encode_image_key_hashes(hashes: tuple[str, ...]) -> bytes:
    """DID 0x0103: uint8 n, then n SHA-256 values (32 bytes each)."""
    return bytes([len(hashes)]) + b"".join(bytes.fromhex(h) for h in hashes)


def decode_image_key_hashes(data: bytes) -> tuple[str, ...]:
    what = "image keys DID 0x0103"
    if not data or len(data) != 1 + 32 * data[0]:
        raise ValueError(f"{what}: {len(data)} bytes do not hold the count they announce")
    return image_key_hashes([data[1 + 32 * i : 33 + 32 * i] for i in range(data[0])], what)


# --------------------------------------------------------------------------- flash layout

_FLASH_LAYOUT = struct.Struct(">IIB")


def encode_flash_layout(layout: FlashLayout) -> bytes:
    """DID 0x0104: bank size u32, sector size u32 (bytes), number of banks u8."""
    return _FLASH_LAYOUT.pack(layout.bank_size_bytes, layout.sector_size_bytes, layout.banks)


def decode_flash_layout(data: bytes) -> FlashLayout:
    what = "flash layout DID 0x0104"
    if len(data) != _FLASH_LAYOUT.size:
        raise ValueError(f"{what}: {len(data)} bytes, not {_FLASH_LAYOUT.size}")
    bank_size, sector_size, banks = _FLASH_LAYOUT.unpack(data)
    return flash_layout(bank_size, sector_size, banks, what)


# --------------------------------------------------------------------------- transfer state


def encode_transfer_state(state: TransferState) -> bytes:
    """total u32, contiguous u32, erased u8, n u16, n x (offset u32, length u32)."""
    ranges = state.missing_ranges[:1000]  # bounded: the list is a hint, contiguous is the truth
    return struct.pack(
        ">IIBH", state.total_size, state.contiguous_bytes, state.erased, len(ranges)
    ) + b"".join(struct.pack(">II", off, length) for off, length in ranges)


def decode_transfer_state(data: bytes) -> TransferState:
    reader = _Reader(data, "transfer state DID 0x0140")
    total, contiguous, erased, n = reader.unpack(">IIBH", "header")
    ranges = tuple(reader.unpack(">II", "range") for _ in range(n))
    reader.done()
    if contiguous > total or any(o + ln > total for o, ln in ranges):
        raise ValueError(
            f"transfer state DID 0x0140: {contiguous} contiguous bytes or a missing range "
            f"beyond the {total} bytes staged"
        )
    return TransferState(
        total_size=total,
        contiguous_bytes=contiguous,
        erased=bool(erased),
        missing_ranges=tuple((int(o), int(ln)) for o, ln in ranges),
    )


# --------------------------------------------------------------------------- configuration


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def config_checksum(config: Mapping[str, Any], calibration: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of ``{"calibration": ..., "config": ...}``."""
    return hashlib.sha256(
        _canonical({"config": dict(config), "calibration": dict(calibration)})
    ).hexdigest()


def encode_config(snapshot: ConfigSnapshot) -> bytes:
    """Canonical JSON: {"calibration", "checksum", "config", "schema_version"}."""
    return _canonical(
        {
            "schema_version": snapshot.schema_version,
            "config": dict(snapshot.config),
            "calibration": dict(snapshot.calibration),
            "checksum": snapshot.checksum,
        }
    )


def decode_config(data: bytes) -> ConfigSnapshot:
    """The configuration DID: bounded, finite JSON (:func:`bmsfw.protocol.bounds.strict_json`)."""
    return decode_config_document(data, "configuration DID 0x0150")


# --------------------------------------------------------------------------- certificates


def decode_der_chain(data: bytes) -> list[bytes]:
    """Split concatenated DER certificates (leaf first) as sent in 0x29 certificateClient."""
    certs: list[bytes] = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise ValueError(f"certificate chain: no DER SEQUENCE at byte {pos}")
        first = data[pos + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(data):
                raise ValueError(f"certificate chain: bad DER length at byte {pos}")
            length = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
            header = 2 + n
        end = pos + header + length
        if end > len(data):
            raise ValueError(f"certificate chain: certificate at byte {pos} is truncated")
        certs.append(data[pos:end])
        pos = end
    if not certs:
        raise ValueError("certificate chain is empty")
    return certs
