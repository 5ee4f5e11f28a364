"""The release header: the small signed part of a package a BMS needs without the zip.

One canonical binary blob (little endian)::

    magic "BMSFWHDR" | u16 format version | u16 section count |
    sections: u16 tag | u32 length | bytes

Tags: 1 manifest (canonical JSON, exactly one), 2 signature (exactly one),
3 certificate (DER, signer first, then issuers, 1..4), 4 revocation list (DER
CRL, 0..8). Sections appear in tag order; any other order, tag, count or
trailing byte is rejected, so each header has exactly one encoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bmsfw.package.errors import MalformedPackageError, UnsupportedFormatVersionError

__all__ = ["HEADER_FORMAT_VERSION", "ReleaseHeader", "decode_header", "encode_header"]

HEADER_MAGIC = b"BMSFWHDR"
HEADER_FORMAT_VERSION = 1
MAX_HEADER_BYTES = 512 * 1024
_PREFIX = struct.Struct("<8sHH")
_SECTION = struct.Struct("<HI")
TAG_MANIFEST, TAG_SIGNATURE, TAG_CERTIFICATE, TAG_CRL = 1, 2, 3, 4
_LIMITS = {TAG_MANIFEST: (1, 1), TAG_SIGNATURE: (1, 1), TAG_CERTIFICATE: (1, 4), TAG_CRL: (0, 8)}


@dataclass(frozen=True)
class ReleaseHeader:
    manifest: bytes
    signature: bytes
    certificates: tuple[bytes, ...]
    revocation_lists: tuple[bytes, ...] = ()


def encode_header(header: ReleaseHeader) -> bytes:
    sections = [(TAG_MANIFEST, header.manifest), (TAG_SIGNATURE, header.signature)]
    sections += [(TAG_CERTIFICATE, c) for c in header.certificates]
    sections += [(TAG_CRL, c) for c in header.revocation_lists]
    out = bytearray(_PREFIX.pack(HEADER_MAGIC, HEADER_FORMAT_VERSION, len(sections)))
    for tag, value in sections:
        out += _SECTION.pack(tag, len(value)) + value
    return bytes(out)


def decode_header(data: bytes) -> ReleaseHeader:
    if len(data) > MAX_HEADER_BYTES:
        raise MalformedPackageError(f"release header of {len(data)} bytes is too large")
    if len(data) < _PREFIX.size:
        raise MalformedPackageError(f"release header truncated at {len(data)} bytes")
    magic, version, count = _PREFIX.unpack_from(data, 0)
    if magic != HEADER_MAGIC:
        raise MalformedPackageError("release header magic is wrong")
    if version != HEADER_FORMAT_VERSION:
        raise UnsupportedFormatVersionError(
            f"release header format {version}; this bmsfw reads {HEADER_FORMAT_VERSION}"
        )
    pos = _PREFIX.size
    found: dict[int, list[bytes]] = {tag: [] for tag in _LIMITS}
    last_tag = 0
    for _ in range(count):
        if pos + _SECTION.size > len(data):
            raise MalformedPackageError("release header truncated in a section header")
        tag, length = _SECTION.unpack_from(data, pos)
        pos += _SECTION.size
        if tag not in _LIMITS or tag < last_tag:
            raise MalformedPackageError(f"release header section {tag} unknown or out of order")
        if pos + length > len(data):
            raise MalformedPackageError(f"release header section {tag} truncated")
        found[tag].append(data[pos : pos + length])
        pos += length
        last_tag = tag
    if pos != len(data):
        raise MalformedPackageError(f"release header has {len(data) - pos} trailing bytes")
    for tag, (low, high) in _LIMITS.items():
        if not low <= len(found[tag]) <= high:
            raise MalformedPackageError(
                f"release header has {len(found[tag])} of type {tag} (allowed {low}..{high})"
            )
    return ReleaseHeader(
        manifest=found[TAG_MANIFEST][0],
        signature=found[TAG_SIGNATURE][0],
        certificates=tuple(found[TAG_CERTIFICATE]),
        revocation_lists=tuple(found[TAG_CRL]),
    )
