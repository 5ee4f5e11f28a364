"""The vendor PKI: certificate extensions, key files (0600, passphrase), revocation in a dir."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bmsfw.package import (
    PkiPaths,
    TrustAnchors,
    VendorPki,
    init_pki_dir,
    issue_signer_in_dir,
    key_hash,
    load_key_file,
    load_signer,
    public_key_der,
    revoke_in_dir,
    sign_release,
    verify_release,
)
from bmsfw.package import errors as E  # noqa: N812 - short alias keeps the tables readable
from package.conftest import FACTS, make_release

NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)


def test_certificate_extensions(pki: VendorPki) -> None:
    root_bc = pki.root_certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca and root_bc.value.path_length == 1
    inter_bc = pki.intermediate_certificate.extensions.get_extension_for_class(
        x509.BasicConstraints
    )
    assert inter_bc.value.ca and inter_bc.value.path_length == 0
    usage = pki.intermediate_certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    signer = pki.signer_certificate.extensions
    assert not signer.get_extension_for_class(x509.BasicConstraints).value.ca
    assert signer.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = signer.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CODE_SIGNING in eku
    assert pki.signer_certificate.issuer == pki.intermediate_certificate.subject
    # the image key is separate from the manifest hierarchy
    assert public_key_der(pki.image_signing_key) != public_key_der(pki.signer_key)


def test_key_hash_is_imgtool_keyhash(pki: VendorPki) -> None:
    import hashlib

    assert key_hash(pki.root_key) == hashlib.sha256(public_key_der(pki.root_key)).digest()
    assert key_hash(public_key_der(pki.root_key)) == key_hash(pki.root_certificate.public_key())  # type: ignore[arg-type]


@pytest.mark.req("IEC62443-CR1.5")
def test_init_writes_private_keys_0600(tmp_path: Path) -> None:
    init_pki_dir(tmp_path / "pki", "ecdsa-p256", now=NOW)
    paths = PkiPaths(tmp_path / "pki")
    for key in (
        paths.root_key,
        paths.intermediate_key,
        paths.image_key,
        paths.signer_key("release-signer"),
    ):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert b"BEGIN PRIVATE KEY" in paths.root_key.read_bytes()
    with pytest.raises(E.PkiExistsError) as info:
        init_pki_dir(tmp_path / "pki", "ed25519")
    assert info.value.code == "BMSFW-E152"


def test_passphrase_encryption(tmp_path: Path) -> None:
    init_pki_dir(tmp_path, "ed25519", passphrase=b"correct horse", now=NOW)
    paths = PkiPaths(tmp_path)
    assert b"ENCRYPTED PRIVATE KEY" in paths.root_key.read_bytes()
    assert load_key_file(paths.image_key, b"correct horse")
    with pytest.raises(E.KeyFileError) as info:
        load_key_file(paths.image_key, b"wrong")
    assert info.value.code == "BMSFW-E150"
    with pytest.raises(E.KeyFileError):
        load_key_file(paths.image_key, None)


def test_issue_and_revoke_in_directory(tmp_path: Path) -> None:
    pki = init_pki_dir(tmp_path, "ed25519", now=NOW - dt.timedelta(days=1))
    cert = issue_signer_in_dir(tmp_path, "signer-2", now=NOW - dt.timedelta(days=1))
    assert stat.S_IMODE(PkiPaths(tmp_path).signer_key("signer-2").stat().st_mode) == 0o600
    package = sign_release(make_release(pki, b"\x01" * 100), load_signer(tmp_path, "signer-2"))
    trust = TrustAnchors.from_key_hashes([key_hash(pki.root_key)])
    assert verify_release(package, trust, FACTS, now=NOW)
    crl = revoke_in_dir(tmp_path, cert, now=NOW - dt.timedelta(hours=1))
    assert PkiPaths(tmp_path).crl.read_bytes() == crl
    with pytest.raises(E.RevokedSignerError):
        verify_release(package, trust.with_revocation_list(crl), FACTS, now=NOW)
    # The first signer stays valid under the same CRL.
    other = sign_release(make_release(pki, b"\x01" * 100), load_signer(tmp_path))
    assert verify_release(other, trust.with_revocation_list(crl), FACTS, now=NOW)
    with pytest.raises(E.PkiExistsError):
        issue_signer_in_dir(tmp_path, "signer-2")
    with pytest.raises(E.KeyFileError):
        issue_signer_in_dir(tmp_path, "../escape")
