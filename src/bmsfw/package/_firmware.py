"""Firmware files as firmware teams have them: raw binary, Intel HEX, S-record, ELF.

Pure: bytes in, one flat image out (:class:`FirmwareInput`), or a specific
error. The format is detected from the content, never from the file name
(an ``app.bin`` that holds Intel HEX text is still Intel HEX).

* Intel HEX and Motorola S-record: every data record, by address.
* ELF: the file contents of every ``PT_LOAD`` segment at its *load* address
  (``p_paddr``, where the linker put initialised data for the start-up code
  to copy), as an ``objcopy -O binary`` would; ``.bss`` and other no-bits
  sections carry nothing.
* Gaps between the pieces are filled with ``fill`` (0xFF by default, erased
  NOR flash); the image starts at the lowest address. A span larger than
  :data:`MAX_FIRMWARE_SPAN` (usually a RAM segment given a load address by
  mistake) is refused.
* A file that already is an MCUboot image (magic 0x96f3b83d), directly or
  inside Intel HEX/S-record as ``imgtool sign`` writes it, is reported as
  format ``mcuboot`` so the caller keeps it as a signed image.

Parsing is done by bincopy (which reads ELF through pyelftools).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from bmsfw.package.errors import FirmwareFormatError, NotFirmwareError

__all__ = [
    "MAX_FIRMWARE_SPAN",
    "FirmwareFormat",
    "FirmwareInput",
    "Segment",
    "detect_format",
    "load_firmware",
]

FirmwareFormat = Literal["bin", "ihex", "srec", "elf", "mcuboot"]
MAX_FIRMWARE_SPAN = 64 * 1024 * 1024
_MCUBOOT_MAGIC = struct.pack("<I", 0x96F3B83D)
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Segment:
    address: int
    size: int


@dataclass(frozen=True)
class FirmwareInput:
    """One firmware file, flattened to the bytes that go into the image."""

    format: FirmwareFormat
    data: bytes
    load_address: int | None  # lowest address (HEX, S-record, ELF); None for a raw binary
    segments: tuple[Segment, ...] = ()
    gap_bytes: int = 0  # how many bytes of ``fill`` were put between segments
    container: FirmwareFormat | None = None  # for ``mcuboot``: the file it came in, if not raw

    def to_dict(self) -> dict[str, object]:
        return {
            "format": self.format,
            "container": self.container,
            "size": len(self.data),
            "load_address": self.load_address,
            "segments": [{"address": s.address, "size": s.size} for s in self.segments],
            "gap_bytes": self.gap_bytes,
        }


def _is_text(data: bytes) -> bool:
    # A firmware binary starts with a vector table or code: NUL and non-UTF-8 bytes
    # within the first few bytes. UTF-8 without NUL, mostly printable, is text (a README,
    # a HEX file, a log with colour escapes).
    sample = data[:4096]
    if b"\x00" in sample:
        return False
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a character cut at the sample's end
            return False
        text = sample[: exc.start].decode("utf-8")
    printable = sum(1 for c in text if c.isprintable() or c in "\t\n\r\x0c")
    return printable >= 0.9 * len(text)


def _first_line(data: bytes) -> bytes:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\n", 1)[0].strip()


def detect_format(data: bytes) -> FirmwareFormat:
    """Which format ``data`` is in; raises :class:`NotFirmwareError` for what cannot be one."""
    if not data:
        raise NotFirmwareError("the firmware file is empty")
    if data.startswith(_MCUBOOT_MAGIC):
        return "mcuboot"
    if data.startswith(b"\x7fELF"):
        return "elf"
    if data.startswith(_ZIP_MAGIC):
        raise NotFirmwareError(
            "the file is a zip archive (a .bmsfw package?), not a firmware image"
        )
    if _is_text(data):
        line = _first_line(data)
        if line.startswith(b":"):
            return "ihex"
        if len(line) >= 2 and line[:1] == b"S" and line[1:2].isdigit():
            return "srec"
        raise NotFirmwareError(
            "the file is text, but neither Intel HEX (lines starting with ':') nor "
            "Motorola S-record (lines starting with S0..S9)"
        )
    return "bin"


def _flatten(
    binfile: object, fmt: FirmwareFormat, fill: int
) -> tuple[bytes, int, tuple[Segment, ...], int]:
    import bincopy

    assert isinstance(binfile, bincopy.BinFile)
    segments = tuple(Segment(s.minimum_address, len(s.data)) for s in binfile.segments)
    if not segments:
        raise FirmwareFormatError(f"the {fmt} file holds no data to load")
    low = segments[0].address
    span = (segments[-1].address + segments[-1].size) - low
    if span > MAX_FIRMWARE_SPAN:
        where = ", ".join(f"{s.size:,} bytes at {s.address:#010x}" for s in segments[:6])
        raise FirmwareFormatError(
            f"the {fmt} file spans {span:,} bytes from {low:#010x} ({where}); "
            "is a RAM segment given a load address? Link the app for one flash region"
        )
    data = binfile.as_binary(padding=bytes([fill]))
    return bytes(data), low, segments, span - sum(s.size for s in segments)


def load_firmware(data: bytes, *, fill: int = 0xFF) -> FirmwareInput:
    """Read a firmware file into the flat bytes an image carries (see the module doc)."""
    import bincopy

    if not 0 <= fill <= 0xFF:
        raise ValueError("fill must be a byte value")
    fmt = detect_format(data)
    if fmt in ("bin", "mcuboot"):
        return FirmwareInput(fmt, data, None)
    binfile = bincopy.BinFile()
    try:
        if fmt == "elf":
            binfile.add_elf(data)
        elif fmt == "ihex":
            binfile.add_ihex(data.decode("ascii"))
        else:
            binfile.add_srec(data.decode("ascii"))
    except (bincopy.Error, ValueError, KeyError, IndexError, struct.error) as exc:
        raise FirmwareFormatError(f"the {fmt} file cannot be read: {exc}") from None
    except Exception as exc:  # pyelftools raises its own (ELFError, ...) on corrupt ELF
        if type(exc).__module__.startswith("elftools"):
            raise FirmwareFormatError(f"the ELF file cannot be read: {exc}") from None
        raise
    flat, low, segments, gaps = _flatten(binfile, fmt, fill)
    if flat.startswith(_MCUBOOT_MAGIC):  # e.g. `imgtool sign ... signed.hex`
        return FirmwareInput("mcuboot", flat, low, segments, gaps, container=fmt)
    return FirmwareInput(fmt, flat, low, segments, gaps)
