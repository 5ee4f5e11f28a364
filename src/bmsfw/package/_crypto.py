"""Key handling shared by images, manifests and the PKI: Ed25519 and ECDSA P-256 only.

The key hash is computed exactly as MCUboot's imgtool does for the KEYHASH TLV:
SHA-256 over the DER ``SubjectPublicKeyInfo`` of the public key (imgtool
``keys/ed25519.py`` and ``keys/ecdsa.py``, ``get_public_bytes``). That value is
what a BMS holds in OTP.
"""

from __future__ import annotations

import hashlib
from typing import Literal, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from bmsfw.package.errors import KeyFileError, UnsupportedAlgorithmError

PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
Algorithm: TypeAlias = Literal["ed25519", "ecdsa-p256"]
ALGORITHMS: tuple[Algorithm, ...] = ("ed25519", "ecdsa-p256")


def generate_key(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise UnsupportedAlgorithmError(f"unknown algorithm {algorithm!r}")


def algorithm_of(key: PrivateKey | PublicKey) -> Algorithm:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ecdsa-p256"
        raise UnsupportedAlgorithmError(f"ECDSA curve {key.curve.name} is not supported")
    raise UnsupportedAlgorithmError(f"key type {type(key).__name__} is not supported")


def public_of(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        return key.public_key()
    return key


def public_key_der(key: PrivateKey | PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo, the bytes MCUboot embeds and hashes."""
    return public_of(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_hash(public_key: PrivateKey | PublicKey | bytes) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo DER: imgtool's KEYHASH TLV, the OTP value.

    ``public_key`` may be a key object or DER/PEM public key bytes.
    """
    if isinstance(public_key, bytes):
        public_key = load_public_key(public_key)
    algorithm_of(public_key)
    return hashlib.sha256(public_key_der(public_key)).digest()


def load_public_key(data: bytes) -> PublicKey:
    try:
        key = (
            serialization.load_pem_public_key(data)
            if data.lstrip().startswith(b"-----")
            else serialization.load_der_public_key(data)
        )
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise KeyFileError(f"not a public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise UnsupportedAlgorithmError(f"key type {type(key).__name__} is not supported")
    algorithm_of(key)
    return key


def load_private_key(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        # cryptography raises TypeError for "encrypted but no password" and vice versa
        raise KeyFileError(f"passphrase problem: {exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"cannot load private key (wrong passphrase?): {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise UnsupportedAlgorithmError(f"key type {type(key).__name__} is not supported")
    algorithm_of(key)
    return key


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    return public_of(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_message(key: PrivateKey, message: bytes) -> bytes:
    """Ed25519 over the message; ECDSA P-256 with SHA-256 (DER signature)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify_message(key: PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_image_digest(key: PrivateKey, digest: bytes) -> bytes:
    """The MCUboot image signature over the SHA-256 of header+body+protected TLVs.

    imgtool signs the 32-byte digest with Ed25519 (``sign_digest``) and signs the
    hashed region with ECDSA-SHA256, which equals signing the pre-hashed digest.
    """
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(digest)
    return key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def verify_image_digest(key: PublicKey, signature: bytes, digest: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, digest)
        else:
            # Old imgtool (--pad-sig) pads ECDSA DER signatures to 72 bytes with zeros.
            if len(signature) >= 2:
                signature = signature[: signature[1] + 2]
            key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        return False
    return True
