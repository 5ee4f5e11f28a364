"""A power-fail-safe record store in two flash sectors (EEPROM emulation).

Records are appended to the current sector: ``magic | seq | length | payload |
crc32``, padded to the program unit. Reading scans both sectors and returns the
valid record (CRC good) with the highest sequence number. When the current
sector is full (or its free space was dirtied by an interrupted write) the
*other* sector is erased and the new record goes there; the newest valid record
in the current sector survives until the new one is complete. So a power cut at
any flash operation leaves either the old or the new record readable, never
neither: the property the exhaustive power-cut test checks.
"""

from __future__ import annotations

import struct
import zlib

from bmsfw.protocol.device_errors import FlashProgramError
from bmsfw.sim.flash import Flash

_MAGIC = b"BREC"
_HEAD = struct.Struct("<4sII")  # magic, seq, payload length
_CRC = struct.Struct("<I")


class Journal:
    def __init__(self, flash: Flash, region: str) -> None:
        self.flash = flash
        self.region = region
        r = flash.spec.region(region)
        self.sector_size = r.sector_size
        self.unit = flash.spec.timing.program_unit_bytes
        self._latest: tuple[int, bytes] | None = None  # (seq, payload)
        self._current = 0
        self._end = [0, 0]
        self._scan()

    def _record_len(self, payload_len: int) -> int:
        raw = _HEAD.size + payload_len + _CRC.size
        return -(-raw // self.unit) * self.unit

    def _scan_sector(self, index: int) -> tuple[list[tuple[int, bytes]], int]:
        base = index * self.sector_size
        data = self.flash.read(self.region, base, self.sector_size)
        records: list[tuple[int, bytes]] = []
        pos = 0
        while pos + _HEAD.size + _CRC.size <= self.sector_size:
            magic, seq, length = _HEAD.unpack_from(data, pos)
            if magic != _MAGIC:
                break
            end = pos + _HEAD.size + length
            if end + _CRC.size > self.sector_size:
                break
            (crc,) = _CRC.unpack_from(data, end)
            if crc != zlib.crc32(data[pos + 4 : end]):
                break
            records.append((seq, bytes(data[pos + _HEAD.size : end])))
            pos += self._record_len(length)
        return records, pos

    def _scan(self) -> None:
        best: tuple[int, bytes] | None = None
        for index in (0, 1):
            records, end = self._scan_sector(index)
            self._end[index] = end
            for seq, payload in records:
                if best is None or seq > best[0]:
                    best = (seq, payload)
                    self._current = index
        self._latest = best

    def read(self) -> bytes | None:
        """The newest complete record, or None if the journal never held one."""
        return None if self._latest is None else self._latest[1]

    @property
    def sequence(self) -> int:
        return 0 if self._latest is None else self._latest[0]

    def write(self, payload: bytes) -> None:
        length = self._record_len(len(payload))
        if length > self.sector_size:
            raise FlashProgramError(
                f"record of {len(payload)} bytes does not fit a {self.sector_size}-byte sector"
                f" of {self.region}"
            )
        seq = self.sequence + 1
        body = _HEAD.pack(_MAGIC, seq, len(payload)) + payload
        record = body + _CRC.pack(zlib.crc32(body[4:]))
        record += b"\xff" * (length - len(record))
        index = self._current
        pos = self._end[index]
        fits = pos + length <= self.sector_size and self.flash.is_erased(
            self.region, index * self.sector_size + pos, length
        )
        if not fits or (self._latest is None and pos == 0 and not self._sector_erased(index)):
            index = 1 - index if self._latest is not None else index
            self.flash.erase_sector(self.region, index)
            pos = 0
        self.flash.program(self.region, index * self.sector_size + pos, record)
        self._current = index
        self._end[index] = pos + length
        self._latest = (seq, payload)

    def _sector_erased(self, index: int) -> bool:
        return self.flash.is_erased(self.region, index * self.sector_size, self.sector_size)
