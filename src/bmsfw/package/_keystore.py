"""The vendor PKI on disk: the only module of bmsfw.package that writes files.

Layout of a PKI directory (``bmsfw keys init DIR``)::

    pki.json                      algorithm, vendor, CRL number, revoked serials
    root-ca.key / root-ca.crt     root CA (keep offline); its key hash is fused for manifests
    intermediate-ca.key / .crt    issues signers and revocation lists
    signers/NAME.key / NAME.crt   manifest signers
    image-signing.key / .pub      MCUboot image key; its hash is fused for secure boot
    revocation.crl                latest revocation list (after ``keys revoke``)

Private keys are created with mode 0600 (never world-readable, not even
briefly) and may be encrypted with a passphrase.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bmsfw.package._crypto import (
    Algorithm,
    PrivateKey,
    load_private_key,
    private_key_pem,
    public_key_pem,
)
from bmsfw.package._pki import (
    RevokedEntry,
    SignerCredentials,
    VendorPki,
    create_pki,
    create_revocation_list,
    issue_signer,
)
from bmsfw.package._trust import load_certificates_pem
from bmsfw.package.errors import (
    KeyFileError,
    KeyPassphraseMissingError,
    KeyPassphraseWrongError,
    PkiExistsError,
)

__all__ = [
    "PkiPaths",
    "init_pki_dir",
    "issue_signer_in_dir",
    "load_signer",
    "private_key_encrypted",
    "revoke_in_dir",
    "unlock_private_key",
]

_SIGNER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class PkiPaths:
    root: Path

    @property
    def meta(self) -> Path:
        return self.root / "pki.json"

    @property
    def root_key(self) -> Path:
        return self.root / "root-ca.key"

    @property
    def root_cert(self) -> Path:
        return self.root / "root-ca.crt"

    @property
    def intermediate_key(self) -> Path:
        return self.root / "intermediate-ca.key"

    @property
    def intermediate_cert(self) -> Path:
        return self.root / "intermediate-ca.crt"

    @property
    def image_key(self) -> Path:
        return self.root / "image-signing.key"

    @property
    def image_pub(self) -> Path:
        return self.root / "image-signing.pub"

    @property
    def crl(self) -> Path:
        return self.root / "revocation.crl"

    def signer_key(self, name: str) -> Path:
        return self.root / "signers" / f"{name}.key"

    def signer_cert(self, name: str) -> Path:
        return self.root / "signers" / f"{name}.crt"


def _write_private(path: Path, key: PrivateKey, passphrase: bytes | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_key_pem(key, passphrase))
    os.chmod(path, 0o600)  # O_CREAT honours umask; make the mode exact


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None


def _read_meta(paths: PkiPaths) -> dict[str, object]:
    try:
        meta = json.loads(read_file(paths.meta))
    except ValueError:
        raise KeyFileError(f"{paths.meta} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise KeyFileError(f"{paths.meta} is not a PKI description")
    return meta


def _write_meta(paths: PkiPaths, meta: dict[str, object]) -> None:
    _write_public(paths.meta, json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")


def init_pki_dir(
    directory: Path,
    algorithm: Algorithm = "ed25519",
    *,
    passphrase: bytes | None = None,
    vendor: str = "Example BMS Vendor",
    now: dt.datetime | None = None,
) -> VendorPki:
    """Create a new vendor PKI in ``directory`` (refuses to overwrite an existing one)."""
    paths = PkiPaths(directory)
    if paths.meta.exists() or paths.root_key.exists():
        raise PkiExistsError(f"{directory} already holds a PKI")
    pki = create_pki(algorithm, vendor=vendor, now=now)
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(paths.root_key, pki.root_key, passphrase)
    _write_private(paths.intermediate_key, pki.intermediate_key, passphrase)
    _write_private(paths.signer_key("release-signer"), pki.signer_key, passphrase)
    _write_private(paths.image_key, pki.image_signing_key, passphrase)
    _write_public(paths.root_cert, _cert_pem(pki.root_certificate))
    _write_public(paths.intermediate_cert, _cert_pem(pki.intermediate_certificate))
    _write_public(paths.signer_cert("release-signer"), _cert_pem(pki.signer_certificate))
    _write_public(paths.image_pub, public_key_pem(pki.image_signing_key))
    _write_meta(
        paths,
        {
            "algorithm": algorithm,
            "vendor": vendor,
            "crl_number": 0,
            "revoked": [],
            "encrypted": passphrase is not None,
        },
    )
    return pki


def load_key_file(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    try:
        return load_private_key(read_file(path), passphrase)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc.message}") from None


def private_key_encrypted(data: bytes) -> bool:
    """Whether a PEM private key is passphrase-protected (PKCS#8 or OpenSSL's old form)."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def unlock_private_key(data: bytes, passphrase: bytes | None, *, what: str) -> bytes | None:
    """Check that ``passphrase`` opens the PEM private key ``data``; return the passphrase
    the key needs (None: the key is not encrypted, whatever was given).

    Refuses before anything else happens: an encrypted key without a passphrase (E135),
    a passphrase that does not decrypt it (E136), an unreadable key (E150).
    """
    if not private_key_encrypted(data):
        load_private_key(data, None)  # E150 when it is no key at all
        return None
    if not passphrase:
        raise KeyPassphraseMissingError(f"{what} is encrypted; no passphrase was given")
    try:
        load_private_key(data, passphrase)
    except KeyFileError:
        raise KeyPassphraseWrongError(f"the passphrase does not decrypt {what}") from None
    return passphrase


def load_certificate_file(path: Path) -> x509.Certificate:
    certs = load_certificates_pem(read_file(path))
    if len(certs) != 1:
        raise KeyFileError(f"{path} holds {len(certs)} certificates, expected one")
    return certs[0]


def load_signer(
    directory: Path, name: str = "release-signer", *, passphrase: bytes | None = None
) -> SignerCredentials:
    paths = PkiPaths(directory)
    return SignerCredentials(
        load_key_file(paths.signer_key(name), passphrase),
        load_certificate_file(paths.signer_cert(name)),
        (load_certificate_file(paths.intermediate_cert), load_certificate_file(paths.root_cert)),
    )


def issue_signer_in_dir(
    directory: Path,
    name: str,
    *,
    passphrase: bytes | None = None,
    validity_days: int = 3 * 365,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    if not _SIGNER_NAME_RE.match(name):
        raise KeyFileError(f"signer name {name!r} must be letters, digits, '-' or '_'")
    paths = PkiPaths(directory)
    if paths.signer_key(name).exists():
        raise PkiExistsError(f"signer {name!r} already exists in {directory}")
    ca_key = load_key_file(paths.intermediate_key, passphrase)
    ca_cert = load_certificate_file(paths.intermediate_cert)
    key, cert = issue_signer(ca_key, ca_cert, name=name, now=now, validity_days=validity_days)
    _write_private(paths.signer_key(name), key, passphrase)
    _write_public(paths.signer_cert(name), _cert_pem(cert))
    return cert


def revoke_in_dir(
    directory: Path,
    certificate: x509.Certificate,
    *,
    passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """Add ``certificate`` to the intermediate CA's revocation list; returns the new DER CRL."""
    paths = PkiPaths(directory)
    now = now or dt.datetime.now(dt.UTC)
    ca_key = load_key_file(paths.intermediate_key, passphrase)
    ca_cert = load_certificate_file(paths.intermediate_cert)
    if certificate.issuer != ca_cert.subject:
        raise KeyFileError(
            f"{certificate.subject.rfc4514_string()} was not issued by this PKI's intermediate CA"
        )
    meta = _read_meta(paths)
    revoked = meta.get("revoked", [])
    if not isinstance(revoked, list):
        raise KeyFileError(f"{paths.meta}: 'revoked' must be a list")
    serial = f"{certificate.serial_number:x}"
    if not any(entry.get("serial") == serial for entry in revoked):
        revoked.append({"serial": serial, "revoked_at": now.isoformat()})
    number = int(str(meta.get("crl_number", 0))) + 1
    crl = create_revocation_list(
        ca_key,
        ca_cert,
        [
            RevokedEntry(int(e["serial"], 16), dt.datetime.fromisoformat(e["revoked_at"]))
            for e in revoked
        ],
        crl_number=number,
        now=now,
    )
    _write_public(paths.crl, crl)
    meta["revoked"] = revoked
    meta["crl_number"] = number
    _write_meta(paths, meta)
    return crl
