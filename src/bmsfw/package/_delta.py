"""Delta images: a detools patch from one exact base image to the new one.

detools (made for firmware on small MCUs; its C library applies patches in
a few KiB of RAM) writes a *sequential* patch: the new image is produced from
start to end while the base is read forward, so a BMS can read the active
bank and write the inactive one, never patching in place. The patch's own
compression is ``crle`` by default (detools' run-length coding of the mostly
zero bsdiff differences: an MCU decodes it with no buffer at all; on the
benchmark firmware it is as small as lzma), so the package stores it with
encoding ``raw``. ``heatshrink`` and ``lzma`` are available too.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import BinaryIO

import detools

from bmsfw.errors import BmsfwError
from bmsfw.package.errors import DeltaPatchError

__all__ = ["DELTA_COMPRESSIONS", "apply_delta", "create_delta"]

DELTA_COMPRESSIONS = ("crle", "heatshrink", "lzma", "none")
ReadFn = Callable[[int, int], bytes]


def create_delta(base: bytes, new: bytes, *, compression: str = "crle") -> bytes:
    if compression not in DELTA_COMPRESSIONS:
        raise DeltaPatchError(f"delta compression {compression!r} not in {DELTA_COMPRESSIONS}")
    out = io.BytesIO()
    detools.create_patch(
        io.BytesIO(base),
        io.BytesIO(new),
        out,
        compression=compression,
        patch_type="sequential",
        heatshrink_window_sz2=8,
        heatshrink_lookahead_sz2=7,
    )
    return out.getvalue()


class BankReader(io.RawIOBase):
    """A read-only seekable file over ``read(offset, length)`` (a flash bank)."""

    def __init__(self, read: ReadFn, size: int) -> None:
        self._read = read
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        start = min(max(self._pos, 0), self._size)
        end = min(start + size, self._size)
        self._pos = end
        return bytes(self._read(start, end - start)) if end > start else b""

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Sink(io.RawIOBase):
    def __init__(self, write: Callable[[bytes], None], limit: int) -> None:
        self._write = write
        self._limit = limit
        self.count = 0
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.count += len(data)
        if self.count > self._limit:
            raise DeltaPatchError(f"patch output exceeds the declared {self._limit} bytes")
        chunk = bytes(data)
        self.sha256.update(chunk)
        self._write(chunk)
        return len(chunk)


def apply_delta(
    base: BinaryIO | io.RawIOBase,
    patch: bytes,
    write: Callable[[bytes], None],
    *,
    expected_size: int,
    expected_sha256: bytes,
) -> None:
    """Apply a sequential patch, reading ``base`` forward and ``write``-ing the output in order.

    Raises DeltaPatchError when the patch is corrupt or its output is not the
    declared image (size and SHA-256), which a caller checks before activating.
    """
    sink = _Sink(write, expected_size)
    try:
        size = detools.apply_patch(base, io.BytesIO(patch), sink)
    except BmsfwError:
        raise  # ours, or the writer's (a flash failure, a power cut): not a patch problem
    except (detools.Error, ValueError, EOFError, OSError, IndexError, TypeError) as exc:
        raise DeltaPatchError(f"delta patch is corrupt: {exc}") from None
    except Exception as exc:  # the decompressors raise their own types
        raise DeltaPatchError(f"delta patch is corrupt: {type(exc).__name__}: {exc}") from None
    if size != expected_size or sink.count != expected_size:
        raise DeltaPatchError(f"patch produced {sink.count} bytes, manifest says {expected_size}")
    if sink.sha256.digest() != expected_sha256:
        raise DeltaPatchError("patched image SHA-256 differs from the manifest")
