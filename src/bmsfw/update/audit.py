"""Append-only audit log: who updated which BMS with which package, and the result.

One JSON object per line. Each record carries ``prev`` (the ``hash`` of the record
before it, 64 zeros for the first) and its own ``hash``: SHA-256 over the canonical
JSON of the record without ``hash``. Changing, inserting or deleting a line breaks
the chain at that point, which :func:`verify_audit_log` reports. (A chain shows
tampering by someone who does not rewrite every later line; keep a copy of the
last hash elsewhere — the report carries it — to catch that too.)
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bmsfw.update.errors import AuditLogTamperedError

__all__ = ["GENESIS_HASH", "AuditLog", "verify_audit_log"]

GENESIS_HASH = "0" * 64
_LOCK = threading.Lock()


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class AuditLog:
    """An audit log file; safe to share between threads and processes (flock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _LOCK, open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def append(self, event: str, fields: Mapping[str, Any], *, who: str | None = None) -> str:
        """Add one record and return its hash."""
        with self._locked() as fh:
            fh.seek(0)
            last_hash = GENESIS_HASH
            seq = 0
            for line in fh:
                if line.strip():
                    last = json.loads(line)
                    last_hash = str(last.get("hash", ""))
                    seq = int(last.get("seq", seq)) + 1
            record: dict[str, Any] = {
                "seq": seq,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "who": who or _operator(),
                "event": event,
                **dict(fields),
                "prev": last_hash,
            }
            # Normalise to the stored JSON form first, so the hash verifies on read-back.
            record = json.loads(json.dumps(record, ensure_ascii=False, default=str))
            record["hash"] = _record_hash(record)
            line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str) + "\n"
            fh.flush()
            size = os.fstat(fh.fileno()).st_size
            try:
                # One write of the whole line; a write that fails half-way (disk full)
                # is cut off again so the chain never ends in a broken record.
                data = line.encode("utf-8")
                written = 0
                while written < len(data):
                    written += os.write(fh.fileno(), data[written:])
                os.fsync(fh.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fh.fileno(), size)
                raise
            return str(record["hash"])

    def records(self) -> list[dict[str, Any]]:
        return verify_audit_log(self.path)


def verify_audit_log(path: str | Path) -> list[dict[str, Any]]:
    """Read the log and check the chain; raise ``AuditLogTamperedError`` at the first break."""
    file = Path(path)
    if not file.exists():
        return []
    records: list[dict[str, Any]] = []
    prev = GENESIS_HASH
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AuditLogTamperedError(f"{file} is not UTF-8 text (at byte {exc.start})") from exc
    # Records end at "\n" only: splitlines() would also split at U+0085 or U+2028 that
    # a device string in a record may carry (JSON leaves them unescaped).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise AuditLogTamperedError(f"{file}:{number} is not a JSON record") from exc
        if not isinstance(record, dict):
            raise AuditLogTamperedError(f"{file}:{number} is not a JSON object")
        if record.get("prev") != prev:
            raise AuditLogTamperedError(
                f"{file}:{number} does not follow the record before it "
                "(a record was removed, inserted or reordered)"
            )
        if record.get("hash") != _record_hash(record):
            raise AuditLogTamperedError(f"{file}:{number} was changed after it was written")
        prev = str(record["hash"])
        records.append(record)
    return records
