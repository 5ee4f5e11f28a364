"""A throwaway TLS CA and server certificate for running the fleet server on a bench.

The fleet server only speaks HTTPS in production, and agents verify it against a CA
file; a test or a lab bench wants the same code path without a real CA. This writes a
fresh ECDSA P-256 CA and a ``localhost`` / ``127.0.0.1`` server certificate issued by it
(valid from five minutes ago for one day), so ``bmsfw fleet serve --tls-cert/--tls-key``
and ``ClientConfig(ca_file=...)`` can be exercised for real. Never use these files for
anything but tests: the keys are written unencrypted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "TestTlsFiles",
    "flip_artifact_byte",
    "store_artifact",
    "write_test_ca_and_server",
]

# Backdated so a host clock a little behind the signer's does not reject a fresh cert.
_NOT_BEFORE_SLACK = dt.timedelta(minutes=5)
_VALIDITY = dt.timedelta(days=1)


@dataclass(frozen=True)
class TestTlsFiles:
    """PEM files: the CA certificate (for clients), the server certificate and its key."""

    __test__ = False  # not a pytest test class despite the name

    ca: Path
    cert: Path
    key: Path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _NOT_BEFORE_SLACK)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def write_test_ca_and_server(
    directory: Path, *, prefix: str = "", ca_name: str = "bmsfw test CA"
) -> TestTlsFiles:
    """Write ``<prefix>ca.pem``, ``<prefix>server.pem`` and ``<prefix>server.key`` in
    ``directory``: a new self-signed CA named ``ca_name`` and a server certificate for
    ``localhost`` and ``127.0.0.1`` issued by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(ca_name, ca_key, None, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", key, ca, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    files = TestTlsFiles(
        directory / f"{prefix}ca.pem",
        directory / f"{prefix}server.pem",
        directory / f"{prefix}server.key",
    )
    files.ca.write_bytes(ca.public_bytes(pem))
    files.cert.write_bytes(server.public_bytes(pem))
    files.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def store_artifact(db_url: str, data: bytes) -> str:
    """Put ``data`` into the fleet database's artifact store directly (what a compromised
    server or database does); returns its SHA-256. For tests of the agent's checks."""
    from sqlalchemy import create_engine

    from bmsfw.fleet.artifacts import ArtifactStore

    sha256 = hashlib.sha256(data).hexdigest()
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            ArtifactStore.put(conn, sha256, data)
    finally:
        engine.dispose()
    return sha256


def flip_artifact_byte(db_url: str, sha256: str, offset: int) -> None:
    """Flip one bit of a stored release file in place (same size, other bytes)."""
    from sqlalchemy import create_engine, select, update

    from bmsfw.fleet.artifacts import CHUNK_BYTES
    from bmsfw.fleet.models import ArtifactChunk

    seq, at = divmod(offset, CHUNK_BYTES)
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            where = (ArtifactChunk.sha256 == sha256, ArtifactChunk.seq == seq)
            chunk = bytearray(conn.execute(select(ArtifactChunk.data).where(*where)).scalar_one())
            chunk[at] ^= 0x40
            conn.execute(update(ArtifactChunk).where(*where).values(data=bytes(chunk)))
    finally:
        engine.dispose()
