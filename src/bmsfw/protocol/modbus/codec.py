"""Pure encoders/decoders between register values and the session records.

No I/O here: the server fills register blocks with ``encode_*`` and the client
turns what it read back into records with ``decode_*``. Both sides use the same
functions, so a round trip is testable without a serial line.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bmsfw.package import Component
from bmsfw.package._encoding import dfi_for
from bmsfw.protocol.bounds import MAX_IMAGE_KEYS, image_key_hashes, physical_telemetry
from bmsfw.protocol.modbus.registers import (
    BANK_CODES,
    FAULT_BITS,
    HOLDING,
    IMAGE_STATE_CODES,
    INPUT,
    MAX_WRITE_REGISTERS,
    TRANSFER_PAGE_BYTES,
    RunStateCode,
)
from bmsfw.protocol.session import BootStatus, ImageState, RunState, Telemetry

__all__ = [
    "TELEMETRY_BLOCK",
    "WindowWrite",
    "ascii_to_registers",
    "bitmap_from_registers",
    "bitmap_to_registers",
    "bytes_to_registers",
    "crc16_modbus",
    "decode_boot_status",
    "decode_telemetry",
    "encode_boot_status",
    "encode_telemetry",
    "is_encoded",
    "join_s32",
    "join_u32",
    "pack_auth_proof",
    "registers_to_ascii",
    "registers_to_bytes",
    "split_s32",
    "split_u32",
    "to_s16",
    "to_u16",
    "transfer_encoding",
    "unpack_auth_proof",
    "window_writes",
]

#: encryptingMethod (low nibble of the transfer encoding) per the manifest's ``encryption``.
ENCRYPTION_METHODS = {"none": 0x0, "ecies-x25519": 0x1, "ecies-p256": 0x2}
#: compressionMethod bit that marks a detools delta (low 3 bits: the patch's codec).
DELTA_FLAG = 0x8


def is_encoded(component: Component) -> bool:
    """Whether the component's stored bytes differ from its image (compressed, delta, encrypted)."""
    return component.encoding != "raw" or component.is_delta or component.encryption != "none"


def transfer_encoding(component: Component) -> int:
    """The ``transfer_encoding`` register value for sending ``component``'s stored bytes.

    The same number as UDS RequestDownload's dataFormatIdentifier (docs/transfers.md):
    high nibble the codec (raw 0, zstd 1, lz4 2, heatshrink 3, lzma2thumb 4) plus 0x8 for a delta,
    low nibble the encryption (0 clear, 1 ECIES-X25519, 2 ECIES-P256). 0 means the
    window carries the decoded image.
    """
    codec = dfi_for(component.encoding)
    if codec >= DELTA_FLAG:
        raise ValueError(f"codec number {codec} collides with the delta flag")
    try:
        encryption = ENCRYPTION_METHODS[component.encryption]
    except KeyError:
        raise ValueError(f"no encryption method number for {component.encryption!r}") from None
    return (codec | (DELTA_FLAG if component.is_delta else 0)) << 4 | encryption


# Telemetry block read in one request: 0x0000 .. 0x005F (96 registers).
TELEMETRY_BLOCK = (INPUT.MAP_VERSION, INPUT.TEMPERATURES + INPUT.TEMPERATURES_MAX)

_RUN_STATES: dict[int, RunState] = {
    RunStateCode.OFF: "off",
    RunStateCode.BOOTLOADER: "bootloader",
    RunStateCode.BOOTING: "booting",
    RunStateCode.SELF_TEST: "self-test",
    RunStateCode.APPLICATION: "application",
}
_RUN_CODES = {v: k for k, v in _RUN_STATES.items()}
_IMAGE_STATES: dict[int, ImageState] = {
    0: "none",
    1: "confirmed",
    2: "test",
    3: "reverted",
}


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF) as an integer."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def to_u16(value: int) -> int:
    """Clamp to 0..65535 (a reading out of range saturates rather than wraps)."""
    return max(0, min(0xFFFF, value))


def to_s16(value: int) -> int:
    """Signed 16-bit as the register's unsigned value, saturating."""
    return max(-0x8000, min(0x7FFF, value)) & 0xFFFF


def from_s16(raw: int) -> int:
    return raw - 0x10000 if raw & 0x8000 else raw


def split_u32(value: int) -> list[int]:
    value = max(0, min(0xFFFFFFFF, value))
    return [value >> 16, value & 0xFFFF]


def join_u32(regs: Sequence[int]) -> int:
    return (regs[0] << 16) | regs[1]


def split_s32(value: int) -> list[int]:
    value = max(-0x80000000, min(0x7FFFFFFF, value)) & 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def join_s32(regs: Sequence[int]) -> int:
    value = join_u32(regs)
    return value - 0x100000000 if value & 0x80000000 else value


def bytes_to_registers(data: bytes, pad: int = 0x00) -> list[int]:
    """Two bytes per register, high byte first; an odd tail is padded with ``pad``."""
    if len(data) % 2:
        data = data + bytes([pad])
    return list(struct.unpack(f">{len(data) // 2}H", data))


def registers_to_bytes(regs: Sequence[int]) -> bytes:
    return struct.pack(f">{len(regs)}H", *regs)


def ascii_to_registers(text: str, count: int) -> list[int]:
    raw = text.encode("ascii", "replace")[: count * 2]
    return bytes_to_registers(raw.ljust(count * 2, b"\0"))


def registers_to_ascii(regs: Sequence[int]) -> str:
    return registers_to_bytes(regs).split(b"\0", 1)[0].decode("ascii", "replace")


def bitmap_to_registers(bits: Sequence[bool], count: int) -> list[int]:
    """Bit i of the map is bit (i % 16) of register i // 16 (LSB first)."""
    regs = [0] * count
    for i, bit in enumerate(bits[: count * 16]):
        if bit:
            regs[i // 16] |= 1 << (i % 16)
    return regs


def bitmap_from_registers(regs: Sequence[int], nbits: int) -> list[bool]:
    return [bool(regs[i // 16] >> (i % 16) & 1) for i in range(nbits)]


def encode_telemetry(telemetry: Telemetry, *, map_version: int) -> list[int]:
    """The telemetry block ``TELEMETRY_BLOCK`` as register values."""
    start, end = TELEMETRY_BLOCK
    regs = [0] * (end - start)
    regs[INPUT.MAP_VERSION] = map_version
    regs[INPUT.SOC] = to_u16(round(telemetry.soc_pct * 100))
    regs[INPUT.PACK_VOLTAGE : INPUT.PACK_VOLTAGE + 2] = split_u32(
        round(telemetry.pack_voltage_v * 1000)
    )
    regs[INPUT.PACK_CURRENT : INPUT.PACK_CURRENT + 2] = split_s32(
        round(telemetry.pack_current_a * 1000)
    )
    regs[INPUT.SUPPLY_VOLTAGE] = to_u16(round(telemetry.supply_voltage_v * 1000))
    regs[INPUT.CONTACTORS] = 1 if telemetry.contactors_closed else 0
    mask = 0
    for fault in telemetry.faults:
        mask |= 1 << FAULT_BITS.get(fault, FAULT_BITS["other"])
    regs[INPUT.FAULTS : INPUT.FAULTS + 2] = split_u32(mask)
    cells = telemetry.cell_voltages_v[: INPUT.CELL_VOLTAGES_MAX]
    temps = telemetry.temperatures_c[: INPUT.TEMPERATURES_MAX]
    regs[INPUT.CELL_COUNT] = len(cells)
    regs[INPUT.TEMP_COUNT] = len(temps)
    for i, volts in enumerate(cells):
        regs[INPUT.CELL_VOLTAGES + i] = to_u16(round(volts * 10000))
    for i, celsius in enumerate(temps):
        regs[INPUT.TEMPERATURES + i] = to_s16(round(celsius * 10))
    return regs


def decode_telemetry(regs: Sequence[int]) -> Telemetry:
    """Inverse of :func:`encode_telemetry` (registers from address 0).

    Counts beyond the register windows and values outside physics raise ValueError
    (:func:`bmsfw.protocol.bounds.physical_telemetry`).
    """
    mask = join_u32(regs[INPUT.FAULTS : INPUT.FAULTS + 2])
    faults = tuple(name for name, bit in FAULT_BITS.items() if mask >> bit & 1)
    ncells, ntemps = regs[INPUT.CELL_COUNT], regs[INPUT.TEMP_COUNT]
    if ncells > INPUT.CELL_VOLTAGES_MAX or ntemps > INPUT.TEMPERATURES_MAX:
        raise ValueError(
            f"{ncells} cells / {ntemps} temperature sensors: the map holds at most "
            f"{INPUT.CELL_VOLTAGES_MAX} / {INPUT.TEMPERATURES_MAX}"
        )
    return physical_telemetry(_telemetry(regs, faults, ncells, ntemps))


def _telemetry(regs: Sequence[int], faults: tuple[str, ...], ncells: int, ntemps: int) -> Telemetry:
    return Telemetry(
        soc_pct=regs[INPUT.SOC] / 100,
        pack_voltage_v=join_u32(regs[INPUT.PACK_VOLTAGE : INPUT.PACK_VOLTAGE + 2]) / 1000,
        pack_current_a=join_s32(regs[INPUT.PACK_CURRENT : INPUT.PACK_CURRENT + 2]) / 1000,
        cell_voltages_v=tuple(regs[INPUT.CELL_VOLTAGES + i] / 10000 for i in range(ncells)),
        temperatures_c=tuple(from_s16(regs[INPUT.TEMPERATURES + i]) / 10 for i in range(ntemps)),
        supply_voltage_v=regs[INPUT.SUPPLY_VOLTAGE] / 1000,
        faults=faults,
        contactors_closed=bool(regs[INPUT.CONTACTORS] & 1),
    )


def encode_boot_status(status: BootStatus) -> list[int]:
    """Registers ``INPUT.RUN_STATE .. INPUT.BOOT_BLOCK_END``."""
    regs = [
        _RUN_CODES.get(status.run_state, RunStateCode.OFF),
        BANK_CODES.get(status.active_bank, 0),
        IMAGE_STATE_CODES.get(status.image_state, 0),
        to_u16(status.boot_count),
        *split_u32(status.security_counter),
        *ascii_to_registers(status.running_version, 16),
        *ascii_to_registers(status.last_revert_reason, 32),
    ]
    assert len(regs) == INPUT.BOOT_BLOCK_END - INPUT.RUN_STATE
    return regs


def decode_boot_status(regs: Sequence[int]) -> BootStatus:
    base = INPUT.RUN_STATE
    banks = {v: k for k, v in BANK_CODES.items()}

    def at(addr: int, n: int = 1) -> Sequence[int]:
        return regs[addr - base : addr - base + n]

    return BootStatus(
        run_state=_RUN_STATES.get(at(INPUT.RUN_STATE)[0], "off"),
        active_bank=banks.get(at(INPUT.ACTIVE_BANK)[0], "?"),
        running_version=registers_to_ascii(at(INPUT.RUNNING_VERSION, 16)),
        image_state=_IMAGE_STATES.get(at(INPUT.IMAGE_STATE)[0], "none"),
        boot_count=at(INPUT.BOOT_COUNT)[0],
        security_counter=join_u32(at(INPUT.SECURITY_COUNTER, 2)),
        last_revert_reason=registers_to_ascii(at(INPUT.REVERT_REASON, 32)),
    )


def encode_image_keys(hashes: tuple[str, ...]) -> list[int]:
    """Registers ``INPUT.IMAGE_KEY_COUNT .. INPUT.IMAGE_KEY_HASHES_END``."""
    raw = b"".join(bytes.fromhex(h) for h in hashes[:MAX_IMAGE_KEYS])
    regs = [
        min(len(hashes), MAX_IMAGE_KEYS),
        *bytes_to_registers(raw.ljust(32 * MAX_IMAGE_KEYS, b"\0")),
    ]
    assert len(regs) == INPUT.IMAGE_KEY_HASHES_END - INPUT.IMAGE_KEY_COUNT
    return regs


def decode_image_keys(regs: Sequence[int]) -> tuple[str, ...]:
    """The fused image-key hashes; a count of 0 (or no such registers) reports none."""
    what = "image_key_hashes registers"
    count = regs[0]
    if count > MAX_IMAGE_KEYS or len(regs) < 1 + 16 * count:
        raise ValueError(f"{what}: image_key_count {count} outside 0..{MAX_IMAGE_KEYS}")
    raw = registers_to_bytes(regs[1 : 1 + 16 * count])
    return image_key_hashes([raw[32 * i : 32 * i + 32] for i in range(count)], what)


_PROOF_MAGIC = b"BMA1"


def pack_auth_proof(certificate_chain_pem: bytes, signature: bytes) -> bytes:
    """The AUTH_PROVE upload: magic, u32 chain length, chain, u32 signature length, signature."""
    return (
        _PROOF_MAGIC
        + struct.pack(">I", len(certificate_chain_pem))
        + certificate_chain_pem
        + struct.pack(">I", len(signature))
        + signature
    )


def unpack_auth_proof(blob: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`pack_auth_proof`; ValueError on a malformed record."""
    if blob[:4] != _PROOF_MAGIC or len(blob) < 12:
        raise ValueError("authentication record has no BMA1 magic")
    (chain_len,) = struct.unpack(">I", blob[4:8])
    chain = blob[8 : 8 + chain_len]
    rest = blob[8 + chain_len :]
    if len(chain) != chain_len or len(rest) < 4:
        raise ValueError("authentication record is truncated")
    (sig_len,) = struct.unpack(">I", rest[:4])
    signature = rest[4 : 4 + sig_len]
    if len(signature) != sig_len or len(rest) != 4 + sig_len:
        raise ValueError("authentication record has a bad signature length")
    return chain, signature


@dataclass(frozen=True)
class WindowWrite:
    """One function-0x10 write into the transfer window.

    ``values`` is ``(page, data registers...)``: every frame carries its own 64 KiB
    page, so a lost frame can never shift later ones to a wrong offset (a
    broadcast has no replies to notice a lost page switch by).
    """

    page: int
    address: int
    values: tuple[int, ...]
    offset: int  # image offset of the first data byte
    length: int  # image bytes carried (the last frame may carry a pad byte)


def window_writes(
    image: bytes,
    start: int = 0,
    end: int | None = None,
    *,
    max_registers: int = MAX_WRITE_REGISTERS,
) -> Iterator[WindowWrite]:
    """Split ``image[start:end]`` into window writes that never cross a 64 KiB page.

    ``start`` must be even (a register holds two bytes); an odd image length is
    padded with one 0xFF byte that the device discards (it knows the size). Each
    write is ``[page, data...]`` starting one register before its data, at
    ``TRANSFER_WINDOW - 1 + (offset mod 64 KiB) / 2`` (so the last register of a
    page, 0xFFFF, is reachable within the 16-bit address space).
    """
    if start % 2:
        raise ValueError(f"window writes start at an even offset, not {start}")
    end = len(image) if end is None else min(end, len(image))
    data_registers = max_registers - 1
    offset = start
    while offset < end:
        page, in_page = divmod(offset, TRANSFER_PAGE_BYTES)
        chunk = min(data_registers * 2, end - offset, TRANSFER_PAGE_BYTES - in_page)
        data = image[offset : offset + chunk]
        yield WindowWrite(
            page=page,
            address=HOLDING.TRANSFER_WINDOW - 1 + in_page // 2,
            values=(page, *bytes_to_registers(data, pad=0xFF)),
            offset=offset,
            length=len(data),
        )
        offset += chunk
