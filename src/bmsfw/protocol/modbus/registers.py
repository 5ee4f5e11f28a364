"""The bmsfw Modbus RTU register map (version 1): one table shared by client, server and docs.

Conventions (documented in docs/modbus.md, checked against this table by a test):

* Addresses are 0-based PDU addresses (what goes on the wire), not the
  "30001/40001" reference numbers some tools show.
* 32-bit values take two registers, high word first (big-endian, as Modbus
  orders bytes inside a register).
* Strings are ASCII, two characters per register (high byte first), padded
  with NUL.
* Scaled values: ``physical = raw * scale``; signed types are two's complement.

Input registers (function 0x04) carry telemetry, boot status, self-test and
transfer status; holding registers (0x03 / 0x06 / 0x10) carry configuration,
the control block, the upload buffer and the firmware transfer window.
Identity (vendor, product code, revision, serial, versions) is served through
Read Device Identification (0x2B / 0x0E).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "COMMAND_NAMES",
    "CONFIG_REGISTERS",
    "FAULT_BITS",
    "HOLDING",
    "IDENTITY_OBJECTS",
    "INPUT",
    "MAP_VERSION",
    "MAX_READ_REGISTERS",
    "MAX_WRITE_REGISTERS",
    "REGISTER_TABLE",
    "TRANSFER_PAGE_BYTES",
    "TRANSFER_WINDOW_REGISTERS",
    "UPLOAD_BUFFER_REGISTERS",
    "AuthState",
    "Command",
    "ConfigRegister",
    "Register",
    "RunStateCode",
    "SelfTestState",
    "TransferStateCode",
]

MAP_VERSION = 1

# Modbus over serial line V1.02: an RTU ADU is at most 256 bytes, which caps a
# read at 125 registers and a write multiple (0x10) at 123 registers.
MAX_READ_REGISTERS = 125
MAX_WRITE_REGISTERS = 123

Kind = Literal["input", "holding"]
Access = Literal["R", "RW", "W"]
ValueType = Literal["u16", "s16", "u32", "s32", "ascii", "bytes", "enum", "bitmask"]


@dataclass(frozen=True)
class Register:
    """One named register (or run of registers) of the map."""

    name: str
    kind: Kind
    address: int
    count: int
    type: ValueType
    unit: str
    scale: float
    access: Access
    description: str

    @property
    def end(self) -> int:
        return self.address + self.count


class INPUT:
    """Input register addresses (function 0x04, read only)."""

    MAP_VERSION = 0x0000
    SOC = 0x0001
    PACK_VOLTAGE = 0x0002  # u32
    PACK_CURRENT = 0x0004  # s32
    SUPPLY_VOLTAGE = 0x0006
    CONTACTORS = 0x0007
    FAULTS = 0x0008  # u32
    CELL_COUNT = 0x000A
    TEMP_COUNT = 0x000B
    CELL_VOLTAGES = 0x0010
    CELL_VOLTAGES_MAX = 64
    TEMPERATURES = 0x0050
    TEMPERATURES_MAX = 16

    RUN_STATE = 0x0100
    ACTIVE_BANK = 0x0101
    IMAGE_STATE = 0x0102
    BOOT_COUNT = 0x0103
    SECURITY_COUNTER = 0x0104  # u32
    RUNNING_VERSION = 0x0106  # 16 registers ASCII
    REVERT_REASON = 0x0116  # 32 registers ASCII
    BOOT_BLOCK_END = 0x0136
    IMAGE_SHA256 = 0x0140  # 16 registers: SHA-256 of the active image (all zero: none valid)
    IMAGE_SHA256_END = 0x0150
    IMAGE_KEY_COUNT = 0x0150  # fused image-verification keys reported (0: not reported)
    IMAGE_KEY_HASHES = 0x0151  # 16 registers per key: SHA-256 of each, up to 4 keys
    IMAGE_KEY_HASHES_END = 0x0191

    SELFTEST_STATE = 0x0200
    SELFTEST_CHECKS = 0x0201
    SELFTEST_FAILED_MASK = 0x0202  # u32
    SELFTEST_VERSION = 0x0204  # 16 registers ASCII
    SELFTEST_BLOCK_END = 0x0214

    XFER_STATE = 0x0300
    LAST_RESULT = 0x0301
    TOTAL_SIZE = 0x0302  # u32
    CONTIGUOUS_BYTES = 0x0304  # u32
    BLOCK_SIZE = 0x0306
    BLOCK_COUNT = 0x0307
    MISSING_COUNT = 0x0308
    AUTH_STATE = 0x0309
    ERASED = 0x030A
    COMMAND_SEQ = 0x030B
    STREAM_OFFSET = 0x030C  # u32: stored bytes taken by the current encoded stream
    STREAM_ENCODING = 0x030E  # the transfer encoding in effect (0 = decoded image)
    LAST_MESSAGE = 0x0310  # 64 registers ASCII
    XFER_BLOCK_END = 0x0350

    CHALLENGE = 0x0400  # 32 registers = 64 bytes
    CHALLENGE_LENGTH = 0x0420

    MISSING_BITMAP = 0x0500  # 1024 registers: bit i of the map = block i missing
    MISSING_BITMAP_REGISTERS = 1024
    BLOCK_CRC = 0x0A00  # 4096 registers: CRC-32 of each block as written, 2 per block
    BLOCK_CRC_REGISTERS = 4096

    DOC_LENGTH = 0x2000  # u32, length of the selected document in bytes
    DOC_DATA = 0x2002  # document bytes, 2 per register
    DOC_DATA_REGISTERS = 0x4000


class HOLDING:
    """Holding register addresses (functions 0x03, 0x06, 0x10)."""

    CONFIG = 0x0000  # numeric configuration, see CONFIG_REGISTERS
    CONFIG_END = 0x0100

    DOC_SELECT = 0x0F00
    COMMAND_ARG = 0x1000
    COMMAND = 0x1001
    UPLOAD_LENGTH = 0x1002  # u32
    WINDOW_PAGE = 0x1004
    TRANSFER_ENCODING = 0x1005  # what the window carries: 0 image, else stored bytes (DFI)

    UPLOAD = 0x2000  # upload buffer: header, certificate chain, signature, config document
    UPLOAD_END = 0x7000

    TRANSFER_WINDOW = 0x8000  # 64 KiB window into the inactive bank, see WINDOW_PAGE
    TRANSFER_WINDOW_END = 0x10000


UPLOAD_BUFFER_REGISTERS = HOLDING.UPLOAD_END - HOLDING.UPLOAD
TRANSFER_WINDOW_REGISTERS = HOLDING.TRANSFER_WINDOW_END - HOLDING.TRANSFER_WINDOW
TRANSFER_PAGE_BYTES = TRANSFER_WINDOW_REGISTERS * 2


class Command(enum.IntEnum):
    """Values written to ``HOLDING.COMMAND``; the write runs the command."""

    PREPARE = 1  # upload buffer = release header; arg: staging flags (bit 0 OTA, bit 1 downgrade)
    ERASE = 2
    VERIFY = 3
    ACTIVATE = 4
    RESET = 5
    CONFIRM = 6
    ROLLBACK = 7
    AUTH_CHALLENGE = 8  # device draws a fresh challenge into INPUT.CHALLENGE
    AUTH_PROVE = 9  # upload buffer = chain/signature record (see codec.pack_auth_proof)
    WRITE_CONFIG = 10  # upload buffer = config document (canonical JSON)
    ABORT = 11  # forget the staged transfer (keeps the running image)


COMMAND_NAMES = {c.value: c.name.lower() for c in Command}

#: Commands that change flash or configuration: they need an authenticated tester.
COMMANDS_NEEDING_AUTH = frozenset(
    {
        Command.PREPARE,
        Command.ERASE,
        Command.VERIFY,
        Command.ACTIVATE,
        Command.CONFIRM,
        Command.ROLLBACK,
        Command.WRITE_CONFIG,
    }
)

#: An authentication ends after this long without a request to the unit (or a broadcast).
AUTH_IDLE_TIMEOUT_S = 60.0


class RunStateCode(enum.IntEnum):
    OFF = 0
    BOOTLOADER = 1
    BOOTING = 2
    SELF_TEST = 3
    APPLICATION = 4


class TransferStateCode(enum.IntEnum):
    IDLE = 0
    PREPARED = 1
    ERASED = 2
    RECEIVING = 3
    VERIFIED = 4
    ACTIVATED = 5
    FAILED = 6


class SelfTestState(enum.IntEnum):
    NONE = 0
    RUNNING = 1
    PASSED = 2
    FAILED = 3


class AuthState(enum.IntEnum):
    NONE = 0
    CHALLENGED = 1
    AUTHENTICATED = 2


IMAGE_STATE_CODES = {"none": 0, "confirmed": 1, "test": 2, "reverted": 3}
BANK_CODES = {"A": 0, "B": 1}

# Bit positions of INPUT.FAULTS; names match the device core's fault names.
#: Bits of the ``faults`` register, by the BMS's fault names (bit 31: any other fault,
#: e.g. ``firmware_integrity``).
FAULT_BITS: dict[str, int] = {
    "cell_overvoltage": 0,
    "cell_undervoltage": 1,
    "overcurrent": 2,
    "overtemperature": 3,
    "undertemperature": 4,
    "cell_imbalance": 5,
    "insulation": 6,
    "contactor": 7,
    "communication": 8,
    "supply": 9,
    "ntc_fault": 10,
    "other": 31,
}

# Read Device Identification object ids (0x00..0x06 standard, 0x80.. vendor specific).
IDENTITY_OBJECTS: dict[str, int] = {
    "vendor": 0x00,
    "product_code": 0x01,
    "revision": 0x02,
    "vendor_url": 0x03,
    "product_name": 0x04,
    "model": 0x05,
    "user_application": 0x06,
    "serial": 0x80,
    "hw_revision": 0x81,
    "bootloader_version": 0x82,
    "app_version": 0x83,
    "security_counter": 0x84,
    "active_bank": 0x85,
    "map_version": 0x86,
    "flash_layout": 0x87,
}


@dataclass(frozen=True)
class ConfigRegister:
    """A numeric configuration value mirrored into one holding register."""

    key: str
    address: int
    type: Literal["u16", "s16"]
    unit: str
    scale: float
    description: str


# Numeric configuration a plain Modbus tool can read and write (the device
# core's DeviceConfig fields). The whole configuration and calibration also
# travel as a JSON document (document 1 / command WRITE_CONFIG).
CONFIG_REGISTERS: tuple[ConfigRegister, ...] = (
    ConfigRegister("cell_overvoltage_v", 0x0000, "u16", "V", 0.001, "cell over-voltage limit"),
    ConfigRegister("cell_undervoltage_v", 0x0001, "u16", "V", 0.001, "cell under-voltage limit"),
    ConfigRegister("overtemperature_c", 0x0002, "s16", "°C", 0.1, "over-temperature limit"),
    ConfigRegister("undertemperature_c", 0x0003, "s16", "°C", 0.1, "under-temperature limit"),
    ConfigRegister("overcurrent_a", 0x0004, "u16", "A", 0.1, "over-current limit"),
    ConfigRegister("balance_start_v", 0x0005, "u16", "V", 0.001, "balancing start voltage"),
    ConfigRegister("balance_delta_mv", 0x0006, "u16", "mV", 0.1, "balancing cell delta"),
    ConfigRegister("charge_current_limit_a", 0x0007, "u16", "A", 0.1, "charge current limit"),
    ConfigRegister("discharge_current_limit_a", 0x0008, "u16", "A", 0.1, "discharge current limit"),
    ConfigRegister("capacity_ah", 0x0009, "u16", "Ah", 0.1, "rated capacity"),
    ConfigRegister("can_bitrate_bps", 0x000A, "u16", "bit/s", 1000, "CAN bitrate"),
    ConfigRegister("rs485_unit_id", 0x000B, "u16", "", 1, "Modbus unit id on the string"),
    ConfigRegister("rs485_baud", 0x000C, "u16", "bit/s", 100, "RS485 baud rate"),
    ConfigRegister(
        "rs485_char_timed_gap",
        0x000D,
        "u16",
        "",
        1,
        "Modbus t3.5 above 19,200 baud: 0 = 1.75 ms (spec), 1 = 3.5 characters",
    ),
)

REGISTER_TABLE: tuple[Register, ...] = (
    Register(
        "map_version", "input", INPUT.MAP_VERSION, 1, "u16", "", 1, "R", "register map version (1)"
    ),
    Register("soc", "input", INPUT.SOC, 1, "u16", "%", 0.01, "R", "state of charge"),
    Register(
        "pack_voltage", "input", INPUT.PACK_VOLTAGE, 2, "u32", "V", 0.001, "R", "pack voltage"
    ),
    Register(
        "pack_current",
        "input",
        INPUT.PACK_CURRENT,
        2,
        "s32",
        "A",
        0.001,
        "R",
        "pack current, positive = charging",
    ),
    Register(
        "supply_voltage",
        "input",
        INPUT.SUPPLY_VOLTAGE,
        1,
        "u16",
        "V",
        0.001,
        "R",
        "BMS supply (12/24 V auxiliary)",
    ),
    Register(
        "contactors", "input", INPUT.CONTACTORS, 1, "u16", "", 1, "R", "1 = contactors closed"
    ),
    Register("faults", "input", INPUT.FAULTS, 2, "bitmask", "", 1, "R", "active protection faults"),
    Register(
        "cell_count", "input", INPUT.CELL_COUNT, 1, "u16", "", 1, "R", "number of cells (≤ 64)"
    ),
    Register(
        "temp_count", "input", INPUT.TEMP_COUNT, 1, "u16", "", 1, "R", "number of sensors (≤ 16)"
    ),
    Register(
        "cell_voltages",
        "input",
        INPUT.CELL_VOLTAGES,
        INPUT.CELL_VOLTAGES_MAX,
        "u16",
        "V",
        0.0001,
        "R",
        "cell voltages, cell_count valid",
    ),
    Register(
        "temperatures",
        "input",
        INPUT.TEMPERATURES,
        INPUT.TEMPERATURES_MAX,
        "s16",
        "°C",
        0.1,
        "R",
        "temperatures, temp_count valid",
    ),
    Register("run_state", "input", INPUT.RUN_STATE, 1, "enum", "", 1, "R", "RunStateCode"),
    Register("active_bank", "input", INPUT.ACTIVE_BANK, 1, "enum", "", 1, "R", "0 = A, 1 = B"),
    Register(
        "image_state",
        "input",
        INPUT.IMAGE_STATE,
        1,
        "enum",
        "",
        1,
        "R",
        "0 none, 1 confirmed, 2 test, 3 reverted",
    ),
    Register("boot_count", "input", INPUT.BOOT_COUNT, 1, "u16", "", 1, "R", "boots since power-on"),
    Register(
        "security_counter",
        "input",
        INPUT.SECURITY_COUNTER,
        2,
        "u32",
        "",
        1,
        "R",
        "anti-rollback counter",
    ),
    Register(
        "running_version",
        "input",
        INPUT.RUNNING_VERSION,
        16,
        "ascii",
        "",
        1,
        "R",
        "version of the running image",
    ),
    Register(
        "revert_reason",
        "input",
        INPUT.REVERT_REASON,
        32,
        "ascii",
        "",
        1,
        "R",
        "why the last rollback happened",
    ),
    Register(
        "image_sha256",
        "input",
        INPUT.IMAGE_SHA256,
        16,
        "bytes",
        "",
        1,
        "R",
        "SHA-256 of the image in the active bank (all zero: no valid image)",
    ),
    Register(
        "image_key_count",
        "input",
        INPUT.IMAGE_KEY_COUNT,
        1,
        "u16",
        "",
        1,
        "R",
        "image-verification keys the bootloader holds (0: not reported)",
    ),
    Register(
        "image_key_hashes",
        "input",
        INPUT.IMAGE_KEY_HASHES,
        64,
        "bytes",
        "",
        1,
        "R",
        "SHA-256 of each fused image key, 16 registers each, image_key_count valid",
    ),
    Register(
        "selftest_state", "input", INPUT.SELFTEST_STATE, 1, "enum", "", 1, "R", "SelfTestState"
    ),
    Register("selftest_checks", "input", INPUT.SELFTEST_CHECKS, 1, "u16", "", 1, "R", "checks run"),
    Register(
        "selftest_failed_mask",
        "input",
        INPUT.SELFTEST_FAILED_MASK,
        2,
        "bitmask",
        "",
        1,
        "R",
        "bit i = check i failed (details: document 2)",
    ),
    Register(
        "selftest_version",
        "input",
        INPUT.SELFTEST_VERSION,
        16,
        "ascii",
        "",
        1,
        "R",
        "image version the self-test ran on",
    ),
    Register("xfer_state", "input", INPUT.XFER_STATE, 1, "enum", "", 1, "R", "TransferStateCode"),
    Register(
        "last_result",
        "input",
        INPUT.LAST_RESULT,
        1,
        "u16",
        "",
        1,
        "R",
        "0 ok, else device error number (E2xx)",
    ),
    Register(
        "total_size", "input", INPUT.TOTAL_SIZE, 2, "u32", "byte", 1, "R", "staged image size"
    ),
    Register(
        "contiguous_bytes",
        "input",
        INPUT.CONTIGUOUS_BYTES,
        2,
        "u32",
        "byte",
        1,
        "R",
        "written from offset 0 without a gap",
    ),
    Register(
        "block_size", "input", INPUT.BLOCK_SIZE, 1, "u16", "byte", 1, "R", "repair block size"
    ),
    Register(
        "block_count", "input", INPUT.BLOCK_COUNT, 1, "u16", "", 1, "R", "blocks in the image"
    ),
    Register(
        "missing_count", "input", INPUT.MISSING_COUNT, 1, "u16", "", 1, "R", "blocks not written"
    ),
    Register("auth_state", "input", INPUT.AUTH_STATE, 1, "enum", "", 1, "R", "AuthState"),
    Register("erased", "input", INPUT.ERASED, 1, "u16", "", 1, "R", "1 = inactive bank erased"),
    Register(
        "command_seq",
        "input",
        INPUT.COMMAND_SEQ,
        1,
        "u16",
        "",
        1,
        "R",
        "commands executed (wraps)",
    ),
    Register(
        "stream_offset",
        "input",
        INPUT.STREAM_OFFSET,
        2,
        "u32",
        "byte",
        1,
        "R",
        "stored bytes taken by the current encoded stream",
    ),
    Register(
        "stream_encoding",
        "input",
        INPUT.STREAM_ENCODING,
        1,
        "u16",
        "",
        1,
        "R",
        "transfer encoding in effect (0 = decoded image)",
    ),
    Register(
        "last_message",
        "input",
        INPUT.LAST_MESSAGE,
        64,
        "ascii",
        "",
        1,
        "R",
        "text of the last refusal",
    ),
    Register(
        "challenge", "input", INPUT.CHALLENGE, 32, "bytes", "", 1, "R", "authentication challenge"
    ),
    Register(
        "challenge_length",
        "input",
        INPUT.CHALLENGE_LENGTH,
        1,
        "u16",
        "byte",
        1,
        "R",
        "valid bytes in challenge",
    ),
    Register(
        "missing_bitmap",
        "input",
        INPUT.MISSING_BITMAP,
        INPUT.MISSING_BITMAP_REGISTERS,
        "bitmask",
        "",
        1,
        "R",
        "bit i (LSB first in each register) = block i missing",
    ),
    Register(
        "block_crc",
        "input",
        INPUT.BLOCK_CRC,
        INPUT.BLOCK_CRC_REGISTERS,
        "u32",
        "",
        1,
        "R",
        "CRC-32 of block i as stored: registers 2i, 2i+1 (high word first)",
    ),
    Register(
        "doc_length", "input", INPUT.DOC_LENGTH, 2, "u32", "byte", 1, "R", "selected document size"
    ),
    Register(
        "doc_data",
        "input",
        INPUT.DOC_DATA,
        INPUT.DOC_DATA_REGISTERS,
        "bytes",
        "",
        1,
        "R",
        "selected document bytes",
    ),
    Register(
        "config",
        "holding",
        HOLDING.CONFIG,
        HOLDING.CONFIG_END - HOLDING.CONFIG,
        "u16",
        "",
        1,
        "RW",
        "numeric configuration (table below)",
    ),
    Register(
        "doc_select",
        "holding",
        HOLDING.DOC_SELECT,
        1,
        "enum",
        "",
        1,
        "RW",
        "1 config snapshot, 2 self-test details",
    ),
    Register("command_arg", "holding", HOLDING.COMMAND_ARG, 1, "u16", "", 1, "RW", "argument"),
    Register(
        "command", "holding", HOLDING.COMMAND, 1, "enum", "", 1, "W", "Command; write runs it"
    ),
    Register(
        "upload_length",
        "holding",
        HOLDING.UPLOAD_LENGTH,
        2,
        "u32",
        "byte",
        1,
        "RW",
        "valid bytes in the upload buffer",
    ),
    Register(
        "window_page",
        "holding",
        HOLDING.WINDOW_PAGE,
        1,
        "u16",
        "64 KiB",
        1,
        "RW",
        "image offset of the transfer window",
    ),
    Register(
        "transfer_encoding",
        "holding",
        HOLDING.TRANSFER_ENCODING,
        1,
        "u16",
        "",
        1,
        "RW",
        "window carries: 0 the image, else stored bytes with this DFI",
    ),
    Register(
        "upload",
        "holding",
        HOLDING.UPLOAD,
        UPLOAD_BUFFER_REGISTERS,
        "bytes",
        "",
        1,
        "RW",
        "upload buffer (40 KiB)",
    ),
    Register(
        "transfer_window",
        "holding",
        HOLDING.TRANSFER_WINDOW - 1,
        TRANSFER_WINDOW_REGISTERS + 1,
        "bytes",
        "",
        1,
        "W",
        "[page, data…]: data at page·65536 + 2·(address + 1 − 0x8000)",
    ),
)
