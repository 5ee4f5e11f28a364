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
import json
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "BodyAnswer",
    "TestTlsFiles",
    "backup_body",
    "check_in_body",
    "flip_artifact_byte",
    "memory_of",
    "send_large_body",
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


# --- large bodies against a running server (tests and benchmarks of its memory bound) ---


@dataclass(frozen=True)
class BodyAnswer:
    """A server's answer to a large body: status, answer body, and how many body bytes
    the client had sent when the answer arrived (sending stops there)."""

    status: int
    body: bytes
    sent: int


def check_in_body(total: int) -> Iterator[bytes]:
    """Exactly ``total`` bytes of a check-in as JSON (one device record repeated, then
    spaces), made a chunk at a time: what a misbehaving gateway could send."""
    record = json.dumps(
        {
            "serial": "SN-000001",
            "model": "BMS-48V",
            "hw_revision": "A",
            "bootloader_version": "1.0.0",
            "firmware_version": "1.0.0",
            "security_counter": 1,
            "soc_pct": 55.0,
            "temperature_c": 24.5,
        }
    ).encode()
    head, tail = b'{"devices":[', b"]}"
    count = max(1, (total - len(head) - len(tail)) // (len(record) + 1))
    batches, rest = divmod(count - 1, 256)
    batch = (record + b",") * 256
    yield head
    for _ in range(batches):
        yield batch
    yield (record + b",") * rest + record
    sent = len(head) + len(batch) * batches + (len(record) + 1) * rest + len(record)
    pad = total - sent - len(tail)
    while pad > 0:
        part = b" " * min(pad, 1 << 20)
        yield part
        pad -= len(part)
    yield tail


def backup_body(total: int, serial: str | None = "SN-000001") -> Iterator[bytes]:
    """Exactly ``total`` bytes of a configuration backup as JSON (one long string value),
    made a chunk at a time: an agent's (naming ``serial``) or, with ``serial`` None, a
    technician's (the serial is in the route)."""
    fields = {"reason": "bench"} if serial is None else {"device_serial": serial, "reason": "b"}
    head = json.dumps(fields)[:-1].encode()
    head += b', "config": {"blob": "'
    tail = b'"}}'
    fill = total - len(head) - len(tail)
    yield head
    while fill > 0:
        part = b"x" * min(fill, 1 << 20)
        yield part
        fill -= len(part)
    yield tail


def send_large_body(
    url: str,
    path: str,
    headers: dict[str, str],
    body: Iterator[bytes],
    total: int,
    *,
    declare_length: bool,
    timeout_s: float = 120.0,
) -> BodyAnswer:
    """POST ``body`` (``total`` bytes) to a plain-HTTP server over a raw socket, with a
    ``Content-Length`` or chunked, as an attacker would: sending stops as soon as the
    server answers; the answer is read (at most 1 MiB of it)."""
    host, _, port = url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        framing = f"Content-Length: {total}" if declare_length else "Transfer-Encoding: chunked"
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", framing, "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        answered = False
        for part in body:
            # A refusal on the headers comes at once; give it a moment before the body.
            if select.select([sock], [], [], 0.2 if sent == 0 else 0)[0]:
                answered = True
                break
            try:
                sock.sendall(part if declare_length else b"%x\r\n%b\r\n" % (len(part), part))
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            sent += len(part)
        if not answered and not declare_length:
            sock.sendall(b"0\r\n\r\n")
        answer = bytearray()
        while len(answer) < 1 << 20:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    head, _, content = bytes(answer).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    if b"transfer-encoding: chunked" in head.lower():
        content = _unchunk(content)
    return BodyAnswer(status, content, sent)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def memory_of(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of process ``pid`` in bytes (Linux ``/proc``): resident memory
    now and its peak since the process started."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]
