"""Component encodings: how an image is stored in the package and sent on the wire.

A registry keyed by the manifest's ``encoding`` name. Every codec has a
streaming decoder with bounded memory, because the BMS decodes while it
writes flash and a package can be hostile:

========== ===== =========================================================
name       DFI   decoder memory (what a small MCU needs)
========== ===== =========================================================
raw        0x0   none
zstd       0x1   window of at most 32 KiB (``window_log`` 15 at build time;
                 the decoder refuses frames asking for more)
lz4        0x2   LZ4 frame, 64 KiB blocks, block-independent (one block buffer)
heatshrink 0x3   1 KiB window + 16-byte lookahead (``-w 10 -l 4``), ~1.3 KiB RAM
lzma2thumb 0x4   raw LZMA2 (32 KiB dictionary) behind the ARM Thumb branch
                 filter, the codec MCUboot's own decompression uses for
                 Cortex-M images (imgtool ``--compression lzma2armthumb``);
                 ~32 KiB dictionary + ~16 KiB LZMA state. The filter turns
                 relative BL targets into absolute ones, so repeated calls
                 to one function look alike: the best ratio on dense -Os
                 Thumb code (1.52x vs zstd's 1.41x on the benchmark firmware)
========== ===== =========================================================

The DFI value is the high nibble of UDS RequestDownload's
dataFormatIdentifier (ISO 14229-1 "compressionMethod") and the value of the
Modbus transfer-encoding register. Decoding is bounded by the declared
image size: a decompression bomb stops one chunk past it.
"""

from __future__ import annotations

import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol, cast

import heatshrink2  # type: ignore[import-untyped]
import lz4.frame
import zstandard

from bmsfw.package.errors import ComponentDecodeError, UnsupportedEncodingError

__all__ = [
    "ENCODINGS",
    "HEATSHRINK_LOOKAHEAD_SZ2",
    "HEATSHRINK_WINDOW_SZ2",
    "ZSTD_MAX_WINDOW_BYTES",
    "Codec",
    "StreamDecoder",
    "decode",
    "decode_chunks",
    "dfi_for",
    "encode",
    "encoding_for_dfi",
    "new_decoder",
    "suffix_for",
]

ZSTD_WINDOW_LOG = 15
LZMA2_DICT_BYTES = 32 * 1024  # bounded decoder memory on the BMS
ZSTD_MAX_WINDOW_BYTES = 1 << ZSTD_WINDOW_LOG
HEATSHRINK_WINDOW_SZ2 = 10
HEATSHRINK_LOOKAHEAD_SZ2 = 4
_OUT_CHUNK = 4096  # decoders hand out at most this much per step (bounded RAM downstream)
_IN_CHUNK = 256  # heatshrink input per step: worst-case expansion stays a few KiB


class StreamDecoder(Protocol):
    """Push decoder: ``feed`` stored bytes, get decoded chunks; ``finish`` at the end."""

    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class Codec:
    name: str
    suffix: str
    dfi: int  # 0..15, high nibble of the UDS dataFormatIdentifier
    encode: Callable[[bytes], bytes]
    decoder: Callable[[int], StreamDecoder]  # (max_output) -> decoder


class _RawDecoder:
    def __init__(self, max_output: int) -> None:
        del max_output  # raw output is as long as its input, which the sink bounds

    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield bytes(data)

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _ZstdDecoder:
    """zstd through ``stream_writer``: output arrives in ``_OUT_CHUNK`` pieces, so one
    hostile input chunk cannot make one huge allocation (the sink stops it at the size)."""

    def __init__(self, max_output: int) -> None:
        self._out: list[bytes] = []
        self._total = 0
        self._max_output = max_output
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW_BYTES)
        self._writer = dctx.stream_writer(
            cast(IO[bytes], self), write_size=_OUT_CHUNK, write_return_read=True
        )
        self._done = False

    def write(self, data: bytes) -> int:  # called by zstandard with decoded output
        self._total += len(data)
        if self._total > self._max_output:
            # Stops a bomb inside one input chunk, before its output piles up.
            raise ComponentDecodeError(
                f"zstd data decodes to more than the declared {self._max_output} bytes"
            )
        self._out.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def feed(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), _IN_CHUNK * 4):
            try:
                self._writer.write(data[start : start + _IN_CHUNK * 4])
            except zstandard.ZstdError as exc:
                raise ComponentDecodeError(f"zstd data is corrupt: {exc}") from None
            yield from self._drain()

    def _drain(self) -> Iterator[bytes]:
        out, self._out = self._out, []
        yield from out

    def finish(self) -> Iterator[bytes]:
        try:
            self._writer.flush()  # type: ignore[no-untyped-call]
        except zstandard.ZstdError as exc:
            raise ComponentDecodeError(f"zstd data is corrupt: {exc}") from None
        yield from self._drain()


class _Lz4Decoder:
    def __init__(self, max_output: int) -> None:
        del max_output  # at most _OUT_CHUNK per step
        self._d = lz4.frame.LZ4FrameDecompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        pending = bytes(data)
        while True:
            if self._d.eof:
                if pending or self._d.unused_data:
                    raise ComponentDecodeError("lz4 data continues after the end of the frame")
                return
            try:
                out = self._d.decompress(pending, max_length=_OUT_CHUNK)
            except RuntimeError as exc:
                raise ComponentDecodeError(f"lz4 data is corrupt: {exc}") from None
            pending = b""
            if out:
                yield out
            if self._d.needs_input:
                return

    def finish(self) -> Iterator[bytes]:
        if not self._d.eof:
            raise ComponentDecodeError("lz4 frame is truncated (no end mark)")
        return iter(())


class _HeatshrinkDecoder:
    def __init__(self, max_output: int) -> None:
        del max_output  # 256 input bytes expand to at most ~2.2 KiB
        self._d = heatshrink2.core.Encoder(
            heatshrink2.core.Reader(_IN_CHUNK, HEATSHRINK_WINDOW_SZ2, HEATSHRINK_LOOKAHEAD_SZ2)
        )

    def feed(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), _IN_CHUNK):
            try:
                out = self._d.fill(data[start : start + _IN_CHUNK])
            except RuntimeError as exc:
                raise ComponentDecodeError(f"heatshrink data is corrupt: {exc}") from None
            if out:
                yield bytes(out)

    def finish(self) -> Iterator[bytes]:
        try:
            out = self._d.finish()
        except RuntimeError as exc:
            raise ComponentDecodeError(f"heatshrink data is corrupt: {exc}") from None
        if out:
            yield bytes(out)


_LZMA2_THUMB_FILTERS = (
    {"id": lzma.FILTER_ARMTHUMB},
    {"id": lzma.FILTER_LZMA2, "dict_size": LZMA2_DICT_BYTES},
)


class _Lzma2ThumbDecoder:
    def __init__(self, max_output: int) -> None:
        del max_output  # at most _OUT_CHUNK per step
        self._d = lzma.LZMADecompressor(
            format=lzma.FORMAT_RAW, filters=[dict(f) for f in _LZMA2_THUMB_FILTERS]
        )

    def feed(self, data: bytes) -> Iterator[bytes]:
        pending = bytes(data)
        while True:
            if self._d.eof:
                if pending or self._d.unused_data:
                    raise ComponentDecodeError("lzma2 data continues after its end mark")
                return
            try:
                out = self._d.decompress(pending, max_length=_OUT_CHUNK)
            except lzma.LZMAError as exc:
                raise ComponentDecodeError(f"lzma2 data is corrupt: {exc}") from None
            pending = b""
            if out:
                yield out
            if self._d.needs_input:
                return

    def finish(self) -> Iterator[bytes]:
        if not self._d.eof:
            raise ComponentDecodeError("lzma2 stream is truncated (no end mark)")
        return iter(())


def _lzma2_thumb_encode(data: bytes) -> bytes:
    filters = [dict(f) for f in _LZMA2_THUMB_FILTERS]
    filters[1]["preset"] = 9 | lzma.PRESET_EXTREME
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)


def _zstd_encode(data: bytes) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        19, window_log=ZSTD_WINDOW_LOG, write_content_size=True, write_checksum=False
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


def _lz4_encode(data: bytes) -> bytes:
    return bytes(
        lz4.frame.compress(
            data,
            compression_level=lz4.frame.COMPRESSIONLEVEL_MAX,
            block_size=lz4.frame.BLOCKSIZE_MAX64KB,
            block_linked=False,
            content_checksum=False,
            store_size=True,
        )
    )


def _heatshrink_encode(data: bytes) -> bytes:
    return bytes(
        heatshrink2.compress(
            data, window_sz2=HEATSHRINK_WINDOW_SZ2, lookahead_sz2=HEATSHRINK_LOOKAHEAD_SZ2
        )
    )


ENCODINGS: dict[str, Codec] = {
    "raw": Codec("raw", "", 0x0, bytes, _RawDecoder),
    "zstd": Codec("zstd", ".zst", 0x1, _zstd_encode, _ZstdDecoder),
    "lz4": Codec("lz4", ".lz4", 0x2, _lz4_encode, _Lz4Decoder),
    "heatshrink": Codec("heatshrink", ".hs", 0x3, _heatshrink_encode, _HeatshrinkDecoder),
    "lzma2thumb": Codec("lzma2thumb", ".lzma2", 0x4, _lzma2_thumb_encode, _Lzma2ThumbDecoder),
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


def dfi_for(name: str) -> int:
    return _codec(name).dfi


def encoding_for_dfi(nibble: int) -> str:
    for codec in ENCODINGS.values():
        if codec.dfi == nibble:
            return codec.name
    raise UnsupportedEncodingError(f"compression method 0x{nibble:x} is not supported")


def new_decoder(name: str, max_output: int) -> StreamDecoder:
    return _codec(name).decoder(max_output)


def encode(name: str, data: bytes) -> bytes:
    return _codec(name).encode(data)


def decode_chunks(
    name: str, chunks: Iterator[bytes] | list[bytes], expected_size: int
) -> Iterator[bytes]:
    """Decode a stream of stored chunks, refusing output beyond ``expected_size``."""
    decoder = new_decoder(name, expected_size)
    produced = 0

    def bounded(parts: Iterator[bytes]) -> Iterator[bytes]:
        nonlocal produced
        for part in parts:
            produced += len(part)
            if produced > expected_size:
                raise ComponentDecodeError(
                    f"{name} data decodes to more than the declared {expected_size} bytes"
                )
            yield part

    for chunk in chunks:
        yield from bounded(decoder.feed(chunk))
    yield from bounded(decoder.finish())
    if produced != expected_size:
        raise ComponentDecodeError(
            f"{name} data decodes to {produced} bytes, manifest says {expected_size}"
        )


def decode(name: str, data: bytes, expected_size: int) -> bytes:
    step = 64 * 1024
    chunks = (data[i : i + step] for i in range(0, len(data), step))
    return b"".join(decode_chunks(name, chunks, expected_size))
