"""``bmsfw keys``: create and manage the vendor PKI (root, intermediate, signers, image key)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from bmsfw.cli._render import Table, console, print_json
from bmsfw.errors import UsageError
from bmsfw.package import (
    ALGORITHMS,
    PkiPaths,
    init_pki_dir,
    issue_signer_in_dir,
    key_hash,
    load_certificate_file,
    load_key_file,
    load_private_key,
    load_public_key,
    private_key_encrypted,
    private_key_pem,
    revoke_in_dir,
    summarize_certificate,
    unlock_private_key,
)
from bmsfw.package.errors import KeyFileError
from bmsfw.protocol.session import TesterCredentials

__all__ = [
    "TESTER_PASSPHRASE_ENV",
    "keys_group",
    "read_passphrase",
    "tester_credentials_from_files",
    "tester_passphrase_option",
]

#: the environment variable that may hold the tester key's passphrase (never an argument:
#: a command line is visible to every user in `ps`)
TESTER_PASSPHRASE_ENV = "BMSFW_TESTER_KEY_PASSPHRASE"  # noqa: S105 - a name, not a secret


def read_passphrase(path: Path | None) -> bytes | None:
    """The passphrase from a file (first line, newline stripped), or None."""
    if path is None:
        return None
    try:
        text = path.read_bytes().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read passphrase file {path}: {exc.strerror}") from None
    if not text or not text[0]:
        raise UsageError(f"passphrase file {path} is empty")
    return text[0]


def _tester_passphrase(file: Path | None, *, ask: str, confirm: bool = False) -> bytes | None:
    """The tester key's passphrase: FILE's first line, else $BMSFW_TESTER_KEY_PASSPHRASE,
    else asked on the terminal (hidden); None when none of them is available."""
    if file is not None:
        return read_passphrase(file)
    value = os.environ.get(TESTER_PASSPHRASE_ENV, "")
    if value:
        return value.encode()
    if sys.stdin.isatty():
        answer: str = click.prompt(ask, hide_input=True, confirmation_prompt=confirm, err=True)
        return answer.encode() or None
    return None


def tester_credentials_from_files(
    cert: Path, key: Path, passphrase_file: Path | None
) -> TesterCredentials:
    """The tester chain and key, the key unlocked now: an encrypted key without its
    passphrase (E135) or with a wrong one (E136) is refused before any link is opened."""
    try:
        chain, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    passphrase = None
    if private_key_encrypted(key_pem):
        passphrase = _tester_passphrase(passphrase_file, ask=f"Passphrase of {key}")
    return TesterCredentials(chain, key_pem, unlock_private_key(key_pem, passphrase, what=str(key)))


tester_passphrase_option = click.option(
    "--tester-key-passphrase-file",
    "tester_key_passphrase_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"File whose first line is the passphrase of an encrypted --tester-key (else "
    f"${TESTER_PASSPHRASE_ENV}, else asked on a terminal).",
)

_passphrase_option = click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File whose first line is the passphrase protecting the private keys.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _show(rows: list[tuple[str, str]], title: str, as_json: bool, data: dict[str, Any]) -> None:
    if as_json:
        print_json(data)
        return
    table = Table(title=title, show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@click.group("keys")
def keys_group() -> None:
    """Create and manage the vendor PKI and the image-signing key."""


@keys_group.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="ed25519", show_default=True)
@click.option("--vendor", default="Example BMS Vendor", show_default=True)
@_passphrase_option
@_json_option
def init_cmd(
    directory: Path, algorithm: str, vendor: str, passphrase_file: Path | None, as_json: bool
) -> None:
    """Create root CA, intermediate CA, a manifest signer and an image-signing key in DIRECTORY."""
    pki = init_pki_dir(
        directory,
        algorithm,  # type: ignore[arg-type]
        passphrase=read_passphrase(passphrase_file),
        vendor=vendor,
    )
    paths = PkiPaths(directory)
    root_hash = key_hash(pki.root_key).hex()
    image_hash = key_hash(pki.image_signing_key).hex()
    data = {
        "directory": str(directory),
        "algorithm": algorithm,
        "root_key_hash": root_hash,
        "image_key_hash": image_hash,
        "root_certificate": str(paths.root_cert),
        "signer_certificate": str(paths.signer_cert("release-signer")),
        "image_public_key": str(paths.image_pub),
    }
    _show(
        [
            ("directory", str(directory)),
            ("algorithm", algorithm),
            ("root key hash (fuse for manifests)", root_hash),
            ("image key hash (fuse for secure boot)", image_hash),
            ("signer", str(paths.signer_cert("release-signer"))),
            ("keep offline", str(paths.root_key)),
        ],
        "vendor PKI created",
        as_json,
        data,
    )


@keys_group.command("issue-signer")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("name")
@click.option("--validity-days", type=click.IntRange(1, 20 * 365), default=3 * 365)
@_passphrase_option
@_json_option
def issue_signer_cmd(
    directory: Path, name: str, validity_days: int, passphrase_file: Path | None, as_json: bool
) -> None:
    """Issue a new manifest signer NAME under the intermediate CA."""
    cert = issue_signer_in_dir(
        directory, name, passphrase=read_passphrase(passphrase_file), validity_days=validity_days
    )
    summary = summarize_certificate(cert)
    _show(
        [
            ("signer", summary.subject),
            ("serial", summary.serial_number),
            ("valid until", f"{summary.not_after:%Y-%m-%d}"),
            ("certificate", str(PkiPaths(directory).signer_cert(name))),
        ],
        "signer issued",
        as_json,
        summary.to_dict(),
    )


@keys_group.command("revoke")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("certificate", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_passphrase_option
@_json_option
def revoke_cmd(
    directory: Path, certificate: Path, passphrase_file: Path | None, as_json: bool
) -> None:
    """Revoke a signer or tester CERTIFICATE: writes DIRECTORY/revocation.crl, signed by the CA.

    CERTIFICATE may be a chain file (a tester's --cert-out): its first certificate is revoked.
    """
    from bmsfw.package._trust import load_certificates_pem

    try:
        certs = load_certificates_pem(certificate.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {certificate}: {exc.strerror}") from None
    if not certs:
        raise KeyFileError(f"{certificate} holds no certificate")
    cert = certs[0]
    crl = revoke_in_dir(directory, cert, passphrase=read_passphrase(passphrase_file))
    crl_path = PkiPaths(directory).crl
    _show(
        [
            ("revoked", cert.subject.rfc4514_string()),
            ("serial", f"{cert.serial_number:x}"),
            ("revocation list", str(crl_path)),
        ],
        "signer revoked",
        as_json,
        {
            "revoked": cert.subject.rfc4514_string(),
            "serial": f"{cert.serial_number:x}",
            "revocation_list": str(crl_path),
            "revocation_list_sha256": hashlib.sha256(crl).hexdigest(),
        },
    )


@keys_group.command("hash")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_passphrase_option
@_json_option
def hash_cmd(path: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Print the key hash (OTP value) of a certificate, public key or private key."""
    data = path.read_bytes()
    if b"CERTIFICATE" in data:
        public: Any = load_certificate_file(path).public_key()
    elif b"PRIVATE KEY" in data:
        try:
            public = load_private_key(data, read_passphrase(passphrase_file)).public_key()
        except KeyFileError as exc:
            raise KeyFileError(f"{path}: {exc.message}") from None
    else:
        public = load_public_key(data)
    digest = key_hash(public).hex()
    if as_json:
        print_json({"path": str(path), "key_hash": digest, "algorithm": "sha256-spki"})
    else:
        click.echo(digest)


@keys_group.command("enc-keygen")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--scheme", type=click.Choice(["ecies-x25519", "ecies-p256"]), default="ecies-x25519")
@click.option("--name", default="device-class", show_default=True)
@_json_option
def enc_keygen_cmd(directory: Path, scheme: str, name: str, as_json: bool) -> None:
    """Create a device-class image-encryption key pair (MCUboot ECIES).

    NAME.pub.pem goes to the build server (`package build --encrypt-to`);
    NAME.key.pem is fused into the BMS's OTP at the factory and nowhere else.
    """
    from cryptography.hazmat.primitives import serialization

    from bmsfw.package._encrypt import generate_encryption_key

    key = generate_encryption_key(scheme)  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key.pem", directory / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{path} exists; refusing to overwrite a key")
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(public_pem)
    _show(
        [("scheme", scheme), ("private key", str(private_path)), ("public key", str(public_path))],
        "device-class encryption key",
        as_json,
        {"scheme": scheme, "private_key": str(private_path), "public_key": str(public_path)},
    )


@keys_group.command("issue-tester")
@click.option(
    "--pki",
    "directory",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="Vendor PKI directory (`bmsfw keys init`); its release CA issues the certificate.",
)
@click.option("--name", default="service-tester", show_default=True, help="Common name (CN).")
@click.option(
    "--validity-days",
    type=click.IntRange(1, 398),
    default=90,
    show_default=True,
    help="Days the certificate is valid (at most 398 and never past the CA's own end).",
)
@click.option(
    "--cert-out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="PEM chain to write: tester certificate, release CA, root CA (`--tester-cert`).",
)
@click.option(
    "--key-out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Tester private key to write (PKCS#8 PEM, mode 0600; `--tester-key`).",
)
@click.option(
    "--encrypt-key",
    is_flag=True,
    help=f"Encrypt the tester key (PKCS#8, AES-256) with a passphrase from "
    f"--key-passphrase-file, else ${TESTER_PASSPHRASE_ENV}, else asked twice on the terminal.",
)
@click.option(
    "--key-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File whose first line is the passphrase for the tester key (implies --encrypt-key).",
)
@_passphrase_option
@_json_option
def issue_tester_cmd(
    *,
    directory: Path,
    name: str,
    validity_days: int,
    cert_out: Path,
    key_out: Path,
    encrypt_key: bool,
    key_passphrase_file: Path | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Issue a tester certificate (UDS 0x29 / Modbus authentication) for `update`/`rollback`.

    Whoever holds the PKI's release CA key (intermediate-ca.key) can issue one.
    """
    import datetime as dt

    from bmsfw.protocol.uds import issue_tester_certificate, tester_credentials

    paths = PkiPaths(directory)
    for path in (cert_out, key_out):
        if path.exists():
            raise UsageError(f"{path} exists; refusing to overwrite it")
    key_passphrase = None
    if encrypt_key or key_passphrase_file is not None:
        key_passphrase = _tester_passphrase(
            key_passphrase_file, ask="Passphrase for the tester key", confirm=True
        )
        if not key_passphrase:
            raise UsageError(
                f"--encrypt-key needs a passphrase: --key-passphrase-file FILE, "
                f"${TESTER_PASSPHRASE_ENV}, or a terminal to type it on"
            )
    ca_key = load_key_file(paths.intermediate_key, read_passphrase(passphrase_file))
    ca_cert = load_certificate_file(paths.intermediate_cert)
    root_cert = load_certificate_file(paths.root_cert)
    now = dt.datetime.now(dt.UTC)
    ca_end = min(ca_cert.not_valid_after_utc, root_cert.not_valid_after_utc)
    if now + dt.timedelta(days=validity_days) > ca_end:
        raise UsageError(
            f"--validity-days {validity_days} reaches past the release CA's end "
            f"({ca_end:%Y-%m-%d}); choose fewer days or renew the CA"
        )
    key, cert = issue_tester_certificate(
        ca_key,
        ca_cert,
        name=name,
        now=now,
        validity_days=validity_days,
    )
    creds = tester_credentials(key, cert, [ca_cert, root_cert])
    key_pem = private_key_pem(key, key_passphrase) if key_passphrase else creds.private_key_pem
    _write_new(key_out, key_pem, mode=0o600)
    _write_new(cert_out, creds.certificate_chain_pem, mode=0o644)
    summary = summarize_certificate(cert)
    _show(
        [
            ("tester", summary.subject),
            ("issuer", summary.issuer),
            ("serial", summary.serial_number),
            ("valid from", f"{summary.not_before:%Y-%m-%d %H:%M} UTC"),
            ("valid until", f"{summary.not_after:%Y-%m-%d %H:%M} UTC"),
            ("certificate chain", str(cert_out)),
            ("private key", str(key_out)),
            ("key protection", "passphrase (PKCS#8, AES-256)" if key_passphrase else "none"),
        ],
        "tester certificate issued",
        as_json,
        {
            **summary.to_dict(),
            "certificate_chain": str(cert_out),
            "private_key": str(key_out),
            "private_key_encrypted": key_passphrase is not None,
        },
    )


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)
