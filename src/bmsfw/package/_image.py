"""MCUboot image format: build, parse and verify, byte-compatible with imgtool 2.5.

Layout (little endian), as MCUboot's ``image.h`` and imgtool's ``image.py``::

    header (32 bytes, padded to hdr_size) | body (img_size) |
    protected TLV area (info 0x6908 + SEC_CNT, vendor TLVs; hdr.protected_tlv_size) |
    unprotected TLV area (info 0x6907 + SHA256, KEYHASH, PUBKEY, signature)

The SHA-256 covers header, body and protected TLVs; the signature signs that
digest. Verification streams the hashed region through a ``read(offset,
length)`` callable, so a device can check a whole flash bank without copying
it and memory stays bounded by one chunk plus the TLV area (at most 64 KiB).

bmsfw writes both KEYHASH and PUBKEY: a stock MCUboot finds its compiled-in key
by KEYHASH; an MCUboot with ``MCUBOOT_HW_KEY`` (key hash fused in OTP, which is
what our BMS does) takes the key from PUBKEY and checks its hash against OTP.
Each bootloader ignores the TLV it does not use.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Required, TypedDict, Unpack

from bmsfw.package import _encrypt
from bmsfw.package._crypto import (
    PrivateKey,
    PublicKey,
    algorithm_of,
    key_hash,
    load_public_key,
    public_key_der,
    sign_image_digest,
    verify_image_digest,
)
from bmsfw.package._encrypt import EncPublicKey
from bmsfw.package._model import HardwareCompat
from bmsfw.package.errors import (
    BadImageMagicError,
    BadImageSignatureError,
    BadTlvAreaError,
    ImageHashMismatchError,
    ImageKeyNotGivenError,
    InvalidManifestError,
    KeyFileError,
    KeyHashNotTrustedError,
    MalformedImageError,
    UnsignedImageError,
    UnsupportedAlgorithmError,
    UnsupportedImageError,
)
from bmsfw.package.version import ImageVersion, parse_image_version

__all__ = [
    "IMAGE_MAGIC",
    "ImageInfo",
    "ImageVersion",
    "McubootImage",
    "Tlv",
    "build_image",
    "build_image_and_bank_digest",
    "parse_image",
    "parse_image_stream",
    "verify_image",
    "verify_image_stream",
]

log = logging.getLogger(__name__)

IMAGE_MAGIC = 0x96F3B83D
IMAGE_HEADER_SIZE = 32
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
_HEADER = struct.Struct("<IIHHIIBBHII")
_TLV = struct.Struct("<HH")

TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_SHA256 = 0x10
TLV_SHA384 = 0x11
TLV_SHA512 = 0x12
TLV_RSA2048 = 0x20
TLV_ECDSASIG = 0x22
TLV_RSA3072 = 0x23
TLV_ED25519 = 0x24
TLV_SIG_PURE = 0x25
TLV_SEC_CNT = 0x50
TLV_ENC_EC256 = 0x32
TLV_ENC_X25519 = 0x33
# Vendor range per imgtool (0x00a0..0xfffe): bmsfw hardware compatibility record.
TLV_BMSFW_HW_COMPAT = 0x00B1

TLV_NAMES = {
    TLV_KEYHASH: "KEYHASH",
    TLV_PUBKEY: "PUBKEY",
    TLV_SHA256: "SHA256",
    TLV_SHA384: "SHA384",
    TLV_SHA512: "SHA512",
    TLV_RSA2048: "RSA2048",
    TLV_ECDSASIG: "ECDSASIG",
    TLV_RSA3072: "RSA3072",
    TLV_ED25519: "ED25519",
    TLV_SIG_PURE: "SIG_PURE",
    TLV_SEC_CNT: "SEC_CNT",
    TLV_ENC_EC256: "ENCEC256",
    TLV_ENC_X25519: "ENCX25519",
    TLV_BMSFW_HW_COMPAT: "BMSFW_HW_COMPAT",
}

IMAGE_F_ENCRYPTED_AES128 = 0x04
IMAGE_F_ENCRYPTED_AES256 = 0x08
IMAGE_F_RAM_LOAD = 0x20
IMAGE_F_COMPRESSED = 0x200 | 0x400 | 0x800

_HW_COMPAT_FORMAT = 1
_CHUNK = 64 * 1024
_VALID_ALIGN = (1, 2, 4, 8, 16, 32)

ReadFn = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Tlv:
    type: int
    offset: int  # of the value, from the start of the image
    value: bytes

    @property
    def name(self) -> str:
        return TLV_NAMES.get(self.type, f"0x{self.type:04x}")


@dataclass(frozen=True)
class McubootImage:
    """A parsed (not yet verified) MCUboot image."""

    load_addr: int
    header_size: int
    protected_tlv_size: int
    payload_size: int
    flags: int
    version: ImageVersion
    protected_tlvs: tuple[Tlv, ...]
    unprotected_tlvs: tuple[Tlv, ...]
    total_size: int  # end of the unprotected TLV area; bytes after it (slot padding) are ignored

    @property
    def payload_offset(self) -> int:
        return self.header_size

    @property
    def hashed_size(self) -> int:
        return self.header_size + self.payload_size + self.protected_tlv_size

    @property
    def security_counter(self) -> int | None:
        tlv = _single(self.protected_tlvs, TLV_SEC_CNT)
        return None if tlv is None else int.from_bytes(tlv.value, "little")

    @property
    def hardware(self) -> HardwareCompat | None:
        tlv = _single(self.protected_tlvs, TLV_BMSFW_HW_COMPAT)
        return None if tlv is None else decode_hw_compat(tlv.value)

    def tlv(self, tlv_type: int) -> Tlv | None:
        return _single(self.unprotected_tlvs, tlv_type)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & (IMAGE_F_ENCRYPTED_AES128 | IMAGE_F_ENCRYPTED_AES256))

    @property
    def enc_tlv(self) -> Tlv | None:
        """The ENC TLV (X25519 or EC256) of an encrypted image."""
        return self.tlv(TLV_ENC_X25519) or self.tlv(TLV_ENC_EC256)


@dataclass(frozen=True)
class ImageInfo:
    """What a successful verification established about an image."""

    version: ImageVersion
    security_counter: int | None
    hardware: HardwareCompat | None
    digest: bytes  # the SHA256 TLV value (header + body + protected TLVs)
    key_hash: bytes
    algorithm: str
    payload_size: int
    total_size: int


def _single(tlvs: Iterable[Tlv], tlv_type: int) -> Tlv | None:
    found = [t for t in tlvs if t.type == tlv_type]
    return found[0] if found else None


def encode_hw_compat(hw: HardwareCompat) -> bytes:
    out = bytearray([_HW_COMPAT_FORMAT])
    model = hw.model.encode()
    out += bytes([len(model)]) + model + bytes([len(hw.revisions)])
    for rev in hw.revisions:
        raw = rev.encode()
        out += bytes([len(raw)]) + raw
    return bytes(out)


def decode_hw_compat(value: bytes) -> HardwareCompat:
    try:
        if value[0] != _HW_COMPAT_FORMAT:
            raise BadTlvAreaError(f"hardware TLV format {value[0]} is unknown")
        pos = 1
        n = value[pos]
        model = value[pos + 1 : pos + 1 + n].decode()
        pos += 1 + n
        count = value[pos]
        pos += 1
        revisions = []
        for _ in range(count):
            n = value[pos]
            raw = value[pos + 1 : pos + 1 + n]
            if len(raw) != n:
                raise IndexError
            revisions.append(raw.decode())
            pos += 1 + n
        if pos != len(value):
            raise BadTlvAreaError("hardware TLV has trailing bytes")
        return HardwareCompat(model, tuple(revisions))
    except (IndexError, UnicodeDecodeError, InvalidManifestError) as exc:
        raise BadTlvAreaError(f"hardware compatibility TLV is malformed: {exc}") from None


def _pack_tlvs(magic: int, entries: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(_TLV.pack(t, len(v)) + v for t, v in entries)
    total = _TLV.size + len(body)
    if total > 0xFFFF:
        raise BadTlvAreaError(f"TLV area of {total} bytes exceeds 65535")
    return _TLV.pack(magic, total) + body


class ImageOptions(TypedDict, total=False):
    """The keywords of :func:`build_image_and_bank_digest` (its signature has the defaults)."""

    signing_key: Required[PrivateKey]
    version: Required[str]
    security_counter: Required[int]
    hardware: HardwareCompat | None
    header_size: int
    align: int
    load_addr: int
    public_key_format: Literal["hash", "full", "both"]
    encrypt_to: EncPublicKey | None


def build_image(payload: bytes, **options: Unpack[ImageOptions]) -> bytes:
    """Wrap raw firmware into a signed MCUboot image (what imgtool sign does).

    See :func:`build_image_and_bank_digest` for the parameters.
    """
    return build_image_and_bank_digest(payload, **options)[0]


def build_image_and_bank_digest(
    payload: bytes,
    *,
    signing_key: PrivateKey,
    version: str,
    security_counter: int,
    hardware: HardwareCompat | None = None,
    header_size: int = 0x200,
    align: int = 8,
    load_addr: int = 0,
    public_key_format: Literal["hash", "full", "both"] = "both",
    encrypt_to: EncPublicKey | None = None,
) -> tuple[bytes, bytes]:
    """A signed MCUboot image and the SHA-256 of what a BMS holds once it is installed.

    The second value is what a BMS reports as its active image digest (DID 0x0102: the
    bank up to the end of the TLVs). For a clear image it is the image's own SHA-256;
    for an encrypted one the BMS decrypts the body into its bank, so it is the digest
    of the image with the *plaintext* body, which only the builder can compute (a
    gateway or a fleet server never sees the plaintext).

    The body is padded with 0xff (erased flash) to a multiple of ``align`` so the
    TLV area starts on a flash write boundary. With ``encrypt_to`` (a device-class
    X25519 or P-256 public key) the body is encrypted as ``imgtool sign --encrypt``
    does (see _encrypt): flag ENCRYPTED_AES128, hash and signature over the
    plaintext, ENC TLV last.
    """
    algorithm = algorithm_of(signing_key)
    image_version = parse_image_version(version)
    if not IMAGE_HEADER_SIZE <= header_size <= 0xFFFF:
        raise MalformedImageError(f"header size {header_size} outside 32..65535")
    if align not in _VALID_ALIGN:
        raise MalformedImageError(f"alignment {align} is not one of {_VALID_ALIGN}")
    if not 0 <= security_counter <= 0xFFFFFFFF:
        raise MalformedImageError(f"security counter {security_counter} does not fit in u32")
    if not 0 <= load_addr <= 0xFFFFFFFF:
        raise MalformedImageError(f"load address {load_addr:#x} does not fit in u32")
    if encrypt_to is not None:
        align = max(align, 16)  # AES blocks; imgtool pads encrypted bodies to 16 bytes
    pad = (-len(payload)) % align
    body_size = len(payload) + pad
    if body_size > 0xFFFFFFFF:
        raise MalformedImageError("payload too large for an MCUboot image")

    prot_entries = [(TLV_SEC_CNT, struct.pack("<I", security_counter))]
    if hardware is not None:
        prot_entries.append((TLV_BMSFW_HW_COMPAT, encode_hw_compat(hardware)))
    protected = _pack_tlvs(TLV_PROT_INFO_MAGIC, prot_entries)

    flags = IMAGE_F_RAM_LOAD if load_addr else 0
    if encrypt_to is not None:
        flags |= IMAGE_F_ENCRYPTED_AES128
    header = _HEADER.pack(
        IMAGE_MAGIC,
        load_addr,
        header_size,
        len(protected),
        body_size,
        flags,
        image_version.major,
        image_version.minor,
        image_version.revision,
        image_version.build,
        0,
    )
    out = bytearray(header)
    out += b"\xff" * (header_size - IMAGE_HEADER_SIZE)
    out += payload
    out += b"\xff" * pad
    out += protected
    digest = hashlib.sha256(out).digest()

    public_der = public_key_der(signing_key)
    entries: list[tuple[int, bytes]] = [(TLV_SHA256, digest)]
    if public_key_format in ("hash", "both"):
        entries.append((TLV_KEYHASH, hashlib.sha256(public_der).digest()))
    if public_key_format in ("full", "both"):
        entries.append((TLV_PUBKEY, public_der))
    signature = sign_image_digest(signing_key, digest)
    entries.append((TLV_ED25519 if algorithm == "ed25519" else TLV_ECDSASIG, signature))
    if encrypt_to is not None:
        plainkey = _encrypt.new_plainkey(128)
        entries.append(
            (
                _encrypt.tlv_type_for(_encrypt.enc_scheme_of(encrypt_to)),
                _encrypt.wrap_key(encrypt_to, plainkey),
            )
        )
    tlvs = _pack_tlvs(TLV_INFO_MAGIC, entries)
    bank_sha256 = hashlib.sha256(bytes(out) + tlvs).digest()  # the plaintext body
    if encrypt_to is not None:
        body_end = header_size + body_size
        out[header_size:body_end] = _encrypt.encrypt_body(
            plainkey, bytes(out[header_size:body_end])
        )
    out += tlvs
    log.debug("built MCUboot image %s, %d bytes, key %s", image_version, len(out), algorithm)
    return bytes(out), bank_sha256


def _read_exact(read: ReadFn, size: int, offset: int, length: int, what: str) -> bytes:
    if offset < 0 or length < 0 or offset + length > size:
        raise MalformedImageError(
            f"image truncated: {what} needs bytes {offset}..{offset + length}, image has {size}"
        )
    data = read(offset, length)
    if len(data) != length:
        raise MalformedImageError(f"short read of {what}: wanted {length}, got {len(data)}")
    return bytes(data)


def _parse_tlv_entries(area: bytes, base_offset: int, what: str) -> tuple[Tlv, ...]:
    tlvs = []
    pos = _TLV.size
    while pos < len(area):
        if pos + _TLV.size > len(area):
            raise BadTlvAreaError(f"{what}: TLV entry header at {base_offset + pos} is cut off")
        tlv_type, length = _TLV.unpack_from(area, pos)
        start = pos + _TLV.size
        if start + length > len(area):
            raise BadTlvAreaError(
                f"{what}: TLV 0x{tlv_type:x} of {length} bytes runs past the area end"
            )
        tlvs.append(Tlv(tlv_type, base_offset + start, area[start : start + length]))
        pos = start + length
    types = [t.type for t in tlvs]
    for tlv_type in set(types):
        # MCUboot takes the first of each; two different values would let a
        # verifier and a bootloader see different images, so refuse duplicates.
        if types.count(tlv_type) > 1:
            raise BadTlvAreaError(f"{what}: TLV {TLV_NAMES.get(tlv_type, tlv_type)} repeated")
    return tuple(tlvs)


def parse_image_stream(read: ReadFn, size: int) -> McubootImage:
    """Parse header and TLV areas through ``read(offset, length)``; the body is not read."""
    if size < IMAGE_HEADER_SIZE:
        raise MalformedImageError(f"image of {size} bytes is shorter than the 32-byte header")
    raw = _read_exact(read, size, 0, IMAGE_HEADER_SIZE, "header")
    (magic, load_addr, hdr_size, prot_size, img_size, flags, major, minor, rev, build, _pad) = (
        _HEADER.unpack(raw)
    )
    if magic != IMAGE_MAGIC:
        raise BadImageMagicError(f"image magic is 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x}")
    if hdr_size < IMAGE_HEADER_SIZE:
        raise MalformedImageError(f"header size {hdr_size} is smaller than 32")
    if flags & IMAGE_F_ENCRYPTED_AES128 and flags & IMAGE_F_ENCRYPTED_AES256:
        raise MalformedImageError("image claims both AES-128 and AES-256 encryption")
    if flags & IMAGE_F_COMPRESSED:
        raise UnsupportedImageError("compressed (LZMA) MCUboot images are not supported")
    tlv_offset = hdr_size + img_size
    protected: tuple[Tlv, ...] = ()
    if prot_size:
        if prot_size < _TLV.size:
            raise BadTlvAreaError(f"protected TLV size {prot_size} is smaller than its header")
        area = _read_exact(read, size, tlv_offset, prot_size, "protected TLV area")
        magic2, total = _TLV.unpack_from(area, 0)
        if magic2 != TLV_PROT_INFO_MAGIC:
            raise BadTlvAreaError(f"protected TLV magic 0x{magic2:04x}, expected 0x6908")
        if total != prot_size:
            raise BadTlvAreaError(
                f"protected TLV length {total} disagrees with header's {prot_size}"
            )
        protected = _parse_tlv_entries(area, tlv_offset, "protected TLVs")
        tlv_offset += prot_size
    info = _read_exact(read, size, tlv_offset, _TLV.size, "TLV info")
    magic3, total = _TLV.unpack(info)
    if magic3 != TLV_INFO_MAGIC:
        raise BadTlvAreaError(f"TLV info magic 0x{magic3:04x} at {tlv_offset}, expected 0x6907")
    if total < _TLV.size:
        raise BadTlvAreaError(f"TLV area length {total} is smaller than its header")
    area = _read_exact(read, size, tlv_offset, total, "TLV area")
    unprotected = _parse_tlv_entries(area, tlv_offset, "TLVs")
    sec = _single(protected, TLV_SEC_CNT)
    if sec is not None and len(sec.value) != 4:
        raise BadTlvAreaError(f"SEC_CNT TLV has {len(sec.value)} bytes, expected 4")
    image = McubootImage(
        load_addr=load_addr,
        header_size=hdr_size,
        protected_tlv_size=prot_size,
        payload_size=img_size,
        flags=flags,
        version=ImageVersion(major, minor, rev, build),
        protected_tlvs=protected,
        unprotected_tlvs=unprotected,
        total_size=tlv_offset + total,
    )
    image.hardware  # noqa: B018 - decode now so a bad vendor TLV fails parsing, not later
    return image


def _bytes_reader(data: bytes | bytearray | memoryview) -> tuple[ReadFn, int]:
    view = memoryview(data).cast("B")

    def read(offset: int, length: int) -> bytes:
        # A memoryview slice is handed to hashlib without copying the image.
        return view[offset : offset + length]  # type: ignore[return-value]

    return read, len(view)


def parse_image(data: bytes | bytearray | memoryview) -> McubootImage:
    """Parse an MCUboot image held in memory (header, version, TLVs, offsets)."""
    read, size = _bytes_reader(data)
    return parse_image_stream(read, size)


def _resolve_key(
    image: McubootImage,
    key_hashes: Collection[bytes] | None,
    public_keys: Iterable[PublicKey | bytes],
) -> tuple[PublicKey, bytes]:
    pub_tlv = image.tlv(TLV_PUBKEY)
    hash_tlv = image.tlv(TLV_KEYHASH)
    if pub_tlv is not None:
        try:
            key = load_public_key(pub_tlv.value)
        except (KeyFileError, UnsupportedAlgorithmError) as exc:
            raise BadTlvAreaError(f"PUBKEY TLV holds no usable key: {exc.message}") from None
        digest = key_hash(key)
        if hash_tlv is not None and hash_tlv.value != digest:
            raise BadTlvAreaError("KEYHASH and PUBKEY TLVs name different keys")
    elif hash_tlv is not None:
        digest = hash_tlv.value
        candidates = [k if not isinstance(k, bytes) else load_public_key(k) for k in public_keys]
        matching = [k for k in candidates if key_hash(k) == digest]
        if not matching:
            if key_hashes is not None and digest not in key_hashes:
                raise KeyHashNotTrustedError(
                    f"image key hash {digest.hex()} is not among the trusted key hashes"
                )
            raise ImageKeyNotGivenError(
                f"image names its signing key only by hash (KEYHASH {digest.hex()[:16]}…, "
                "imgtool's default) and that public key was not given"
            )
        key = matching[0]
    else:
        raise UnsignedImageError("image has neither KEYHASH nor PUBKEY TLV")
    if key_hashes is not None and digest not in key_hashes:
        raise KeyHashNotTrustedError(
            f"image key hash {digest.hex()} is not among the {len(key_hashes)} trusted key hashes"
        )
    return key, digest


def _verify(
    read: ReadFn,
    size: int,
    key_hashes: Collection[bytes] | None,
    public_keys: Iterable[PublicKey | bytes],
    *,
    body_is_ciphertext: bool = False,
) -> ImageInfo:
    image = parse_image_stream(read, size)
    if body_is_ciphertext and not image.encrypted:
        raise MalformedImageError("image was declared encrypted but its header has no flag")
    if image.tlv(TLV_SIG_PURE) is not None:
        raise UnsupportedImageError("pure signatures (SIG_PURE) are not supported")
    sha_tlv = image.tlv(TLV_SHA256)
    if sha_tlv is None:
        if image.tlv(TLV_SHA384) or image.tlv(TLV_SHA512):
            raise UnsupportedImageError("only SHA-256 image hashes are supported")
        raise UnsignedImageError("image has no SHA256 TLV")
    if len(sha_tlv.value) != 32:
        raise BadTlvAreaError(f"SHA256 TLV has {len(sha_tlv.value)} bytes")
    if body_is_ciphertext:
        # The hash covers the plaintext, which only the device can see. What can be
        # checked here is that the vendor signed this digest; the BMS checks that
        # the decrypted image has it.
        digest = sha_tlv.value
    else:
        hasher = hashlib.sha256()
        offset = 0
        while offset < image.hashed_size:
            length = min(_CHUNK, image.hashed_size - offset)
            hasher.update(_read_exact(read, size, offset, length, "image body"))
            offset += length
        digest = hasher.digest()
    if digest != sha_tlv.value:
        raise ImageHashMismatchError(
            f"image SHA-256 is {digest.hex()}, SHA256 TLV says {sha_tlv.value.hex()}"
        )
    if key_hashes is None and image.tlv(TLV_PUBKEY) is None:
        # Integrity-only mode for imgtool images that name their key by hash alone.
        hash_tlv = image.tlv(TLV_KEYHASH)
        return ImageInfo(
            version=image.version,
            security_counter=image.security_counter,
            hardware=image.hardware,
            digest=digest,
            key_hash=b"" if hash_tlv is None else hash_tlv.value,
            algorithm="unverified",
            payload_size=image.payload_size,
            total_size=image.total_size,
        )
    key, digest_of_key = _resolve_key(image, key_hashes, public_keys)
    algorithm = algorithm_of(key)
    sig_tlv = image.tlv(TLV_ED25519 if algorithm == "ed25519" else TLV_ECDSASIG)
    if sig_tlv is None:
        if image.tlv(TLV_RSA2048) or image.tlv(TLV_RSA3072):
            raise UnsupportedImageError("RSA-signed images are not supported")
        raise UnsignedImageError(f"image has no {algorithm} signature TLV")
    if not verify_image_digest(key, sig_tlv.value, digest):
        raise BadImageSignatureError(
            f"{algorithm} signature does not verify with key {digest_of_key.hex()[:16]}…"
        )
    return ImageInfo(
        version=image.version,
        security_counter=image.security_counter,
        hardware=image.hardware,
        digest=digest,
        key_hash=digest_of_key,
        algorithm=algorithm,
        payload_size=image.payload_size,
        total_size=image.total_size,
    )


def verify_image_stream(
    read: ReadFn,
    size: int,
    *,
    key_hashes: Collection[bytes],
    public_keys: Iterable[PublicKey | bytes] = (),
) -> ImageInfo:
    """Verify an image through ``read(offset, length)`` in bounded memory (a flash bank).

    Checks the SHA256 TLV, that the signing key's hash is in ``key_hashes`` (the
    fused OTP values) and the ED25519 / ECDSA_SIG signature. The key comes from
    the PUBKEY TLV, or from ``public_keys`` for images that carry only KEYHASH
    (imgtool's default).
    """
    return _verify(read, size, key_hashes, public_keys)


def verify_image(
    data: bytes | bytearray | memoryview,
    *,
    key_hashes: Collection[bytes],
    public_keys: Iterable[PublicKey | bytes] = (),
) -> ImageInfo:
    """Verify an in-memory image; see :func:`verify_image_stream`."""
    read, size = _bytes_reader(data)
    return _verify(read, size, key_hashes, public_keys)


def check_encrypted_image(
    data: bytes | bytearray | memoryview, *, key_hashes: Collection[bytes] | None = None
) -> ImageInfo:
    """Check an encrypted image without its key: structure, trusted key, and the
    signature over the (plaintext) digest in its SHA256 TLV."""
    read, size = _bytes_reader(data)
    return _verify(read, size, key_hashes, (), body_is_ciphertext=True)


def check_image_integrity(data: bytes | bytearray | memoryview) -> ImageInfo:
    """Verify the SHA256 TLV, and the signature if the image carries its key (PUBKEY TLV).

    Proves nothing about who signed it; used where the signed manifest already
    vouches for the image's SHA-256 and no image key hashes were configured.
    Images with only a KEYHASH get the hash check alone (``algorithm`` "unverified").
    """
    read, size = _bytes_reader(data)
    return _verify(read, size, None, ())
