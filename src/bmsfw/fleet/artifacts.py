"""Content-addressed artifact store on the local disk.

A release file is stored once under ``<root>/sha256/<aa>/<digest>`` (the first
two hex digits fan the directory out). Writes go to a temporary file and are
moved into place with ``os.replace``, so a crash never leaves a half file
under a digest name, and two processes storing the same file at once is harmless.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from bmsfw.fleet.errors import ArtifactStoreError

__all__ = ["ArtifactStore"]


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ArtifactStoreError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_for(digest)
        if target.exists() and target.stat().st_size == len(data):
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def remove(self, sha256: str) -> None:
        """Drop a stored file (an upload whose database record failed)."""
        self.path_for(sha256).unlink(missing_ok=True)

    def open_checked(self, sha256: str, size_bytes: int) -> Path:
        """The file for ``sha256``, after checking it exists with the recorded size."""
        path = self.path_for(sha256)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise ArtifactStoreError(f"artifact {sha256} is missing from {self.root}") from None
        if actual != size_bytes:
            raise ArtifactStoreError(
                f"artifact {sha256} has {actual} bytes on disk, {size_bytes} recorded"
            )
        return path

    def verify(self, sha256: str) -> bool:
        """Re-hash a stored file (for audits; downloads trust the size check)."""
        digest = hashlib.sha256()
        with self.path_for(sha256).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest() == sha256
