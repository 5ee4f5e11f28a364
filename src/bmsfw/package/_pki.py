"""The vendor PKI: root CA -> intermediate CA -> manifest signers, plus revocation lists.

Pure: returns key objects, certificates and DER/PEM bytes; ``_keystore`` puts
them on disk. The root's key hash (SHA-256 of its SubjectPublicKeyInfo) is what
a BMS holds in OTP to trust manifests; a separate image-signing key (not part
of the X.509 hierarchy, as MCUboot knows no certificates) signs the MCUboot
images, and its hash is fused for secure boot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bmsfw.package._crypto import (
    Algorithm,
    PrivateKey,
    algorithm_of,
    generate_key,
    public_key_der,
)
from bmsfw.package.errors import KeyFileError

__all__ = [
    "RevokedEntry",
    "SignerCredentials",
    "VendorPki",
    "create_pki",
    "create_revocation_list",
    "issue_signer",
]

_EPOCH_SLACK = dt.timedelta(minutes=5)  # tolerate small clock skew right after issuing


@dataclass(frozen=True)
class SignerCredentials:
    """What signing a manifest needs: the key, its certificate and the issuing chain."""

    private_key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuers, nearest first; may end with the root

    def __post_init__(self) -> None:
        if public_key_der(self.private_key) != public_key_der(
            self.certificate.public_key()  # type: ignore[arg-type]
        ):
            raise KeyFileError("the signer key does not belong to the signer certificate")


@dataclass(frozen=True)
class VendorPki:
    algorithm: Algorithm
    root_key: PrivateKey
    root_certificate: x509.Certificate
    intermediate_key: PrivateKey
    intermediate_certificate: x509.Certificate
    signer_key: PrivateKey
    signer_certificate: x509.Certificate
    image_signing_key: PrivateKey

    def signer(self) -> SignerCredentials:
        return SignerCredentials(
            self.signer_key,
            self.signer_certificate,
            (self.intermediate_certificate, self.root_certificate),
        )


@dataclass(frozen=True)
class RevokedEntry:
    serial_number: int
    revoked_at: dt.datetime


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs without a separate digest; cryptography wants None for it.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    *,
    subject_key: PrivateKey,
    subject: x509.Name,
    issuer_key: PrivateKey,
    issuer: x509.Name,
    issuer_cert: x509.Certificate | None,
    ca_path_length: int | None,
    is_ca: bool,
    now: dt.datetime,
    validity: dt.timedelta,
) -> x509.Certificate:
    public = subject_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _EPOCH_SLACK)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(_ca_usage(), critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    authority_public = issuer_cert.public_key() if issuer_cert is not None else public
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_public),  # type: ignore[arg-type]
        critical=False,
    )
    return builder.sign(issuer_key, _hash_for(issuer_key))


def create_pki(
    algorithm: Algorithm = "ed25519",
    *,
    vendor: str = "Example BMS Vendor",
    signer_name: str = "release-signer",
    now: dt.datetime | None = None,
    root_validity_days: int = 25 * 365,
    intermediate_validity_days: int = 10 * 365,
    signer_validity_days: int = 3 * 365,
) -> VendorPki:
    """A fresh vendor PKI: root CA (path length 1), intermediate CA (0), one signer."""
    now = now or dt.datetime.now(dt.UTC)
    root_key = generate_key(algorithm)
    root_name = _name(f"{vendor} Root CA", vendor)
    root = _issue(
        subject_key=root_key,
        subject=root_name,
        issuer_key=root_key,
        issuer=root_name,
        issuer_cert=None,
        ca_path_length=1,
        is_ca=True,
        now=now,
        validity=dt.timedelta(days=root_validity_days),
    )
    inter_key = generate_key(algorithm)
    inter_name = _name(f"{vendor} Release CA", vendor)
    inter = _issue(
        subject_key=inter_key,
        subject=inter_name,
        issuer_key=root_key,
        issuer=root_name,
        issuer_cert=root,
        ca_path_length=0,
        is_ca=True,
        now=now,
        validity=dt.timedelta(days=intermediate_validity_days),
    )
    signer_key, signer_cert = issue_signer(
        inter_key,
        inter,
        name=signer_name,
        now=now,
        validity_days=signer_validity_days,
    )
    return VendorPki(
        algorithm=algorithm,
        root_key=root_key,
        root_certificate=root,
        intermediate_key=inter_key,
        intermediate_certificate=inter,
        signer_key=signer_key,
        signer_certificate=signer_cert,
        image_signing_key=generate_key(algorithm),
    )


def issue_signer(
    ca_key: PrivateKey,
    ca_certificate: x509.Certificate,
    *,
    name: str,
    algorithm: Algorithm | None = None,
    now: dt.datetime | None = None,
    validity_days: int = 3 * 365,
    not_before: dt.datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """A new manifest-signing key and certificate (CA false, digitalSignature, codeSigning)."""
    now = now or dt.datetime.now(dt.UTC)
    key = generate_key(algorithm or algorithm_of(ca_key))
    orgs = ca_certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    org = str(orgs[0].value) if orgs else "bmsfw"
    start = not_before or now
    cert = _issue(
        subject_key=key,
        subject=_name(name, org),
        issuer_key=ca_key,
        issuer=ca_certificate.subject,
        issuer_cert=ca_certificate,
        ca_path_length=None,
        is_ca=False,
        now=start,
        validity=dt.timedelta(days=validity_days) + (now - start),
    )
    return key, cert


def create_revocation_list(
    ca_key: PrivateKey,
    ca_certificate: x509.Certificate,
    revoked: Iterable[RevokedEntry],
    *,
    crl_number: int,
    now: dt.datetime | None = None,
    next_update_days: int = 365,
) -> bytes:
    """A DER X.509 CRL signed by the CA that issued the revoked certificates."""
    now = now or dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(now - _EPOCH_SLACK)
        .next_update(now + dt.timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(crl_number), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial_number)
            .revocation_date(entry.revoked_at)
            .build()
        )
    from cryptography.hazmat.primitives.serialization import Encoding

    crl = builder.sign(ca_key, _hash_for(ca_key))
    return crl.public_bytes(Encoding.DER)
