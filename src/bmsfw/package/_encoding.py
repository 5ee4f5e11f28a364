"""Component encodings: how an image is stored in the package (raw or compressed).

A registry keyed by the manifest's ``encoding`` name, so lz4, heatshrink or
delta (against a named base digest) can be added as one entry each. Decoding
is bounded by the declared image size: a decompression bomb stops there.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from bmsfw.package.errors import ComponentDecodeError, UnsupportedEncodingError

__all__ = ["ENCODINGS", "decode", "encode", "suffix_for"]


@dataclass(frozen=True)
class Codec:
    suffix: str
    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes, int], bytes]  # (stored, expected_size) -> image


def _zstd_encode(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=10, write_content_size=True).compress(data)


def _zstd_decode(data: bytes, expected_size: int) -> bytes:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        out = reader.read(expected_size + 1)
    except zstandard.ZstdError as exc:
        raise ComponentDecodeError(f"zstd data is corrupt: {exc}") from None
    if len(out) != expected_size:
        raise ComponentDecodeError(
            f"zstd data decodes to {len(out)}{'+' if len(out) > expected_size else ''} bytes, "
            f"manifest says {expected_size}"
        )
    return out


def _raw_decode(data: bytes, expected_size: int) -> bytes:
    return data


ENCODINGS: dict[str, Codec] = {
    "raw": Codec("", lambda data: data, _raw_decode),
    "zstd": Codec(".zst", _zstd_encode, _zstd_decode),
}


def _codec(name: str) -> Codec:
    try:
        return ENCODINGS[name]
    except KeyError:
        raise UnsupportedEncodingError(
            f"encoding {name!r} is not supported (known: {', '.join(sorted(ENCODINGS))})"
        ) from None


def suffix_for(name: str) -> str:
    return _codec(name).suffix


def encode(name: str, data: bytes) -> bytes:
    return _codec(name).encode(data)


def decode(name: str, data: bytes, expected_size: int) -> bytes:
    return _codec(name).decode(data, expected_size)
