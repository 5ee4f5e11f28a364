"""Release files in the fleet database itself: any server process, on any host, serves
any release with nothing shared but the database.

A file is stored once per SHA-256 as numbered chunks of :data:`CHUNK_BYTES` in the
``artifact_chunks`` table (``BYTEA`` on PostgreSQL, ``BLOB`` on SQLite), written in the
same transaction as its release row: an upload that fails leaves nothing behind, and a
release row never exists without its file. A download reads only the chunks its byte
range covers, one at a time (a Range request for the last kilobyte reads one chunk).
A BMS package is a few hundred KiB; the upload limit (32 MiB by default) bounds it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from sqlalchemy import Connection, Engine, Table, func, select

from bmsfw.fleet.errors import ArtifactStoreError
from bmsfw.fleet.models import ArtifactChunk, Release

__all__ = ["CHUNK_BYTES", "ArtifactStore", "ByteRange", "parse_range"]

CHUNK_BYTES = 256 * 1024
_T = cast(Table, ArtifactChunk.__table__)


class ArtifactStore:
    """Chunked release files in the database (see the module text)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def put(conn: Connection, sha256: str, source: bytes | IO[bytes]) -> None:
        """Store the file ``source`` (bytes, or a seekable file read a chunk at a time)
        under ``sha256`` inside ``conn``'s transaction (idempotent). Bytes that do not
        hash to ``sha256`` raise ArtifactStoreError: the caller's transaction, rolled
        back, keeps none of the chunks already inserted."""
        present = conn.execute(
            select(func.count()).select_from(_T).where(_T.c.sha256 == sha256)
        ).scalar_one()
        if present:
            return
        file = io.BytesIO(source) if isinstance(source, bytes) else source
        file.seek(0)
        digest = hashlib.sha256()
        seq = 0
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
            conn.execute(_T.insert(), {"sha256": sha256, "seq": seq, "data": chunk})
            seq += 1
        if digest.hexdigest() != sha256:
            raise ArtifactStoreError(f"artifact bytes do not hash to {sha256}")

    def check(self, sha256: str, size_bytes: int) -> None:
        """Refuse (E611) a file that is missing or whose stored size differs from its record."""
        with self.engine.connect() as conn:
            stored = conn.execute(
                select(func.coalesce(func.sum(func.length(_T.c.data)), -1)).where(
                    _T.c.sha256 == sha256
                )
            ).scalar_one()
        if int(stored) < 0:
            raise ArtifactStoreError(f"artifact {sha256} is missing from the database")
        if int(stored) != size_bytes:
            raise ArtifactStoreError(
                f"artifact {sha256} has {stored} bytes stored, {size_bytes} recorded"
            )

    def read(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` .. ``end`` (inclusive) of the file, chunk by chunk."""
        first, last = start // CHUNK_BYTES, end // CHUNK_BYTES
        for seq in range(first, last + 1):
            with self.engine.connect() as conn:
                chunk = conn.execute(
                    select(_T.c.data).where(_T.c.sha256 == sha256, _T.c.seq == seq)
                ).scalar_one_or_none()
            if chunk is None:
                raise ArtifactStoreError(f"artifact {sha256} lacks chunk {seq}")
            lo = start - seq * CHUNK_BYTES if seq == first else 0
            hi = end - seq * CHUNK_BYTES + 1 if seq == last else len(chunk)
            yield bytes(chunk[lo:hi])

    def import_directory(self, root: Path) -> int:
        """Copy release files of an older server's ``--artifacts`` directory
        (``sha256/<aa>/<digest>``) into the database for releases that lack them;
        returns how many were imported. Files that do not match their release are skipped."""
        imported = 0
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(Release.sha256, Release.size_bytes).where(
                    ~select(_T.c.seq).where(_T.c.sha256 == Release.sha256).exists()
                )
            ).all()
            for sha256, size in rows:
                path = root / "sha256" / sha256[:2] / sha256
                if not path.is_file() or path.stat().st_size != size:
                    continue
                with path.open("rb") as file:
                    digest = hashlib.file_digest(file, "sha256").hexdigest()
                    if digest == sha256:
                        self.put(conn, sha256, file)
                        imported += 1
        return imported


class ByteRange:
    """The part of a file a GET answers: ``start`` .. ``end`` inclusive, and the status."""

    __slots__ = ("end", "start", "status")

    def __init__(self, start: int, end: int, status: int) -> None:
        self.start, self.end, self.status = start, end, status


def parse_range(header: str | None, if_range: str | None, etag: str, size: int) -> ByteRange:
    """What to send for a ``Range`` header (one range; anything else gets the whole file).

    ``If-Range`` that is not the file's ETag sends the whole file (it changed); a range
    starting at or past the end is 416 (``status`` 416, nothing to send).
    """
    whole = ByteRange(0, size - 1, 200)
    if not header or (if_range is not None and if_range.strip() != etag):
        return whole
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return whole
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return whole
    try:
        if first:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        else:  # a suffix: the last N bytes
            start, end = max(0, size - int(last)), size - 1
    except ValueError:
        return whole
    if start < 0 or start >= size or end < start:
        return ByteRange(0, -1, 416)
    return ByteRange(start, end, 206)
