"""Firmware inputs (bmsfw.package._firmware): formats detected by content, read like objcopy.

The fixtures in tests/firmware_inputs/data were made by the GNU Arm toolchain
(build.sh): one linked ELF and what ``arm-none-eabi-objcopy`` makes of it as
Intel HEX, S-record and ``-O binary --gap-fill 0xff``. Reading any of the three
must give exactly objcopy's binary.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from intelhex import IntelHex  # type: ignore[import-untyped]

from bmsfw.errors import BmsfwError
from bmsfw.package._firmware import MAX_FIRMWARE_SPAN, detect_format, load_firmware
from bmsfw.package.errors import FirmwareFormatError, NotFirmwareError

DATA = Path(__file__).resolve().parents[1] / "firmware_inputs" / "data"
OBJCOPY_BIN = (DATA / "app.bin").read_bytes()
FLASH_APP = 0x08020200  # where app.ld links the vector table (slot + 0x200 header)


@pytest.mark.parametrize(("name", "fmt"), [("app.elf", "elf"), ("app.hex", "ihex"),
                                           ("app.srec", "srec")])  # fmt: skip
def test_reads_like_objcopy(name: str, fmt: str) -> None:
    fw = load_firmware((DATA / name).read_bytes())
    assert fw.format == fmt
    assert fw.data == OBJCOPY_BIN
    assert fw.load_address == FLASH_APP
    # .isr_vector+.text+.data (loaded from flash), then .calib at 0x08021000 after a gap
    assert [(s.address, s.size) for s in fw.segments] == [(FLASH_APP, 2576), (0x08021000, 16)]
    assert fw.gap_bytes == 0x08021000 - FLASH_APP - 2576
    assert fw.data[2576 : 2576 + fw.gap_bytes] == b"\xff" * fw.gap_bytes


def test_fill_byte_is_a_choice() -> None:
    fw = load_firmware((DATA / "app.hex").read_bytes(), fill=0x00)
    assert fw.data[2576 : 2576 + fw.gap_bytes] == bytes(fw.gap_bytes)
    assert fw.data[:2576] == OBJCOPY_BIN[:2576]


def test_raw_binary_is_taken_as_is() -> None:
    fw = load_firmware(OBJCOPY_BIN)
    assert (fw.format, fw.data, fw.load_address) == ("bin", OBJCOPY_BIN, None)


def test_detection_ignores_the_file_name_and_leading_whitespace() -> None:
    hex_text = (DATA / "app.hex").read_bytes()
    assert detect_format(b"\r\n  " + hex_text) == "ihex"
    assert detect_format((DATA / "app.srec").read_bytes()) == "srec"
    assert detect_format((DATA / "app.elf").read_bytes()) == "elf"


def test_intel_hex_from_another_writer() -> None:
    ih = IntelHex()
    ih.frombytes(b"\x01\x02\x03\x04", offset=0x1000)
    ih.frombytes(b"\x05\x06", offset=0x1008)
    out = io.StringIO()
    ih.write_hex_file(out)
    fw = load_firmware(out.getvalue().encode())
    assert fw.data == b"\x01\x02\x03\x04" + b"\xff" * 4 + b"\x05\x06"
    assert (fw.load_address, fw.gap_bytes) == (0x1000, 4)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"# My firmware\nSee README for how to flash.\n", "text"),
        (b"Fixes [/] and [bold]x[/]\x1b[31m red\n", "text"),
        ("Ünïcode notes: flash with the vendor tool\n".encode(), "text"),
        (b"S3 is not a record\n", "cannot be read"),
    ],
)
def test_not_firmware(data: bytes, words: str) -> None:
    with pytest.raises((NotFirmwareError, FirmwareFormatError), match=words):
        load_firmware(data)


def test_a_package_is_not_firmware() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", "{}")
    with pytest.raises(NotFirmwareError) as info:
        load_firmware(buf.getvalue())
    assert info.value.code == "BMSFW-E130" and ".bmsfw" in str(info.value)


def test_corrupt_hex_checksum() -> None:
    lines = (DATA / "app.hex").read_text().splitlines()
    record = lines[3]
    lines[3] = record[:-2] + f"{(int(record[-2:], 16) + 1) % 256:02X}"
    with pytest.raises(FirmwareFormatError) as info:
        load_firmware("\n".join(lines).encode())
    assert info.value.code == "BMSFW-E129"


@pytest.mark.parametrize("cut", [16, 52, 200, 0x1000])
def test_truncated_elf(cut: int) -> None:
    with pytest.raises(FirmwareFormatError) as info:
        load_firmware((DATA / "app.elf").read_bytes()[:cut])
    assert info.value.code == "BMSFW-E129"


def test_segments_too_far_apart() -> None:
    ih = IntelHex()
    ih.frombytes(b"\x01" * 16, offset=0x08000000)
    ih.frombytes(b"\x02" * 16, offset=0x08000000 + MAX_FIRMWARE_SPAN)
    out = io.StringIO()
    ih.write_hex_file(out)
    with pytest.raises(FirmwareFormatError, match="RAM segment"):
        load_firmware(out.getvalue().encode())


def test_hex_holding_no_data() -> None:
    with pytest.raises(FirmwareFormatError, match="no data"):
        load_firmware(b":00000001FF\n")


_ELF = (DATA / "app.elf").read_bytes()
_HEX = (DATA / "app.hex").read_bytes()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_inputs_fail_with_a_code_only(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([_ELF, _HEX, (DATA / "app.srec").read_bytes()]))
    pos = data.draw(st.integers(0, len(base) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=8))
    damaged = base[:pos] + junk + base[pos + len(junk) :]
    try:
        fw = load_firmware(damaged)
    except BmsfwError as exc:
        assert exc.code in {"BMSFW-E129", "BMSFW-E130"}
    else:
        assert fw.data
