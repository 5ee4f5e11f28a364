"""Trust decisions for manifest signers: X.509 chain to a vendor root, validity, revocation.

Pure: bytes in, a validated chain or one specific error out. A BMS knows its
vendor root only as a key hash in OTP, so a chain may end in a self-signed root
certificate whose SubjectPublicKeyInfo hash must be one of the fused hashes; a
host may instead hold the root certificate itself.

Revocation lists (X.509 CRLs) come from the trust anchors (what the device or
host was given) and from the release header. A CRL is honoured when it is
signed by a CA in the validated chain; one claiming such a CA's name with a bad
signature is an error. CRLs whose issuer is not in the chain do not apply and
are ignored. ``next_update`` is not enforced: a BMS cannot fetch fresh CRLs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from bmsfw.package._crypto import (
    PublicKey,
    algorithm_of,
    key_hash,
    load_public_key,
    public_key_der,
)
from bmsfw.package.errors import (
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificatePolicyError,
    KeyFileError,
    MalformedPackageError,
    RevocationListError,
    RevokedSignerError,
    UnsupportedAlgorithmError,
    UntrustedSignerError,
)

__all__ = ["CertificateSummary", "TrustAnchors", "summarize_certificate", "validate_chain"]

MAX_CHAIN_LENGTH = 4


def _load_certificate(data: bytes) -> x509.Certificate:
    """Parse a certificate completely up front.

    cryptography parses fields lazily, so a damaged certificate would otherwise
    raise ValueError later from ``.issuer`` or ``.extensions``; touching every
    field here turns all of that into one MalformedPackageError. Deprecation
    warnings (e.g. a non-positive serial) count as malformed too.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if data.lstrip().startswith(b"-----"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
            _ = (cert.subject, cert.issuer, cert.serial_number, cert.not_valid_before_utc)
            _ = (cert.not_valid_after_utc, cert.public_key(), cert.signature_hash_algorithm)
            _ = list(cert.extensions)
    except (ValueError, TypeError, UnsupportedAlgorithm, Warning) as exc:
        raise MalformedPackageError(f"certificate cannot be parsed: {exc}") from None
    return cert


def load_certificates_pem(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise KeyFileError(f"no PEM certificates: {exc}") from None


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if data.lstrip().startswith(b"-----"):
                crl = x509.load_pem_x509_crl(data)
            else:
                crl = x509.load_der_x509_crl(data)
            _ = (crl.issuer, list(crl.extensions), crl.signature_hash_algorithm)
            _ = [(r.serial_number, r.revocation_date_utc) for r in crl]
    except (ValueError, TypeError, UnsupportedAlgorithm, Warning) as exc:
        raise RevocationListError(f"revocation list cannot be parsed: {exc}") from None
    return crl


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _public_key(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    try:
        algorithm_of(key)  # type: ignore[arg-type]
    except UnsupportedAlgorithmError as exc:
        raise CertificatePolicyError(
            f"certificate {cert.subject.rfc4514_string()}: {exc.message}"
        ) from None
    return key  # type: ignore[return-value]


@dataclass(frozen=True)
class TrustAnchors:
    """What a verifier trusts: vendor root key hashes and/or root certificates, CRLs.

    ``image_key_hashes`` optionally pins the MCUboot image-signing keys too (what
    the BMS fuses for secure boot); without them a release's images are checked
    for integrity and vouched for by the signed manifest's SHA-256.
    ``image_public_keys`` (DER SubjectPublicKeyInfo) are the image-signing keys
    themselves, trusted like their hashes: needed for images that name their key
    by hash only (imgtool's default), as MCUboot holds the key in its own code.
    """

    root_key_hashes: frozenset[bytes] = frozenset()
    root_certificates: tuple[bytes, ...] = ()  # DER
    revocation_lists: tuple[bytes, ...] = ()  # DER CRLs
    image_key_hashes: frozenset[bytes] = field(default_factory=frozenset)
    image_public_keys: tuple[bytes, ...] = ()  # DER SubjectPublicKeyInfo

    @classmethod
    def from_root_certificate(cls, pem_or_der: bytes) -> TrustAnchors:
        try:
            cert = _load_certificate(pem_or_der)
        except MalformedPackageError as exc:
            raise KeyFileError(exc.message) from None
        _public_key(cert)
        return cls(root_certificates=(_der(cert),))

    @classmethod
    def from_key_hashes(cls, hashes: Iterable[bytes]) -> TrustAnchors:
        values = frozenset(bytes(h) for h in hashes)
        if not values or any(len(h) != 32 for h in values):
            raise KeyFileError("root key hashes must be one or more 32-byte SHA-256 values")
        return cls(root_key_hashes=values)

    def with_revocation_list(self, crl: bytes) -> TrustAnchors:
        """Add a signed revocation list (PEM or DER) made by ``bmsfw keys revoke``."""
        parsed = _load_crl(crl)
        der = parsed.public_bytes(serialization.Encoding.DER)
        return replace(self, revocation_lists=(*self.revocation_lists, der))

    def with_image_key_hashes(self, hashes: Iterable[bytes]) -> TrustAnchors:
        return replace(
            self, image_key_hashes=self.image_key_hashes | frozenset(bytes(h) for h in hashes)
        )

    def with_image_public_keys(self, keys: Iterable[PublicKey | bytes]) -> TrustAnchors:
        """Trust these image-signing keys (objects, or PEM/DER public keys)."""
        ders = tuple(public_key_der(k if not isinstance(k, bytes) else load_public_key(k))
                     for k in keys)  # fmt: skip
        fresh = tuple(d for d in dict.fromkeys(ders) if d not in self.image_public_keys)
        return replace(
            self,
            image_key_hashes=self.image_key_hashes | {hashlib.sha256(d).digest() for d in ders},
            image_public_keys=(*self.image_public_keys, *fresh),
        )

    def roots(self) -> list[x509.Certificate]:
        return [_load_certificate(der) for der in self.root_certificates]


@dataclass(frozen=True)
class CertificateSummary:
    subject: str
    issuer: str
    serial_number: str
    not_before: dt.datetime
    not_after: dt.datetime
    algorithm: str
    key_hash: str
    is_ca: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial_number": self.serial_number,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "algorithm": self.algorithm,
            "key_hash": self.key_hash,
            "is_ca": self.is_ca,
        }


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise CertificatePolicyError(f"bad certificate extensions: {exc}") from None


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise CertificatePolicyError(f"bad certificate extensions: {exc}") from None


def summarize_certificate(cert: x509.Certificate) -> CertificateSummary:
    key = cert.public_key()
    try:
        algorithm: str = algorithm_of(key)  # type: ignore[arg-type]
        digest = key_hash(key).hex()  # type: ignore[arg-type]
    except UnsupportedAlgorithmError:
        algorithm = type(key).__name__
        digest = hashlib.sha256(
            key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest()
    try:
        bc = _basic_constraints(cert)
    except CertificatePolicyError:
        bc = None
    return CertificateSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial_number=f"{cert.serial_number:x}",
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        algorithm=algorithm,
        key_hash=digest,
        is_ca=bool(bc and bc.ca),
    )


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_signer_role(cert: x509.Certificate) -> None:
    name = cert.subject.rfc4514_string()
    bc = _basic_constraints(cert)
    if bc is None or bc.ca:
        raise CertificatePolicyError(f"signer {name} must be an end-entity certificate (CA:false)")
    usage = _key_usage(cert)
    if usage is None or not usage.digital_signature:
        raise CertificatePolicyError(f"signer {name} lacks keyUsage digitalSignature")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    except ValueError as exc:
        raise CertificatePolicyError(f"bad certificate extensions: {exc}") from None
    if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise CertificatePolicyError(
            f"signer {name} is not allowed to sign code (extendedKeyUsage)"
        )


def _check_ca_role(cert: x509.Certificate, cas_below: int) -> None:
    name = cert.subject.rfc4514_string()
    bc = _basic_constraints(cert)
    if bc is None or not bc.ca:
        raise CertificatePolicyError(f"issuer {name} is not a CA (basicConstraints)")
    if bc.path_length is not None and cas_below > bc.path_length:
        raise CertificatePolicyError(
            f"CA {name} allows {bc.path_length} CA(s) below it, the chain has {cas_below}"
        )
    usage = _key_usage(cert)
    if usage is None or not usage.key_cert_sign:
        raise CertificatePolicyError(f"CA {name} lacks keyUsage keyCertSign")


def validate_chain(
    chain_der: Sequence[bytes],
    trust: TrustAnchors,
    *,
    now: dt.datetime,
    extra_revocation_lists: Sequence[bytes] = (),
) -> list[x509.Certificate]:
    """Validate signer-first ``chain_der`` against ``trust``; return signer..root.

    Order of checks (first failure wins): structure and signatures up to a
    trusted root (E106, E115), validity times (E107, E108), revocation (E109).
    """
    if not chain_der:
        raise UntrustedSignerError("the package carries no signer certificate")
    if len(chain_der) > MAX_CHAIN_LENGTH:
        raise UntrustedSignerError(
            f"certificate chain of {len(chain_der)} exceeds {MAX_CHAIN_LENGTH}"
        )
    path = [_load_certificate(der) for der in chain_der]
    _public_key(path[0])
    _check_signer_role(path[0])
    for i in range(1, len(path)):
        if not _issued_by(path[i - 1], path[i]):
            raise UntrustedSignerError(
                f"{path[i - 1].subject.rfc4514_string()} is not issued by "
                f"{path[i].subject.rfc4514_string()}"
            )
        _check_ca_role(path[i], cas_below=i - 1)
    top = path[-1]
    anchored = False
    if trust.root_key_hashes and _issued_by(top, top):
        anchored = key_hash(_public_key(top)) in trust.root_key_hashes
    if not anchored:
        for root in trust.roots():
            if _der(root) == _der(top):
                anchored = True
                break
            if _issued_by(top, root):
                _check_ca_role(root, cas_below=len(path) - 1)
                path.append(root)
                anchored = True
                break
    if not anchored:
        raise UntrustedSignerError(
            f"chain ends at {top.subject.rfc4514_string()}, which is not a trusted vendor root"
        )
    for cert in path:
        subject = cert.subject.rfc4514_string()
        if now < cert.not_valid_before_utc:
            raise CertificateNotYetValidError(
                f"{subject} is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC, "
                f"now is {now:%Y-%m-%d %H:%M} UTC"
            )
        if now > cert.not_valid_after_utc:
            raise CertificateExpiredError(
                f"{subject} expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
    _check_revocation(path, [*trust.revocation_lists, *extra_revocation_lists])
    return path


def _check_revocation(path: list[x509.Certificate], crls_der: Sequence[bytes]) -> None:
    for der in crls_der:
        crl = _load_crl(der)
        for index in range(1, len(path)):
            issuer = path[index]
            if crl.issuer != issuer.subject:
                continue
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                raise RevocationListError(
                    f"revocation list claiming issuer {issuer.subject.rfc4514_string()} "
                    "has an invalid signature"
                )
            child = path[index - 1]
            entry = crl.get_revoked_certificate_by_serial_number(child.serial_number)
            if entry is not None:
                raise RevokedSignerError(
                    f"{child.subject.rfc4514_string()} (serial {child.serial_number:x}) was "
                    f"revoked on {entry.revocation_date_utc:%Y-%m-%d}"
                )
