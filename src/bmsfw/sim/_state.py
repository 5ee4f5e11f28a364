"""Persistent records of the device core: boot state, staged update, fault log, files."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bmsfw.protocol.device_errors import BootStateCorruptError
from bmsfw.sim._journal import Journal
from bmsfw.sim.records import DtcRecord

BANKS = ("A", "B")
DTC_LOG_MAX = 16

_META_LEN = struct.Struct("<I")


def other_bank(bank: str) -> str:
    return "B" if bank == "A" else "A"


def bank_region(bank: str) -> str:
    return "bank_a" if bank == "A" else "bank_b"


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode())


@dataclass(frozen=True)
class BootRecord:
    """The bootloader's view, MCUboot-trailer-like: what to boot and how.

    ``active`` is the confirmed bank; ``pending`` a bank to try in test mode;
    ``attempts`` how often the pending image was started; ``revert_requested``
    set by a test image whose self-test failed. ``rejected`` names the bank whose
    test image was reverted (self-test, watchdog, boot loop, secure boot, a
    rollback request): as in MCUboot, that image is never booted, confirmed or
    rolled back to again; only activating a newly verified image clears it.
    """

    active: str = "A"
    pending: str | None = None
    attempts: int = 0
    revert_requested: str = ""
    last_revert_reason: str = ""
    reverts: int = 0
    rejected: str | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> BootRecord:
        try:
            data = json.loads(raw)
            record = cls(**data)
        except (ValueError, TypeError) as exc:
            raise BootStateCorruptError(f"boot record unreadable: {exc}") from exc
        if (
            record.active not in BANKS
            or record.pending not in (None, *BANKS)
            or record.rejected not in (None, *BANKS)
        ):
            raise BootStateCorruptError(f"boot record names unknown banks: {data}")
        return record

    def revert(self, reason: str) -> BootRecord:
        """The pending test image is given up: the confirmed bank boots, the other is rejected."""
        return replace(
            self,
            pending=None,
            rejected=self.pending if self.pending is not None else self.rejected,
            attempts=0,
            revert_requested="",
            last_revert_reason=reason,
            reverts=self.reverts + 1,
        )


@dataclass(frozen=True)
class StagedUpdate:
    bank: str
    size: int
    sha256: bytes
    version: str
    security_counter: int
    channel: str
    erased: bool
    header: bytes
    # The staging request said a person authorised this downgrade (kept only when set).
    downgrade_authorised: bool = False

    def encode(self) -> bytes:
        fields: dict[str, object] = {
            "bank": self.bank,
            "size": self.size,
            "sha256": self.sha256.hex(),
            "version": self.version,
            "security_counter": self.security_counter,
            "channel": self.channel,
            "erased": self.erased,
        }
        if self.downgrade_authorised:
            fields["downgrade_authorised"] = True
        meta = json.dumps(fields, sort_keys=True).encode()
        return _META_LEN.pack(len(meta)) + meta + self.header

    @classmethod
    def decode(cls, raw: bytes) -> StagedUpdate | None:
        if len(raw) < _META_LEN.size:
            return None
        (n,) = _META_LEN.unpack_from(raw)
        meta = json.loads(raw[_META_LEN.size : _META_LEN.size + n])
        if not meta.get("bank"):
            return None
        return cls(
            bank=meta["bank"],
            size=meta["size"],
            sha256=bytes.fromhex(meta["sha256"]),
            version=meta["version"],
            security_counter=meta["security_counter"],
            channel=meta["channel"],
            erased=meta["erased"],
            header=bytes(raw[_META_LEN.size + n :]),
            downgrade_authorised=meta.get("downgrade_authorised") is True,
        )

    @staticmethod
    def cleared() -> bytes:
        meta = b'{"bank":""}'
        return _META_LEN.pack(len(meta)) + meta


def read_dtcs(journal: Journal) -> list[DtcRecord]:
    raw = journal.read()
    if not raw:
        return []
    return [DtcRecord(**entry) for entry in json.loads(raw)]


def append_dtc(journal: Journal, record: DtcRecord) -> None:
    entries = [*read_dtcs(journal), record][-DTC_LOG_MAX:]
    journal.write(json.dumps([asdict(e) for e in entries], separators=(",", ":")).encode())
