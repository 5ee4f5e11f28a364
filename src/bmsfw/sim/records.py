"""Records the device core returns beyond the shared session records.

Identity, telemetry, boot status, self-test and config snapshots reuse the
client-side records of :mod:`bmsfw.protocol.session`, so a protocol server can
pass them through; the update-transfer view and the fault log are richer here.
"""

from __future__ import annotations

from dataclasses import dataclass

from bmsfw.protocol.session import TransferState

__all__ = ["BankInfo", "DtcRecord", "TransferStatus"]


@dataclass(frozen=True)
class TransferStatus:
    """What the device holds of the staged update (for resume and broadcast repair).

    ``blocks_written[i]`` covers bytes ``i*block_size .. (i+1)*block_size-1``;
    ``block_crc32(i)`` on the device gives the CRC-32 of what flash holds there,
    so a client can find damaged blocks without reading the bank back.
    """

    staged: bool
    bank: str
    total_size: int
    erased: bool
    verified: bool
    block_size: int
    blocks_written: tuple[bool, ...]
    contiguous_bytes: int  # written from offset 0 without a gap: resume from here
    missing_ranges: tuple[tuple[int, int], ...]  # (offset, length)
    version: str = ""
    security_counter: int = 0
    sha256: bytes = b""  # of the whole staged image (an MCUmgr upload's ``sha``)

    def to_session(self) -> TransferState:
        return TransferState(
            total_size=self.total_size,
            contiguous_bytes=self.contiguous_bytes,
            erased=self.erased,
            missing_ranges=self.missing_ranges,
        )


@dataclass(frozen=True)
class BankInfo:
    bank: str
    valid: bool  # passes the secure-boot check against the fused image key
    version: str
    security_counter: int
    image_size: int
    state: str  # "running", "confirmed", "test", "rejected", "fallback", "empty", "invalid"
    problem: str = ""


@dataclass(frozen=True)
class DtcRecord:
    """One entry in the fault log (NVM, newest last, bounded)."""

    code: str  # e.g. "B1001"
    name: str  # e.g. "REVERTED"
    detail: str
    time: str  # ISO 8601 UTC from the device clock
    active: bool = False
