"""Tester certificates for UDS Authentication (0x29, APCE): issue, verify, prove possession.

A tester (the service laptop) authenticates with an end-entity X.509 certificate
issued under the vendor root (normally by the intermediate CA), with keyUsage
digitalSignature and extendedKeyUsage clientAuth, and proves it holds the key by
signing the server's random challenge. Manifest signers carry codeSigning and no
clientAuth, so a release-signing certificate cannot open a programming session
and a tester certificate cannot sign a release.

On the wire (docs/uds.md): ``certificateClient`` is the tester certificate
followed by its issuers (DER, concatenated, leaf first, ending with the vendor
root certificate: the BMS holds only the SHA-256 of the root's public key, so
it needs the root certificate itself to check the issuer's signature);
``proofOfOwnershipClient`` is Ed25519 over ``challengeServer`` or ECDSA P-256
with SHA-256 (DER signature) over it. Negative response codes and
authenticationReturnParameter values are ISO 14229-1:2020's (0x50 invalid time
period ... 0x57 invalid certificate, 0x58 ownership verification failed;
0x11 certificate verified, ownership verification necessary; 0x12 ownership
verified). :func:`challenge_from_verify_response` and
:func:`check_proof_response` read the tester's side of the exchange.

Pure: the device checks against the root key hash in its OTP and the revocation
lists it holds; the only side input is ``now``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bmsfw.package import LeafRole, PathFailure, PathRejected, validate_path
from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.uds._codec import (
    AUTH_CERT_VERIFIED_OWNERSHIP_NEEDED,
    AUTH_OWNERSHIP_VERIFIED,
    NRC,
    decode_der_chain,
)

__all__ = [
    "TESTER_NRC",
    "AuthenticationResponseError",
    "TesterCertificateRejected",
    "TesterIdentity",
    "challenge_from_verify_response",
    "check_proof_response",
    "issue_tester_certificate",
    "load_tester_credentials",
    "sign_challenge",
    "tester_credentials",
    "tester_rejection",
    "verify_proof",
    "verify_tester_chain",
]

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class TesterCertificateRejected(Exception):  # noqa: N818 - a verdict, mapped to an NRC, not a BmsfwError
    """Why the device refuses a tester certificate; ``nrc`` is what it answers."""

    def __init__(self, nrc: NRC, reason: str) -> None:
        self.nrc = nrc
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class TesterIdentity:
    subject: str
    serial_number: int
    public_key: PublicKey


class AuthenticationResponseError(ValueError):
    """A positive 0x29 response whose content the tester cannot use."""


def challenge_from_verify_response(data: bytes) -> bytes:
    """``challengeServer`` from a verifyCertificateUnidirectional response (after 0x69).

    ``data`` = subfunction, authenticationReturnParameter (must be 0x11,
    certificate verified, ownership verification necessary), u16 length,
    challengeServer, u16 length, ephemeralPublicKeyServer.
    """
    if len(data) < 4 or data[0] != 0x01:
        raise AuthenticationResponseError(f"short verifyCertificate response {data[:8].hex()}")
    if data[1] != AUTH_CERT_VERIFIED_OWNERSHIP_NEEDED:
        raise AuthenticationResponseError(
            f"authenticationReturnParameter 0x{data[1]:02X}, expected 0x11 (certificate"
            " verified, ownership verification necessary)"
        )
    n = int.from_bytes(data[2:4], "big")
    challenge = data[4 : 4 + n]
    if not n or len(challenge) != n:
        raise AuthenticationResponseError(f"challengeServer of {len(challenge)} of {n} bytes")
    return bytes(challenge)


def check_proof_response(data: bytes) -> None:
    """A proofOfOwnership response (after 0x69) must say 0x12: ownership verified."""
    if len(data) < 2 or data[0] != 0x03:
        raise AuthenticationResponseError(f"short proofOfOwnership response {data[:8].hex()}")
    if data[1] != AUTH_OWNERSHIP_VERIFIED:
        raise AuthenticationResponseError(
            f"authenticationReturnParameter 0x{data[1]:02X}, expected 0x12 (ownership verified)"
        )


def _sign(key: PrivateKey, message: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def sign_challenge(
    private_key_pem: bytes, challenge: bytes, passphrase: bytes | None = None
) -> bytes:
    """proofOfOwnershipClient: the tester's signature over ``challengeServer``."""
    key = serialization.load_pem_private_key(private_key_pem, passphrase)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"tester key type {type(key).__name__} is not Ed25519 or ECDSA")
    return _sign(key, challenge)


def verify_proof(public_key: PublicKey, challenge: bytes, proof: bytes) -> bool:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(proof, challenge)
        else:
            public_key.verify(proof, challenge, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _spki_hash(cert: x509.Certificate) -> bytes:
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


#: The NRC the device answers for each way a tester's certificate path fails.
TESTER_NRC: dict[PathFailure, NRC] = {
    PathFailure.EMPTY: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_FORMAT,
    PathFailure.TOO_LONG: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_FORMAT,
    PathFailure.FORMAT: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_FORMAT,
    PathFailure.KEY_TYPE: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_TYPE,
    PathFailure.NOT_END_ENTITY: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_TYPE,
    PathFailure.KEY_USAGE: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_SCOPE,
    PathFailure.ROLE: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_SCOPE,
    PathFailure.ISSUER: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_SIGNATURE,
    PathFailure.NOT_CA: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST,
    PathFailure.PATH_LENGTH: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST,
    PathFailure.CA_KEY_USAGE: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST,
    PathFailure.UNTRUSTED_ROOT: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST,
    PathFailure.NOT_YET_VALID: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_TIME_PERIOD,
    PathFailure.EXPIRED: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_TIME_PERIOD,
    PathFailure.REVOCATION_LIST: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CERTIFICATE,
    PathFailure.REVOKED: NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CERTIFICATE,
}


def tester_rejection(failure: PathRejected) -> TesterCertificateRejected:
    """The refusal (NRC and reason) for a tester certificate path that failed."""
    return TesterCertificateRejected(TESTER_NRC[failure.kind], failure.message)


def verify_tester_chain(
    certificate_client: bytes,
    *,
    root_key_hash: bytes,
    now: dt.datetime,
    root_certificate_der: bytes | None = None,
    revocation_lists_der: Sequence[bytes] = (),
) -> TesterIdentity:
    """Check ``certificateClient`` (DER, leaf first) chains to the fused vendor root.

    The chain must end at a self-signed root whose SubjectPublicKeyInfo hashes to
    ``root_key_hash`` (the OTP value), or be issued by ``root_certificate_der``
    if the device stores the root certificate (and its key hashes to the OTP
    value). The path walk is :func:`bmsfw.package.validate_path` (the one the
    release signer's chain goes through); revocation lists with a bad signature
    are ignored. Raises :class:`TesterCertificateRejected` carrying the NRC the
    device answers.
    """
    roots: list[x509.Certificate] = []
    if root_certificate_der is not None:
        root = x509.load_der_x509_certificate(root_certificate_der)
        if _spki_hash(root) == root_key_hash:
            roots.append(root)
    try:
        ders = decode_der_chain(certificate_client)
    except ValueError as exc:
        raise tester_rejection(
            PathRejected(PathFailure.FORMAT, f"not DER certificates: {exc}")
        ) from None
    try:
        path = validate_path(
            ders,
            leaf_role=LeafRole.TESTER,
            now=now,
            root_key_hashes=frozenset({root_key_hash}),
            roots=roots,
            revocation_lists=revocation_lists_der,
            forged_lists_fail=False,
        )
    except PathRejected as exc:
        raise tester_rejection(exc) from None
    leaf = path[0]
    key = leaf.public_key()
    assert isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey)  # key type checked
    return TesterIdentity(leaf.subject.rfc4514_string(), leaf.serial_number, key)


def issue_tester_certificate(
    ca_key: PrivateKey,
    ca_certificate: x509.Certificate,
    *,
    name: str = "service-tester",
    key: PrivateKey | None = None,
    now: dt.datetime | None = None,
    validity_days: int = 365,
) -> tuple[PrivateKey, x509.Certificate]:
    """A tester key and certificate (CA false, digitalSignature, clientAuth) from a vendor CA."""
    now = now or dt.datetime.now(dt.UTC)
    if key is None:
        key = (
            ed25519.Ed25519PrivateKey.generate()
            if isinstance(ca_key, ed25519.Ed25519PrivateKey)
            else ec.generate_private_key(ec.SECP256R1())
        )
    orgs = ca_certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    org = str(orgs[0].value) if orgs else "bmsfw"
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
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
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(ca_key, None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return key, cert


def tester_credentials(
    key: PrivateKey, certificate: x509.Certificate, issuers: Sequence[x509.Certificate]
) -> TesterCredentials:
    """Credentials for :meth:`BmsSession.authenticate`: PEM chain (leaf first) and PEM key."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (certificate, *issuers))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TesterCredentials(certificate_chain_pem=chain, private_key_pem=key_pem)


def load_tester_credentials(
    chain_pem_path: str, key_pem_path: str, passphrase: bytes | None = None
) -> TesterCredentials:
    with open(chain_pem_path, "rb") as chain, open(key_pem_path, "rb") as key:
        return TesterCredentials(chain.read(), key.read(), passphrase)


def chain_pem_to_der(chain_pem: bytes) -> bytes:
    """The concatenated DER ``certificateClient`` from a PEM chain (leaf first)."""
    certs = x509.load_pem_x509_certificates(chain_pem)
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)
