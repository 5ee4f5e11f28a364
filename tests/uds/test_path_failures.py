"""One X.509 path walk for release signers and UDS testers: each failure, both answers.

``bmsfw.package.validate_path`` reports what failed; the release check turns that
into the package error it always raised (E106-E109, E115, malformed package) and
the BMS's tester check into the negative response code it always answered. Each
row builds a real certificate path that fails in one way and runs it through
both callers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bmsfw.package import (
    LeafRole,
    PathFailure,
    PathRejected,
    TrustAnchors,
    key_hash,
    validate_path,
)
from bmsfw.package._trust import validate_chain
from bmsfw.package.errors import (
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificatePolicyError,
    MalformedPackageError,
    RevocationListError,
    RevokedSignerError,
    UntrustedSignerError,
)
from bmsfw.protocol.uds._auth import TesterCertificateRejected as Rejected
from bmsfw.protocol.uds._auth import verify_tester_chain
from bmsfw.protocol.uds._codec import NRC

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
Key = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_USAGE = "digital_signature content_commitment key_encipherment data_encipherment key_agreement"


def _usage(*, sign: bool, cert_sign: bool) -> x509.KeyUsage:
    on = {"digital_signature": sign, "key_cert_sign": cert_sign, "crl_sign": cert_sign}
    flags = [*_USAGE.split(), "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{flag: on.get(flag, False) for flag in flags})


def _cert(
    cn: str,
    key: Key,
    issuer: str,
    issuer_key: Key,
    *,
    ca: bool,
    path_length: int | None = None,
    sign: bool = True,
    cert_sign: bool | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    start: dt.datetime = NOW - dt.timedelta(days=1),
    end: dt.datetime = NOW + dt.timedelta(days=30),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            _usage(sign=sign and not ca, cert_sign=ca if cert_sign is None else cert_sign),
            critical=True,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


ROOT_KEY = ed25519.Ed25519PrivateKey.generate()
CA_KEY = ed25519.Ed25519PrivateKey.generate()
LEAF_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_KEY = ed25519.Ed25519PrivateKey.generate()
BOTH = (ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.CLIENT_AUTH)
ROOT = _cert("root", ROOT_KEY, "root", ROOT_KEY, ca=True, path_length=1)
CA = _cert("ca", CA_KEY, "root", ROOT_KEY, ca=True, path_length=0)


def _leaf(**options: object) -> x509.Certificate:
    values: dict[str, object] = {"ca": False, "eku": BOTH, **options}
    key = values.pop("key", LEAF_KEY)
    issuer_key = values.pop("issuer_key", CA_KEY)
    return _cert("leaf", key, "ca", issuer_key, **values)  # type: ignore[arg-type]


def _crl(issuer: str, key: Key, serial: int) -> bytes:
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(NOW - dt.timedelta(hours=1))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=7))
        .add_revoked_certificate(entry)
        .sign(key, None)
    )
    return crl.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Case:
    kind: PathFailure | None  # None: the path is accepted
    chain: Callable[[], list[bytes]]
    package_error: type[Exception] | None  # what validate_chain raised before the merge
    nrc: NRC | None  # what verify_tester_chain answered before the merge (None: accepted)
    crls: Callable[[], list[bytes]] = list
    now: dt.datetime = NOW


def _good() -> list[bytes]:
    return [_der(_leaf()), _der(CA), _der(ROOT)]


def _revoked() -> tuple[list[bytes], list[bytes]]:
    leaf = _leaf()
    return [_der(leaf), _der(CA), _der(ROOT)], [_crl("ca", CA_KEY, leaf.serial_number)]


_REVOKED = _revoked()
CASES = {
    "accepted": Case(None, _good, None, None),
    "format": Case(
        PathFailure.FORMAT,
        lambda: [bytes.fromhex("3003020101"), _der(CA), _der(ROOT)],
        MalformedPackageError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_FORMAT,
    ),
    "too-long": Case(
        PathFailure.TOO_LONG,
        lambda: [_der(_leaf()), *[_der(CA)] * 3, _der(ROOT)],
        UntrustedSignerError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_FORMAT,
    ),
    "key-type": Case(
        PathFailure.KEY_TYPE,
        lambda: [_der(_leaf(key=ec.generate_private_key(ec.SECP384R1()))), _der(CA), _der(ROOT)],
        CertificatePolicyError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_TYPE,
    ),
    "not-end-entity": Case(
        PathFailure.NOT_END_ENTITY,
        lambda: [_der(_leaf(ca=True, sign=True)), _der(CA), _der(ROOT)],
        CertificatePolicyError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_TYPE,
    ),
    "key-usage": Case(
        PathFailure.KEY_USAGE,
        lambda: [_der(_leaf(sign=False)), _der(CA), _der(ROOT)],
        CertificatePolicyError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_SCOPE,
    ),
    "role": Case(
        PathFailure.ROLE,
        lambda: [_der(_leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH])), _der(CA), _der(ROOT)],
        CertificatePolicyError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_SCOPE,
    ),
    "issuer": Case(
        PathFailure.ISSUER,
        lambda: [_der(_leaf(issuer_key=OTHER_KEY)), _der(CA), _der(ROOT)],
        UntrustedSignerError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_SIGNATURE,
    ),
    "not-a-ca": Case(
        PathFailure.NOT_CA,
        lambda: [
            _der(_leaf()),
            _der(_cert("ca", CA_KEY, "root", ROOT_KEY, ca=False, eku=BOTH)),
            _der(ROOT),
        ],
        CertificatePolicyError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST,
    ),
    "path-length": Case(
        PathFailure.PATH_LENGTH,
        lambda: [
            _der(_leaf()),
            _der(CA),
            _der(_cert("root", ROOT_KEY, "root", ROOT_KEY, ca=True, path_length=0)),
        ],
        CertificatePolicyError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST,
    ),
    "ca-key-usage": Case(
        PathFailure.CA_KEY_USAGE,
        lambda: [
            _der(_leaf()),
            _der(_cert("ca", CA_KEY, "root", ROOT_KEY, ca=True, cert_sign=False)),
            _der(ROOT),
        ],
        CertificatePolicyError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST,
    ),
    "untrusted-root": Case(
        PathFailure.UNTRUSTED_ROOT,
        lambda: [
            _der(_leaf()),
            _der(_cert("ca", CA_KEY, "root", OTHER_KEY, ca=True)),
            _der(_cert("root", OTHER_KEY, "root", OTHER_KEY, ca=True)),
        ],
        UntrustedSignerError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CHAIN_OF_TRUST,
    ),
    "not-yet-valid": Case(
        PathFailure.NOT_YET_VALID,
        lambda: [_der(_leaf(start=NOW + dt.timedelta(hours=1))), _der(CA), _der(ROOT)],
        CertificateNotYetValidError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_TIME_PERIOD,
    ),
    "expired": Case(
        PathFailure.EXPIRED,
        _good,
        CertificateExpiredError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_TIME_PERIOD,
        now=NOW + dt.timedelta(days=31),
    ),
    "revoked": Case(
        PathFailure.REVOKED,
        lambda: _REVOKED[0],
        RevokedSignerError,
        NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_CERTIFICATE,
        crls=lambda: _REVOKED[1],
    ),
    # A list claiming the CA's name with a bad signature: the package refuses it
    # (E-code of RevocationListError); the BMS ignores it, as it always did.
    "forged-revocation-list": Case(
        PathFailure.REVOCATION_LIST,
        _good,
        RevocationListError,
        None,
        crls=lambda: [_crl("ca", OTHER_KEY, 1)],
    ),
}


@pytest.mark.req("SEED-TESTER-AUTH")
@pytest.mark.parametrize("name", list(CASES))
def test_each_failure_kind_keeps_its_package_error_and_its_nrc(name: str) -> None:
    case = CASES[name]
    chain, crls = case.chain(), case.crls()
    root_hash = key_hash(ROOT_KEY.public_key())

    # The walk itself says what failed.
    if case.kind is None:
        path = validate_path(
            chain, leaf_role=LeafRole.SIGNER, now=case.now, root_key_hashes={root_hash}
        )
        assert [c.subject.rfc4514_string() for c in path] == ["CN=leaf", "CN=ca", "CN=root"]
    else:
        with pytest.raises(PathRejected) as walked:
            validate_path(
                chain,
                leaf_role=LeafRole.SIGNER,
                now=case.now,
                root_key_hashes={root_hash},
                revocation_lists=crls,
            )
        assert walked.value.kind is case.kind

    # The release signer's check: the same package error class (and code) as before.
    trust = TrustAnchors.from_key_hashes([root_hash])
    if case.package_error is None:
        assert len(validate_chain(chain, trust, now=case.now)) == 3
    else:
        with pytest.raises(case.package_error) as refused:
            validate_chain(chain, trust, now=case.now, extra_revocation_lists=crls)
        assert type(refused.value) is case.package_error

    # The BMS's tester check: the same NRC as before (None: accepted).
    wire = b"".join(chain)
    if case.nrc is None:
        identity = verify_tester_chain(
            wire, root_key_hash=root_hash, now=case.now, revocation_lists_der=crls
        )
        assert identity.subject == "CN=leaf"
    else:
        with pytest.raises(Rejected) as rejected:
            verify_tester_chain(
                wire, root_key_hash=root_hash, now=case.now, revocation_lists_der=crls
            )
        assert rejected.value.nrc == case.nrc


def test_the_table_covers_every_failure_kind() -> None:
    covered = {case.kind for case in CASES.values()}
    assert set(PathFailure) - covered == {PathFailure.EMPTY}


def test_an_empty_chain() -> None:
    root_hash = key_hash(ROOT_KEY.public_key())
    with pytest.raises(PathRejected) as walked:
        validate_path([], leaf_role=LeafRole.TESTER, now=NOW, root_key_hashes={root_hash})
    assert walked.value.kind is PathFailure.EMPTY
    with pytest.raises(UntrustedSignerError):
        validate_chain([], TrustAnchors.from_key_hashes([root_hash]), now=NOW)
    with pytest.raises(Rejected) as rejected:
        verify_tester_chain(b"", root_key_hash=root_hash, now=NOW)
    assert rejected.value.nrc == NRC.CERTIFICATE_VERIFICATION_FAILED_INVALID_FORMAT


def test_a_tester_leaf_needs_client_auth_a_signer_leaf_code_signing() -> None:
    root_hash = key_hash(ROOT_KEY.public_key())
    for eku, refused_role in (
        ([ExtendedKeyUsageOID.CODE_SIGNING], LeafRole.TESTER),
        ([ExtendedKeyUsageOID.CLIENT_AUTH], LeafRole.SIGNER),
    ):
        chain = [_der(_leaf(eku=eku)), _der(CA), _der(ROOT)]
        for role in LeafRole:
            kwargs = {"leaf_role": role, "now": NOW, "root_key_hashes": {root_hash}}
            if role is refused_role:
                with pytest.raises(PathRejected) as walked:
                    validate_path(chain, **kwargs)  # type: ignore[arg-type]
                assert walked.value.kind is PathFailure.ROLE
            else:
                assert len(validate_path(chain, **kwargs)) == 3  # type: ignore[arg-type]
