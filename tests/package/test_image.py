"""MCUboot images: build, parse, verify (in memory and streamed), and each image error."""

from __future__ import annotations

import hashlib
import struct

import pytest

from bmsfw.package import (
    HardwareCompat,
    VendorPki,
    build_image,
    generate_key,
    key_hash,
    parse_image,
    verify_image,
    verify_image_stream,
)
from bmsfw.package import errors as E  # noqa: N812 - short alias keeps the tables readable
from bmsfw.package._image import TLV_INFO_MAGIC, _pack_tlvs

HW = HardwareCompat("BMS-48V", ("B", "C"))


def _image(pki: VendorPki, payload: bytes = b"\x11" * 1000, **kw: object) -> bytes:
    args: dict[str, object] = {
        "signing_key": pki.image_signing_key,
        "version": "1.2.3+4",
        "security_counter": 9,
        "hardware": HW,
    }
    args.update(kw)
    return build_image(payload, **args)  # type: ignore[arg-type]


def test_build_parse_verify_roundtrip(pki: VendorPki) -> None:
    data = _image(pki, b"abc" * 333)
    image = parse_image(data)
    assert image.header_size == 0x200
    assert image.payload_size == 1000  # 999 padded to the 8-byte alignment
    assert data[image.payload_offset : image.payload_offset + 999] == b"abc" * 333
    assert str(image.version) == "1.2.3+4"
    assert image.security_counter == 9
    assert image.hardware == HW
    assert next(t.name for t in image.unprotected_tlvs) == "SHA256"
    info = verify_image(data, key_hashes=[key_hash(pki.image_signing_key)])
    assert info.digest == hashlib.sha256(data[: image.hashed_size]).digest()
    assert info.key_hash == key_hash(pki.image_signing_key)
    assert info.security_counter == 9 and info.hardware == HW


def test_stream_verification_reads_in_chunks(pki: VendorPki) -> None:
    data = _image(pki, bytes(300_000))
    reads: list[int] = []

    def read(offset: int, length: int) -> bytes:
        reads.append(length)
        return data[offset : offset + length]

    # Slot padding after the TLV area (erased flash) is ignored, as MCUboot does.
    info = verify_image_stream(read, len(data), key_hashes=[key_hash(pki.image_signing_key)])
    assert info.payload_size == 300_000
    assert max(reads) <= 64 * 1024


def test_trailing_slot_padding_is_ignored(pki: VendorPki) -> None:
    data = _image(pki) + b"\xff" * 4096
    assert (
        verify_image(data, key_hashes=[key_hash(pki.image_signing_key)]).total_size
        == len(data) - 4096
    )


def test_keyhash_only_image_needs_the_public_key(pki: VendorPki) -> None:
    data = _image(pki, public_key_format="hash")
    trusted = [key_hash(pki.image_signing_key)]
    with pytest.raises(E.ImageKeyNotGivenError) as exc:
        verify_image(data, key_hashes=trusted)
    assert exc.value.code == "BMSFW-E131"
    with pytest.raises(E.KeyHashNotTrustedError) as untrusted:
        verify_image(data, key_hashes=[bytes(32)])
    assert untrusted.value.code == "BMSFW-E124"
    info = verify_image(data, key_hashes=trusted, public_keys=[pki.image_signing_key.public_key()])
    assert info.key_hash == trusted[0]


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def test_bad_magic(pki: VendorPki) -> None:
    with pytest.raises(E.BadImageMagicError) as exc:
        parse_image(_flip(_image(pki), 0))
    assert exc.value.code == "BMSFW-E121"


@pytest.mark.parametrize("cut", [0, 10, 31, 600, -1])
def test_truncated(pki: VendorPki, cut: int) -> None:
    data = _image(pki)
    with pytest.raises(E.MalformedImageError) as exc:
        parse_image(data[:cut])
    assert exc.value.code == "BMSFW-E120"


def test_bad_tlv_magic(pki: VendorPki) -> None:
    data = _image(pki)
    image = parse_image(data)
    with pytest.raises(E.BadTlvAreaError) as exc:
        parse_image(_flip(data, image.hashed_size))
    assert exc.value.code == "BMSFW-E122"


def test_duplicate_tlv_rejected(pki: VendorPki) -> None:
    data = _image(pki)
    image = parse_image(data)
    sha = image.unprotected_tlvs[0].value
    area = _pack_tlvs(TLV_INFO_MAGIC, [(0x10, sha), (0x10, bytes(32))])
    with pytest.raises(E.BadTlvAreaError):
        parse_image(data[: image.hashed_size] + area)


def test_payload_tamper_is_hash_mismatch(pki: VendorPki) -> None:
    data = _image(pki)
    with pytest.raises(E.ImageHashMismatchError) as exc:
        verify_image(_flip(data, 0x200 + 5), key_hashes=[key_hash(pki.image_signing_key)])
    assert exc.value.code == "BMSFW-E123"


def test_untrusted_key(pki: VendorPki) -> None:
    with pytest.raises(E.KeyHashNotTrustedError) as exc:
        verify_image(_image(pki), key_hashes=[bytes(32)])
    assert exc.value.code == "BMSFW-E124"


def test_bad_signature(pki: VendorPki) -> None:
    data = _image(pki)
    image = parse_image(data)
    sig = image.unprotected_tlvs[-1]
    with pytest.raises(E.BadImageSignatureError) as exc:
        verify_image(_flip(data, sig.offset + 10), key_hashes=[key_hash(pki.image_signing_key)])
    assert exc.value.code == "BMSFW-E125"


def test_signature_by_other_key_with_swapped_pubkey(pki: VendorPki) -> None:
    """Replacing PUBKEY/KEYHASH with a trusted key's but keeping the old signature fails."""
    other = generate_key("ed25519")
    data = build_image(b"x" * 64, signing_key=other, version="1.0.0", security_counter=0)
    image = parse_image(data)
    real = _image(pki, b"x" * 64, hardware=None, version="1.0.0", security_counter=0)
    real_image = parse_image(real)
    forged = real[: real_image.hashed_size] + data[image.hashed_size :]
    with pytest.raises(E.KeyHashNotTrustedError):
        verify_image(forged, key_hashes=[key_hash(pki.image_signing_key)])


def test_unsigned_image(pki: VendorPki) -> None:
    data = _image(pki)
    image = parse_image(data)
    sha = image.unprotected_tlvs[0].value
    area = _pack_tlvs(TLV_INFO_MAGIC, [(0x10, sha)])
    with pytest.raises(E.UnsignedImageError) as exc:
        verify_image(data[: image.hashed_size] + area, key_hashes=[bytes(32)])
    assert exc.value.code == "BMSFW-E126"


def test_encrypted_flag_is_hashed(pki: VendorPki) -> None:
    """Encrypted images are supported (issue 8), but the flag is in the hashed header:
    setting it on a signed clear image breaks the hash."""
    data = bytearray(_image(pki))
    flags = struct.unpack_from("<I", data, 16)[0] | 0x04
    struct.pack_into("<I", data, 16, flags)
    assert parse_image(bytes(data)).encrypted
    with pytest.raises(E.ImageHashMismatchError):
        verify_image(bytes(data), key_hashes=[key_hash(pki.image_signing_key)])
    struct.pack_into("<I", data, 16, flags | 0x08)
    with pytest.raises(E.MalformedImageError):
        parse_image(bytes(data))


def test_build_rejects_bad_arguments(pki: VendorPki) -> None:
    with pytest.raises(E.InvalidManifestError):
        _image(pki, version="1.2")
    with pytest.raises(E.MalformedImageError):
        _image(pki, align=3)
    with pytest.raises(E.MalformedImageError):
        _image(pki, security_counter=2**32)


def test_decrypted_digest_is_optional_and_only_on_encrypted_components() -> None:
    """``decrypted_sha256`` (what a BMS reports once it decrypted the image into its bank)
    is optional in a v2 manifest, 64 hex digits, and only on an encrypted component."""
    from bmsfw.package._manifest import Component, _component_from_dict

    digest, decrypted = b"\x01" * 32, b"\x02" * 32
    enc = Component("app", 64, digest, "raw", 64, digest, encryption="ecies-x25519", enc_key=b"k")
    named = Component(**{**enc.__dict__, "decrypted_sha256": decrypted})
    raw = named.to_dict(2)
    assert raw["decrypted_sha256"] == decrypted.hex()
    assert _component_from_dict(raw, 2) == named
    assert "decrypted_sha256" not in enc.to_dict(2)  # absent when unknown: older readers
    assert _component_from_dict(enc.to_dict(2), 2) == enc
    for bad in ("02", "zz" * 32, 5, "02" * 32 + "0"):
        with pytest.raises(E.InvalidManifestError):
            _component_from_dict({**raw, "decrypted_sha256": bad}, 2)
    clear = Component("app", 64, digest, "raw", 64, digest).to_dict(2)
    with pytest.raises(E.InvalidManifestError):
        _component_from_dict({**clear, "decrypted_sha256": decrypted.hex()}, 2)
