"""The record of an update (backup, report, audit record): checked before, written safely.

Before the first byte goes to a BMS, :func:`check_record_targets` proves that
every place the record goes can take it: the directory exists or can be made,
is a directory, is writable (a probe file is written, synced and removed), and
has free space; the audit log is a file that can be appended to. Each problem
has its own error code (BMSFW-E530..E533), so a technician sees "the backup
drive is read-only" instead of a Python traceback after the flash.

:func:`write_atomic` writes a file as python-tuf saves its metadata: a temp file
in the same directory, ``fsync``, then ``os.replace``; a reader sees the old file
or the new one, never a half-written one (a full disk leaves no 0-byte report).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bmsfw.errors import UsageError
from bmsfw.update.errors import (
    AuditLogUnusableError,
    BackupDirUnusableError,
    DiskSpaceLowError,
    ReportDirUnusableError,
)

__all__ = ["MIN_FREE_BYTES", "RecordTargets", "check_record_targets", "write_atomic"]

# A backup, a report and an audit record together are a few tens of kilobytes;
# ask for a comfortable margin so the last write of a long update does not fail.
MIN_FREE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class RecordTargets:
    backup_dir: Path
    report_dir: Path | None = None
    audit_log: Path | None = None
    min_free_bytes: int = MIN_FREE_BYTES


def _usable_dir(folder: Path, error: type[UsageError], what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise error(f"{what} {folder} is a file, not a directory") from None
    except NotADirectoryError:
        raise error(f"{what} {folder}: a file is in its path") from None
    except OSError as exc:
        raise error(f"{what} {folder} cannot be created: {exc.strerror}") from None
    if not folder.is_dir():
        raise error(f"{what} {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".bmsfw-probe-")
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise error(f"{what} {folder} is not writable: {exc.strerror}") from None


def _enough_space(folder: Path, min_free_bytes: int, what: str) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise DiskSpaceLowError(f"free space of {what} {folder} unknown: {exc.strerror}") from None
    if free < min_free_bytes:
        raise DiskSpaceLowError(
            f"{what} {folder} has {free // 1024} KiB free, at least "
            f"{min_free_bytes // 1024} KiB are needed for the backup, report and audit record"
        )


def check_record_targets(targets: RecordTargets) -> None:
    """Raise the first problem with where the record goes (nothing is sent to a BMS yet)."""
    _usable_dir(targets.backup_dir, BackupDirUnusableError, "backup directory")
    _enough_space(targets.backup_dir, targets.min_free_bytes, "backup directory")
    if targets.report_dir is not None:
        _usable_dir(targets.report_dir, ReportDirUnusableError, "report directory")
        _enough_space(targets.report_dir, targets.min_free_bytes, "report directory")
    if targets.audit_log is not None:
        log = targets.audit_log
        _usable_dir(log.parent, AuditLogUnusableError, "folder of the audit log")
        if log.exists() and not log.is_file():
            raise AuditLogUnusableError(f"audit log {log} is not a file")
        try:
            with open(log, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise AuditLogUnusableError(
                f"audit log {log} cannot be appended to: {exc.strerror}"
            ) from None
        _enough_space(log.parent, targets.min_free_bytes, "folder of the audit log")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (temp file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
