"""Configuration and calibration backup: write, verify by reading back, restore, diff.

A backup is one JSON file named after the device (``MODEL_SERIAL_VERSION_TIME.json``)
in a directory the technician chooses (an external drive). It holds the device
identity, the firmware version it was taken from, the config and calibration,
the device's checksum of them and a checksum of the whole file, so a copy that
was damaged on the way is recognised before anything is written to a BMS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmsfw.protocol.session import BmsSession, ConfigSnapshot, DeviceIdentity, FlashLayout
from bmsfw.update.errors import (
    BackupIdentityMismatchError,
    BackupInvalidError,
    BackupVerifyFailedError,
    RestoreVerifyFailedError,
)

__all__ = [
    "BACKUP_FORMAT",
    "ConfigBackup",
    "ConfigChange",
    "diff_snapshots",
    "load_backup",
    "restore_backup",
    "snapshot_checksum",
    "write_backup",
]

BACKUP_FORMAT = "bmsfw-config-backup/1"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def snapshot_checksum(config: Mapping[str, Any], calibration: Mapping[str, Any]) -> str:
    """The checksum a BMS reports in a ``ConfigSnapshot`` (see ``bmsfw.protocol.session``)."""
    return hashlib.sha256(
        _canonical({"config": _plain(config), "calibration": _plain(calibration)})
    ).hexdigest()


def _plain(value: Any) -> Any:
    """Mappings/tuples to dicts/lists, so JSON round trips compare equal."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ConfigBackup:
    identity: DeviceIdentity
    snapshot: ConfigSnapshot
    created: str
    path: Path | None = None

    @property
    def firmware_version(self) -> str:
        return self.identity.app_version

    def body(self) -> dict[str, Any]:
        return {
            "format": BACKUP_FORMAT,
            "created": self.created,
            "identity": dataclasses.asdict(self.identity),
            "firmware_version": self.identity.app_version,
            "snapshot": {
                "schema_version": self.snapshot.schema_version,
                "config": _plain(self.snapshot.config),
                "calibration": _plain(self.snapshot.calibration),
                "checksum": self.snapshot.checksum,
            },
        }

    def to_json(self) -> str:
        body = self.body()
        body["file_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class ConfigChange:
    path: str  # "config.overcurrent_a", "calibration.cell_gain[3]"
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.path}: {self.before!r} -> {self.after!r}"


_MISSING = "<absent>"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        if not value:
            out[prefix] = {}
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list | tuple):
        if not value:
            out[prefix] = []
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    else:
        out[prefix] = value


def diff_snapshots(before: ConfigSnapshot, after: ConfigSnapshot) -> list[ConfigChange]:
    """Every leaf value that differs between two snapshots (empty: nothing changed)."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for name, snap, out in (("", before, old), ("", after, new)):
        del name
        _flatten("config", _plain(snap.config), out)
        _flatten("calibration", _plain(snap.calibration), out)
    changes = [
        ConfigChange(path, old.get(path, _MISSING), new.get(path, _MISSING))
        for path in sorted(set(old) | set(new))
        if old.get(path, _MISSING) != new.get(path, _MISSING)
    ]
    if before.schema_version != after.schema_version:
        changes.insert(
            0, ConfigChange("schema_version", before.schema_version, after.schema_version)
        )
    return changes


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text) or "unknown"


def _check_snapshot(snapshot: ConfigSnapshot, where: str) -> None:
    expected = snapshot_checksum(snapshot.config, snapshot.calibration)
    if snapshot.checksum != expected:
        raise BackupInvalidError(
            f"{where}: config checksum {snapshot.checksum[:16]}… does not match its "
            f"content ({expected[:16]}…)"
        )


def write_backup(
    directory: str | Path, identity: DeviceIdentity, snapshot: ConfigSnapshot
) -> ConfigBackup:
    """Write the backup atomically into ``directory`` and prove it by reading it back."""
    _check_snapshot(snapshot, "configuration read from the BMS")
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupVerifyFailedError(f"cannot create backup directory {folder}: {exc}") from exc
    created = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = "_".join(
        _safe_name(part)
        for part in (identity.model, identity.serial, identity.app_version, created)
    )
    text = ConfigBackup(identity, snapshot, created).to_json()
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".backup-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        target = _publish_without_overwriting(Path(tmp), folder, name)
    except OSError as exc:
        raise BackupVerifyFailedError(f"cannot write backup to {folder}: {exc}") from exc
    # Read it back from the drive: what counts is what a later restore will see.
    try:
        readback = load_backup(target)
    except BackupInvalidError as exc:
        raise BackupVerifyFailedError(f"backup {target} did not read back: {exc.message}") from exc
    if readback.snapshot.checksum != snapshot.checksum or readback.identity != identity:
        raise BackupVerifyFailedError(
            f"backup {target} read back differently from what was written"
        )
    return readback


def _publish_without_overwriting(tmp: Path, folder: Path, name: str) -> Path:
    """Give the written temp file its final name, never replacing an existing backup.

    Names have one-second resolution, so two backups of one pack within a second
    get ``NAME.json`` and ``NAME-2.json``; ``os.link`` fails instead of overwriting.
    """
    try:
        for n in range(1, 1000):
            target = folder / (f"{name}.json" if n == 1 else f"{name}-{n}.json")
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            return target
        raise FileExistsError(f"999 backups named {name} already exist in {folder}")
    finally:
        tmp.unlink(missing_ok=True)


def load_backup(path: str | Path) -> ConfigBackup:
    """Read and check a backup file (format, file checksum, config checksum)."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BackupInvalidError(f"cannot read backup {file}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupInvalidError(f"{file} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != BACKUP_FORMAT:
        raise BackupInvalidError(f"{file} is not a {BACKUP_FORMAT} file")
    stored = data.pop("file_sha256", None)
    if stored != hashlib.sha256(_canonical(data)).hexdigest():
        raise BackupInvalidError(f"{file} was changed or damaged (file checksum mismatch)")
    try:
        snap = data["snapshot"]
        snapshot = ConfigSnapshot(
            schema_version=int(snap["schema_version"]),
            config=snap["config"],
            calibration=snap["calibration"],
            checksum=str(snap["checksum"]),
        )
        fields = dict(data["identity"])
        # JSON has no tuples: the key hashes come back as a list
        fields["image_key_hashes"] = tuple(str(h) for h in fields.get("image_key_hashes", ()))
        layout = fields.get("flash_layout")
        fields["flash_layout"] = FlashLayout(**layout) if layout is not None else None
        identity = DeviceIdentity(**fields)
        created = str(data["created"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupInvalidError(f"{file} lacks a field: {exc}") from exc
    _check_snapshot(snapshot, str(file))
    return ConfigBackup(identity, snapshot, created, file)


def restore_backup(
    session: BmsSession, backup: ConfigBackup, *, allow_other_device: bool = False
) -> ConfigSnapshot:
    """Write the backup to the BMS and read it back; return what the BMS now holds."""
    identity = session.identify()
    same = (identity.model, identity.serial) == (backup.identity.model, backup.identity.serial)
    if not same and not allow_other_device:
        raise BackupIdentityMismatchError(
            f"backup is from {backup.identity.model} serial {backup.identity.serial}, "
            f"connected BMS is {identity.model} serial {identity.serial}"
        )
    session.write_config(backup.snapshot)
    now = session.read_config()
    changes = diff_snapshots(backup.snapshot, now)
    if changes:
        listed = "; ".join(str(c) for c in changes[:5])
        raise RestoreVerifyFailedError(f"{len(changes)} value(s) differ after restore: {listed}")
    return now
