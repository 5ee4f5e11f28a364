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
import enum
import hashlib
import warnings
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from bmsfw.errors import BmsfwError
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

__all__ = [
    "CertificateSummary",
    "LeafRole",
    "PathFailure",
    "PathRejected",
    "TrustAnchors",
    "signer_error",
    "summarize_certificate",
    "validate_chain",
    "validate_path",
]

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


class LeafRole(enum.Enum):
    """What the end-entity certificate of a path is for."""

    SIGNER = "signer"  # release signer: extendedKeyUsage, if present, must allow codeSigning
    TESTER = "tester"  # UDS tester: extendedKeyUsage clientAuth required


class PathFailure(enum.Enum):
    """What a certificate path walk found wrong (first failure wins)."""

    EMPTY = "empty"  # no certificate at all
    TOO_LONG = "too-long"  # more than MAX_CHAIN_LENGTH certificates
    FORMAT = "format"  # a certificate does not parse
    KEY_TYPE = "key-type"  # key is not Ed25519 or ECDSA P-256
    NOT_END_ENTITY = "not-end-entity"  # the leaf is a CA (or has no basicConstraints)
    KEY_USAGE = "key-usage"  # the leaf lacks keyUsage digitalSignature
    ROLE = "role"  # the leaf's extendedKeyUsage does not allow its role
    ISSUER = "issuer"  # a certificate is not signed by the next one
    NOT_CA = "not-a-ca"  # an issuer is not a CA (basicConstraints)
    PATH_LENGTH = "path-length"  # an issuer's pathLenConstraint is exceeded
    CA_KEY_USAGE = "ca-key-usage"  # an issuer lacks keyUsage keyCertSign
    UNTRUSTED_ROOT = "untrusted-root"  # the path does not end at a trusted vendor root
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    REVOCATION_LIST = "revocation-list"  # a revocation list is unreadable or forged
    REVOKED = "revoked"


class PathRejected(Exception):  # noqa: N818 - a verdict that each caller maps to its own answer
    """A certificate path failed; ``kind`` says what, ``message`` says where."""

    def __init__(self, kind: PathFailure, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)


def _path_key(cert: x509.Certificate) -> PublicKey:
    try:
        return _public_key(cert)
    except CertificatePolicyError as exc:
        raise PathRejected(PathFailure.KEY_TYPE, exc.message) from None


def _path_extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise PathRejected(PathFailure.FORMAT, f"bad certificate extensions: {exc}") from None


def _check_leaf_role(cert: x509.Certificate, role: LeafRole) -> None:
    name = f"{role.value} {cert.subject.rfc4514_string()}"
    bc = _path_extension(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or bc.ca:
        raise PathRejected(
            PathFailure.NOT_END_ENTITY, f"{name} must be an end-entity certificate (CA:false)"
        )
    usage = _path_extension(cert, x509.KeyUsage)
    if not isinstance(usage, x509.KeyUsage) or not usage.digital_signature:
        raise PathRejected(PathFailure.KEY_USAGE, f"{name} lacks keyUsage digitalSignature")
    eku = _path_extension(cert, x509.ExtendedKeyUsage)
    if role is LeafRole.SIGNER:
        if isinstance(eku, x509.ExtendedKeyUsage) and ExtendedKeyUsageOID.CODE_SIGNING not in eku:
            raise PathRejected(
                PathFailure.ROLE, f"{name} is not allowed to sign code (extendedKeyUsage)"
            )
    elif not isinstance(eku, x509.ExtendedKeyUsage) or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PathRejected(
            PathFailure.ROLE,
            f"{name} is not a tester certificate (extendedKeyUsage clientAuth missing)",
        )


def _check_ca_role(cert: x509.Certificate, cas_below: int) -> None:
    name = cert.subject.rfc4514_string()
    bc = _path_extension(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise PathRejected(PathFailure.NOT_CA, f"issuer {name} is not a CA (basicConstraints)")
    if bc.path_length is not None and cas_below > bc.path_length:
        raise PathRejected(
            PathFailure.PATH_LENGTH,
            f"CA {name} allows {bc.path_length} CA(s) below it, the chain has {cas_below}",
        )
    usage = _path_extension(cert, x509.KeyUsage)
    if not isinstance(usage, x509.KeyUsage) or not usage.key_cert_sign:
        raise PathRejected(PathFailure.CA_KEY_USAGE, f"CA {name} lacks keyUsage keyCertSign")


def validate_path(
    chain_der: Sequence[bytes],
    *,
    leaf_role: LeafRole,
    now: dt.datetime,
    root_key_hashes: Collection[bytes] = frozenset(),
    roots: Sequence[x509.Certificate] = (),
    revocation_lists: Sequence[bytes] = (),
    forged_lists_fail: bool = True,
) -> list[x509.Certificate]:
    """Walk leaf-first ``chain_der`` (DER or PEM each) to a trusted root; return leaf..root.

    The one X.509 path validator for release signers and UDS testers. Trusted
    roots: a self-signed top whose SubjectPublicKeyInfo SHA-256 is in
    ``root_key_hashes`` (the fused OTP value), or a top equal to or issued by
    one of ``roots``. Order of checks (first failure wins): count, format, leaf
    key type and role, each issuer's signature and CA role, trusted root,
    validity times, revocation. A revocation list whose issuer is a CA of the
    path but whose signature is bad fails the path if ``forged_lists_fail``,
    else it is ignored. Raises :class:`PathRejected` with a :class:`PathFailure`.
    """
    if not chain_der:
        raise PathRejected(PathFailure.EMPTY, "the package carries no signer certificate")
    if len(chain_der) > MAX_CHAIN_LENGTH:
        raise PathRejected(
            PathFailure.TOO_LONG,
            f"certificate chain of {len(chain_der)} exceeds {MAX_CHAIN_LENGTH}",
        )
    try:
        path = [_load_certificate(der) for der in chain_der]
    except MalformedPackageError as exc:
        raise PathRejected(PathFailure.FORMAT, exc.message) from None
    _path_key(path[0])
    _check_leaf_role(path[0], leaf_role)
    for i in range(1, len(path)):
        if not _issued_by(path[i - 1], path[i]):
            raise PathRejected(
                PathFailure.ISSUER,
                f"{path[i - 1].subject.rfc4514_string()} is not issued by "
                f"{path[i].subject.rfc4514_string()}",
            )
        _check_ca_role(path[i], cas_below=i - 1)
    top = path[-1]
    anchored = False
    if root_key_hashes and _issued_by(top, top):
        anchored = key_hash(_path_key(top)) in root_key_hashes
    if not anchored:
        for root in roots:
            if _der(root) == _der(top):
                anchored = True
                break
            if _issued_by(top, root):
                _check_ca_role(root, cas_below=len(path) - 1)
                path.append(root)
                anchored = True
                break
    if not anchored:
        raise PathRejected(
            PathFailure.UNTRUSTED_ROOT,
            f"chain ends at {top.subject.rfc4514_string()}, which is not a trusted vendor root",
        )
    for cert in path:
        subject = cert.subject.rfc4514_string()
        if now < cert.not_valid_before_utc:
            raise PathRejected(
                PathFailure.NOT_YET_VALID,
                f"{subject} is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC, "
                f"now is {now:%Y-%m-%d %H:%M} UTC",
            )
        if now > cert.not_valid_after_utc:
            raise PathRejected(
                PathFailure.EXPIRED,
                f"{subject} expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            )
    _check_revocation(path, revocation_lists, forged_lists_fail)
    return path


_SIGNER_ERRORS: dict[PathFailure, type[BmsfwError]] = {
    PathFailure.EMPTY: UntrustedSignerError,
    PathFailure.TOO_LONG: UntrustedSignerError,
    PathFailure.FORMAT: MalformedPackageError,
    PathFailure.KEY_TYPE: CertificatePolicyError,
    PathFailure.NOT_END_ENTITY: CertificatePolicyError,
    PathFailure.KEY_USAGE: CertificatePolicyError,
    PathFailure.ROLE: CertificatePolicyError,
    PathFailure.ISSUER: UntrustedSignerError,
    PathFailure.NOT_CA: CertificatePolicyError,
    PathFailure.PATH_LENGTH: CertificatePolicyError,
    PathFailure.CA_KEY_USAGE: CertificatePolicyError,
    PathFailure.UNTRUSTED_ROOT: UntrustedSignerError,
    PathFailure.NOT_YET_VALID: CertificateNotYetValidError,
    PathFailure.EXPIRED: CertificateExpiredError,
    PathFailure.REVOCATION_LIST: RevocationListError,
    PathFailure.REVOKED: RevokedSignerError,
}


def signer_error(failure: PathRejected) -> BmsfwError:
    """The package error (E106-E109, E115, ...) a release signer's path failure raises."""
    return _SIGNER_ERRORS[failure.kind](failure.message)


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
    try:
        return validate_path(
            chain_der,
            leaf_role=LeafRole.SIGNER,
            now=now,
            root_key_hashes=trust.root_key_hashes,
            roots=trust.roots(),
            revocation_lists=[*trust.revocation_lists, *extra_revocation_lists],
        )
    except PathRejected as exc:
        raise signer_error(exc) from None


def _check_revocation(
    path: list[x509.Certificate], crls_der: Sequence[bytes], forged_lists_fail: bool
) -> None:
    for der in crls_der:
        try:
            crl = _load_crl(der)
        except RevocationListError as exc:
            raise PathRejected(PathFailure.REVOCATION_LIST, exc.message) from None
        for index in range(1, len(path)):
            issuer = path[index]
            if crl.issuer != issuer.subject:
                continue
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                if not forged_lists_fail:
                    continue
                raise PathRejected(
                    PathFailure.REVOCATION_LIST,
                    f"revocation list claiming issuer {issuer.subject.rfc4514_string()} "
                    "has an invalid signature",
                )
            child = path[index - 1]
            entry = crl.get_revoked_certificate_by_serial_number(child.serial_number)
            if entry is not None:
                raise PathRejected(
                    PathFailure.REVOKED,
                    f"{child.subject.rfc4514_string()} (serial {child.serial_number:x}) was "
                    f"revoked on {entry.revocation_date_utc:%Y-%m-%d}",
                )
