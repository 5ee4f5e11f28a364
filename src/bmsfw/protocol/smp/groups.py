"""Group and command ids of the MCUmgr SMP management groups bmsfw uses.

The standard groups are Zephyr's (OS 0, image 1, settings 3). SMP has no
standard for what a battery needs before, during and after an update, so the
BMS vendor group (:data:`BMS_GROUP`, in the user range that starts at 64)
carries it; docs/smp.md documents every command and field. Both ends import
these numbers from here: the SMP session (client) and the virtual BMS (server).
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Final

from bmsfw.protocol.session import ConfigSnapshot

__all__ = [
    "BMS_GROUP",
    "CONFIG_SETTING",
    "DEFAULT_BUF_SIZE",
    "BmsCommand",
    "ImageCommand",
    "OsCommand",
    "SettingsCommand",
    "backup_document",
    "snapshot_from_document",
]

#: The BMS vendor group id (user range: 64 and up; 64 itself is Intercreate's).
BMS_GROUP: Final = 0x0B35

#: The settings key holding the configuration backup document (JSON, docs/smp.md).
CONFIG_SETTING: Final = "bms/backup"

#: SMP reassembly buffer the virtual BMS announces in MCUmgr params (``buf_size``).
DEFAULT_BUF_SIZE: Final = 2048


class OsCommand(IntEnum):
    ECHO = 0
    RESET = 5
    MCUMGR_PARAMS = 6
    BOOTLOADER_INFO = 8


class ImageCommand(IntEnum):
    STATE = 0
    UPLOAD = 1
    ERASE = 5


class SettingsCommand(IntEnum):
    READ_WRITE = 0
    DELETE = 1
    COMMIT = 2
    LOAD_SAVE = 3


class BmsCommand(IntEnum):
    """Commands of the BMS vendor group (read = R, write = W)."""

    IDENTITY = 0  # R: vendor, model, hw_revision, serial, versions, OTP security counter
    TELEMETRY = 1  # R: state of charge, voltages, currents, temperatures, faults
    BOOT_STATUS = 2  # R: run state, running bank/version, image state, boot count, revert reason
    SELF_TEST = 3  # R: the last self-test: state, version, checks
    LAST_ERROR = 4  # R: the BMSFW-Exxx code and text of the last refused request
    AUTH = 5  # R: a fresh challenge; W: certificate chain + signature over it
    ROLLBACK = 6  # W: revert a test image now / go back to the other bank, then reset
    IMAGE_DIGEST = 7  # R: SHA-256 of the running image up to the end of its TLVs
    UPLOAD_STATUS = 8  # R: the staged upload: len, sha, off (bytes held from 0 without a gap)


def backup_document(snapshot: ConfigSnapshot) -> bytes:
    """The value of the ``bms/backup`` setting: the snapshot as canonical JSON."""
    doc = {
        "schema_version": snapshot.schema_version,
        "config": dict(snapshot.config),
        "calibration": dict(snapshot.calibration),
        "checksum": snapshot.checksum,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def snapshot_from_document(raw: bytes) -> ConfigSnapshot:
    """Parse a ``bms/backup`` value; raises ValueError, KeyError or TypeError when malformed."""
    doc = json.loads(raw)
    return ConfigSnapshot(
        schema_version=int(doc["schema_version"]),
        config=dict(doc["config"]),
        calibration=dict(doc["calibration"]),
        checksum=str(doc["checksum"]),
    )
