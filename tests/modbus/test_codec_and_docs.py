"""Pure parts: codecs round-trip, window writes, documentation matches the map."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmsfw.protocol.modbus import codec
from bmsfw.protocol.modbus.registers import (
    CONFIG_REGISTERS,
    HOLDING,
    REGISTER_TABLE,
    TRANSFER_PAGE_BYTES,
)
from bmsfw.protocol.session import BootStatus, Telemetry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "modbus.md"


def test_register_table_has_no_overlaps() -> None:
    for kind in ("input", "holding"):
        regs = sorted((r for r in REGISTER_TABLE if r.kind == kind), key=lambda r: r.address)
        for a, b in itertools.pairwise(regs):
            assert a.end <= b.address, (a.name, b.name)


def test_docs_list_every_register() -> None:
    text = DOCS.read_text()
    for reg in REGISTER_TABLE:
        assert f"| 0x{reg.address:04X} | {reg.count} | `{reg.name}` |" in text, reg.name
    for cfg in CONFIG_REGISTERS:
        assert f"| 0x{cfg.address:04X} | `{cfg.key}` |" in text, cfg.key


def test_telemetry_round_trip_with_scaling() -> None:
    t = Telemetry(
        soc_pct=63.27,
        pack_voltage_v=812.345,
        pack_current_a=-123.456,
        cell_voltages_v=(3.3012, 3.2999, 4.1),
        temperatures_c=(-12.3, 45.6),
        supply_voltage_v=24.1,
        faults=("overtemperature", "ntc_fault"),
        contactors_closed=False,
    )
    back = codec.decode_telemetry(codec.encode_telemetry(t, map_version=1))
    assert back == t


def test_boot_status_round_trip() -> None:
    s = BootStatus("application", "B", "1.2.3+4", "reverted", 7, 70000, "self-test failed: cells")
    assert codec.decode_boot_status(codec.encode_boot_status(s)) == s


@given(st.binary(min_size=1, max_size=3 * TRANSFER_PAGE_BYTES // 2))
def test_window_writes_cover_the_image_once(image: bytes) -> None:
    rebuilt = bytearray(len(image))
    covered = 0
    for w in codec.window_writes(image):
        assert len(w.values) <= 123
        in_page = (w.address + 1 - HOLDING.TRANSFER_WINDOW) * 2
        assert w.address + len(w.values) <= 0x10000  # fits the 16-bit address space
        assert in_page + 2 * (len(w.values) - 1) <= TRANSFER_PAGE_BYTES  # never crosses a page
        assert w.offset == w.page * TRANSFER_PAGE_BYTES + in_page
        assert w.values[0] == w.page  # every frame names its page
        rebuilt[w.offset : w.offset + w.length] = codec.registers_to_bytes(list(w.values[1:]))[
            : w.length
        ]
        covered += w.length
    assert covered == len(image)
    assert bytes(rebuilt) == image


def test_window_writes_refuse_odd_start() -> None:
    with pytest.raises(ValueError, match="even offset"):
        list(codec.window_writes(b"abcd", 1))


def test_auth_proof_round_trip_and_rejects_tampering() -> None:
    blob = codec.pack_auth_proof(b"chain-der", b"sig")
    assert codec.unpack_auth_proof(blob) == (b"chain-der", b"sig")
    with pytest.raises(ValueError):
        codec.unpack_auth_proof(blob[:-1])
    with pytest.raises(ValueError):
        codec.unpack_auth_proof(b"XXXX" + blob[4:])


@given(st.integers(-(2**31), 2**31 - 1))
def test_s32_round_trip(value: int) -> None:
    assert codec.join_s32(codec.split_s32(value)) == value


def test_crc16_modbus_known_vector() -> None:
    # Read holding register 0 of unit 1: 01 03 00 00 00 01 -> CRC 84 0A (low byte first).
    assert codec.crc16_modbus(bytes.fromhex("010300000001")) == 0x0A84
