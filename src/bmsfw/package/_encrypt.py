"""MCUboot image encryption (ECIES-X25519 and ECIES-P256, AES-CTR), as imgtool does it.

The scheme (imgtool 2.5 ``image.py``, MCUboot ``enc_key.c``):

* a fresh random AES key (16 bytes; 32 with ``IMAGE_F_ENCRYPTED_AES256``)
  encrypts the image *body* (bytes ``header_size .. header_size+img_size``)
  with AES-CTR, nonce 0. Header and TLVs stay clear;
* the image hash and signature cover the *plaintext* (header with the
  ENCRYPTED flag set + plaintext body + protected TLVs), so a bootloader
  that decrypted the body checks it like any other image;
* the AES key is wrapped for the device class: an ephemeral key pair,
  ECDH with the device-class public key, HKDF-SHA256 (no salt, info
  ``MCUBoot_ECIES_v1``) giving AES key ‖ 32-byte MAC key, the AES key
  encrypted with AES-CTR (nonce 0) and HMAC-SHA256 over that ciphertext;
* TLV ``ENCX25519`` (0x33) = ephemeral public key (32) ‖ MAC (32) ‖ wrapped
  key; ``ENCEC256`` (0x32) = ephemeral point (65, uncompressed) ‖ MAC ‖ key.

Only the device class holds the private key (in the BMS's OTP), so servers,
gateways and the wire see ciphertext only.
"""

from __future__ import annotations

import hmac as py_hmac
import os
from dataclasses import dataclass
from typing import Literal, TypeAlias

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bmsfw.package.errors import DecryptionError, KeyFileError

__all__ = [
    "ENC_SCHEMES",
    "TLV_ENC_EC256",
    "TLV_ENC_X25519",
    "BodyDecryptor",
    "EncPrivateKey",
    "EncPublicKey",
    "EncScheme",
    "enc_scheme_of",
    "generate_encryption_key",
    "load_encryption_private_key",
    "load_encryption_public_key",
    "unwrap_key",
    "wrap_key",
]

TLV_ENC_EC256 = 0x32
TLV_ENC_X25519 = 0x33
_INFO = b"MCUBoot_ECIES_v1"
_MAC_LEN = 32

EncScheme: TypeAlias = Literal["ecies-x25519", "ecies-p256"]
ENC_SCHEMES: tuple[EncScheme, ...] = ("ecies-x25519", "ecies-p256")
EncPrivateKey: TypeAlias = x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey
EncPublicKey: TypeAlias = x25519.X25519PublicKey | ec.EllipticCurvePublicKey


def enc_scheme_of(key: EncPrivateKey | EncPublicKey) -> EncScheme:
    if isinstance(key, x25519.X25519PrivateKey | x25519.X25519PublicKey):
        return "ecies-x25519"
    if isinstance(key.curve, ec.SECP256R1):
        return "ecies-p256"
    raise KeyFileError(f"encryption keys are X25519 or P-256, not {key.curve.name}")


def tlv_type_for(scheme: str) -> int:
    return TLV_ENC_X25519 if scheme == "ecies-x25519" else TLV_ENC_EC256


def generate_encryption_key(scheme: EncScheme = "ecies-x25519") -> EncPrivateKey:
    if scheme == "ecies-x25519":
        return x25519.X25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def load_encryption_private_key(pem: bytes, password: bytes | None = None) -> EncPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not a readable encryption private key: {exc}") from None
    if not isinstance(key, x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{type(key).__name__} is not an X25519 or P-256 key")
    enc_scheme_of(key)
    return key


def load_encryption_public_key(pem: bytes) -> EncPublicKey:
    """A device-class public key (PEM SubjectPublicKeyInfo, or a private key PEM)."""
    if b"PRIVATE KEY" in pem:
        return load_encryption_private_key(pem).public_key()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not a readable encryption public key: {exc}") from None
    if not isinstance(key, x25519.X25519PublicKey | ec.EllipticCurvePublicKey):
        raise KeyFileError(f"{type(key).__name__} is not an X25519 or P-256 key")
    enc_scheme_of(key)
    return key


def private_raw(key: EncPrivateKey) -> bytes:
    """The 32 private bytes a BMS keeps in OTP."""
    if isinstance(key, x25519.X25519PrivateKey):
        return key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    return key.private_numbers().private_value.to_bytes(32, "big")


def private_from_raw(scheme: EncScheme, raw: bytes) -> EncPrivateKey:
    if scheme == "ecies-x25519":
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


def _aes_ctr(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(data) + enc.finalize()


def _derive(shared: bytes, key_len: int) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=key_len + _MAC_LEN, salt=None, info=_INFO).derive(
        shared
    )
    return okm[:key_len], okm[key_len:]


def wrap_key(recipient: EncPublicKey, plainkey: bytes) -> bytes:
    """The ENC TLV value carrying ``plainkey`` for the holder of ``recipient``'s private key."""
    if isinstance(recipient, x25519.X25519PublicKey):
        eph_x = x25519.X25519PrivateKey.generate()
        shared = eph_x.exchange(recipient)
        eph_pub = eph_x.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        eph_ec = ec.generate_private_key(ec.SECP256R1())
        shared = eph_ec.exchange(ec.ECDH(), recipient)
        eph_pub = eph_ec.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    aes_key, mac_key = _derive(shared, len(plainkey))
    cipherkey = _aes_ctr(aes_key, plainkey)
    mac = hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(cipherkey)
    return eph_pub + mac.finalize() + cipherkey


def unwrap_key(private: EncPrivateKey, enc_tlv: bytes) -> bytes:
    """The AES key from an ENC TLV value; a wrong key or altered TLV fails the MAC check."""
    if isinstance(private, x25519.X25519PrivateKey):
        pub_len = 32
        if len(enc_tlv) not in (pub_len + _MAC_LEN + 16, pub_len + _MAC_LEN + 32):
            raise DecryptionError(f"ENCX25519 TLV of {len(enc_tlv)} bytes has the wrong size")
        try:
            eph = x25519.X25519PublicKey.from_public_bytes(enc_tlv[:pub_len])
            shared = private.exchange(eph)
        except ValueError as exc:
            raise DecryptionError(f"ENCX25519 ephemeral key is invalid: {exc}") from None
    else:
        pub_len = 65
        if len(enc_tlv) not in (pub_len + _MAC_LEN + 16, pub_len + _MAC_LEN + 32):
            raise DecryptionError(f"ENCEC256 TLV of {len(enc_tlv)} bytes has the wrong size")
        try:
            point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc_tlv[:pub_len])
            shared = private.exchange(ec.ECDH(), point)
        except ValueError as exc:
            raise DecryptionError(f"ENCEC256 ephemeral point is invalid: {exc}") from None
    mac_given = enc_tlv[pub_len : pub_len + _MAC_LEN]
    cipherkey = enc_tlv[pub_len + _MAC_LEN :]
    aes_key, mac_key = _derive(shared, len(cipherkey))
    mac = hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(cipherkey)
    if not py_hmac.compare_digest(mac.finalize(), mac_given):
        raise DecryptionError(
            "the image's key was not wrapped for this device-class key (HMAC mismatch)"
        )
    return _aes_ctr(aes_key, cipherkey)


def new_plainkey(aes_bits: int = 128) -> bytes:
    return os.urandom(aes_bits // 8)


def encrypt_body(plainkey: bytes, body: bytes) -> bytes:
    return _aes_ctr(plainkey, body)


@dataclass
class BodyDecryptor:
    """Streaming AES-CTR over the image body; bytes outside it pass unchanged.

    Feed the image in order from offset 0; memory is one AES context.
    """

    plainkey: bytes
    body_start: int
    body_end: int
    position: int = 0

    def __post_init__(self) -> None:
        self._ctx = Cipher(algorithms.AES(self.plainkey), modes.CTR(bytes(16))).decryptor()

    def feed(self, data: bytes) -> bytes:
        start, end = self.position, self.position + len(data)
        self.position = end
        lo, hi = max(start, self.body_start), min(end, self.body_end)
        if lo >= hi:
            return bytes(data)
        out = bytearray(data)
        out[lo - start : hi - start] = self._ctx.update(bytes(data[lo - start : hi - start]))
        return bytes(out)
