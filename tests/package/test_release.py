"""Release packages: every rejection has its exact class and code; tampering never passes."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives import serialization

from bmsfw.errors import PackageError
from bmsfw.package import (
    ComponentSource,
    DeviceFacts,
    Manifest,
    ReleaseHeader,
    SignerCredentials,
    TrustAnchors,
    VendorPki,
    build_image,
    create_pki,
    create_revocation_list,
    decode_header,
    encode_header,
    inspect_release,
    issue_signer,
    key_hash,
    release_header,
    sign_release,
    verify_header,
    verify_release,
)
from bmsfw.package import errors as E  # noqa: N812 - short alias keeps the tables readable
from bmsfw.package._pki import RevokedEntry
from bmsfw.package._release import _trust_members, _write_zip
from bmsfw.package._trust import summarize_certificate
from package.conftest import FACTS, HW, NOW, make_release, trust_for


def _forge(
    signer: SignerCredentials,
    manifest: bytes,
    components: Sequence[tuple[str, bytes]],
    crls: Sequence[bytes] = (),
) -> bytes:
    """A package signed over arbitrary manifest bytes (what a buggy or hostile builder makes)."""
    from bmsfw.package._crypto import sign_message

    header = ReleaseHeader(
        manifest=manifest,
        signature=sign_message(signer.private_key, manifest),
        certificates=tuple(
            c.public_bytes(serialization.Encoding.DER) for c in (signer.certificate, *signer.chain)
        ),
        revocation_lists=tuple(crls),
    )
    return _write_zip([("manifest.json", manifest), *_trust_members(header), *components])


def _manifest_of(package: bytes) -> tuple[dict[str, object], list[tuple[str, bytes]]]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        comps = [(n, zf.read(n)) for n in zf.namelist() if n.startswith("components/")]
    return manifest, comps


def _canon(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _expect(
    exc_type: type[PackageError],
    code: str,
    package: bytes,
    trust: TrustAnchors,
    facts: DeviceFacts | None = None,
    *,
    now: dt.datetime = NOW,
) -> None:
    with pytest.raises(exc_type) as info:
        verify_release(package, trust, facts, now=now)
    assert type(info.value) is exc_type
    assert info.value.code == code
    assert info.value.remedy


# --- the good path ---------------------------------------------------------------------


def test_verify_good_release(pki: VendorPki, signed: bytes, firmware: bytes) -> None:
    verified = verify_release(signed, trust_for(pki), FACTS, now=NOW)
    assert verified.manifest.version == "1.4.0"
    assert verified.manifest.security_counter == 5
    assert verified.image_info["app"].security_counter == 5
    assert verified.image_info["app"].hardware == HW
    app = verified.image("app")
    assert app[0x200 : 0x200 + len(firmware)] == firmware
    comp = verified.manifest.component("app")
    assert comp.image_sha256 == hashlib.sha256(app).digest() and comp.encoding == "zstd"
    assert [c.is_ca for c in verified.chain] == [False, True, True]


def test_verify_with_root_certificate(pki: VendorPki, signed: bytes) -> None:
    pem = pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    verified = verify_release(signed, TrustAnchors.from_root_certificate(pem), now=NOW)
    assert verified.manifest.product == "demo-bms"


def test_chain_without_root_verifies_against_root_certificate(
    pki: VendorPki, firmware: bytes
) -> None:
    signer = SignerCredentials(
        pki.signer_key, pki.signer_certificate, (pki.intermediate_certificate,)
    )
    package = sign_release(make_release(pki, firmware), signer)
    der = pki.root_certificate.public_bytes(serialization.Encoding.DER)
    assert verify_release(package, TrustAnchors.from_root_certificate(der), now=NOW).chain[-1].is_ca
    # A device with only the fused hash cannot anchor a chain that stops below the root.
    _expect(E.UntrustedSignerError, "BMSFW-E106", package, trust_for(pki))


def test_header_and_release_decide_identically(pki: VendorPki, signed: bytes) -> None:
    header = release_header(signed)
    manifest = verify_header(header, trust_for(pki), FACTS, now=NOW)
    assert manifest == verify_release(signed, trust_for(pki), FACTS, now=NOW).manifest
    assert decode_header(header).manifest == manifest.to_json_bytes()
    assert encode_header(decode_header(header)) == header
    for facts, error in [
        (DeviceFacts("BMS-48V", "C", "1.2.0", 6), E.AntiRollbackError),
        (DeviceFacts("BMS-48V", "A", "1.2.0", 4), E.IncompatibleHardwareError),
    ]:
        with pytest.raises(error):
            verify_header(header, trust_for(pki), facts, now=NOW)
        with pytest.raises(error):
            verify_release(signed, trust_for(pki), facts, now=NOW)


def test_imgtool_style_image_component(pki: VendorPki) -> None:
    image = build_image(b"\x42" * 700, signing_key=pki.image_signing_key, version="1.4.0+0",
                        security_counter=5, public_key_format="hash")  # fmt: skip
    package = sign_release(
        make_release(pki, b"", components=[ComponentSource.image("app", image)], encoding="raw"),
        pki.signer(),
    )
    # Without image key hashes the signed manifest vouches for the image bytes.
    pem = pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    verified = verify_release(package, TrustAnchors.from_root_certificate(pem), now=NOW)
    assert verified.image("app") == image


@pytest.mark.parametrize("header_version", ["1.4.0+7", "1.4.1+0", "1.4.0+3900000001"])
def test_image_header_version_must_follow_the_rule(pki: VendorPki, header_version: str) -> None:
    # The manifest says 1.4.0: a device running this image would report another version.
    image = build_image(b"\x42" * 700, signing_key=pki.image_signing_key, version=header_version,
                        security_counter=5)  # fmt: skip
    with pytest.raises(E.ImageManifestMismatchError, match=r"imgtool sign --version 1\.4\.0\+0"):
        make_release(pki, b"", components=[ComponentSource.image("app", image)])


# --- one test per error ------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04garbage", b"not a zip at all" * 10])
def test_malformed(ed_pki: VendorPki, data: bytes) -> None:
    _expect(E.MalformedPackageError, "BMSFW-E101", data, trust_for(ed_pki))


def test_truncated(ed_pki: VendorPki, ed_signed: bytes) -> None:
    for cut in (len(ed_signed) - 1, len(ed_signed) // 2, 22):
        _expect(E.MalformedPackageError, "BMSFW-E101", ed_signed[:cut], trust_for(ed_pki))


def test_extra_member_rejected(ed_pki: VendorPki, ed_signed: bytes) -> None:
    manifest, comps = _manifest_of(ed_signed)
    package = _forge(ed_pki.signer(), _canon(manifest), [*comps, ("evil.sh", b"rm -rf /")])
    _expect(E.MalformedPackageError, "BMSFW-E101", package, trust_for(ed_pki))


def test_unknown_manifest_format_version(ed_pki: VendorPki, ed_signed: bytes) -> None:
    manifest, comps = _manifest_of(ed_signed)
    manifest["format_version"] = 3
    package = _forge(ed_pki.signer(), _canon(manifest), comps)
    _expect(E.UnsupportedFormatVersionError, "BMSFW-E102", package, trust_for(ed_pki))


def test_unknown_header_format_version(ed_pki: VendorPki, ed_signed: bytes) -> None:
    header = bytearray(release_header(ed_signed))
    header[8] = 9
    with pytest.raises(E.UnsupportedFormatVersionError) as info:
        verify_header(bytes(header), trust_for(ed_pki), None, now=NOW)
    assert info.value.code == "BMSFW-E102"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.pop("product"),
        lambda m: m.update(security_counter="5"),
        lambda m: m.update(safety_class="harmless"),
        lambda m: m.update(extra=1),
        lambda m: m["hardware"].update(revisions=[]),
    ],
)
def test_invalid_manifest(ed_pki: VendorPki, ed_signed: bytes, mutate: object) -> None:
    manifest, comps = _manifest_of(ed_signed)
    mutate(manifest)  # type: ignore[operator]
    package = _forge(ed_pki.signer(), _canon(manifest), comps)
    _expect(E.InvalidManifestError, "BMSFW-E103", package, trust_for(ed_pki))


def test_manifest_version_not_semver(ed_pki: VendorPki, ed_signed: bytes) -> None:
    manifest, comps = _manifest_of(ed_signed)
    manifest["version"] = "1.4"
    package = _forge(ed_pki.signer(), _canon(manifest), comps)
    _expect(E.InvalidVersionError, "BMSFW-E117", package, trust_for(ed_pki))


def test_non_canonical_manifest(ed_pki: VendorPki, ed_signed: bytes) -> None:
    manifest, comps = _manifest_of(ed_signed)
    package = _forge(ed_pki.signer(), json.dumps(manifest, indent=1).encode(), comps)
    _expect(E.InvalidManifestError, "BMSFW-E103", package, trust_for(ed_pki))


@pytest.mark.req("SEED-CHECKSUM")
def test_hash_mismatch(ed_pki: VendorPki, ed_signed: bytes) -> None:
    manifest, comps = _manifest_of(ed_signed)
    name, data = comps[0]
    swapped = data[:-1] + bytes([data[-1] ^ 1])
    # The zip is rewritten properly (CRC fine): only the signed SHA-256 catches it.
    package = _forge(ed_pki.signer(), _canon(manifest), [(name, swapped)])
    _expect(E.HashMismatchError, "BMSFW-E104", package, trust_for(ed_pki))


@pytest.mark.req("SEED-SIGNATURE")
def test_bad_signature(ed_pki: VendorPki, ed_signed: bytes) -> None:
    header = decode_header(release_header(ed_signed))
    _manifest, comps = _manifest_of(ed_signed)
    bad = ReleaseHeader(header.manifest, bytes([header.signature[0] ^ 1]) + header.signature[1:],
                        header.certificates)  # fmt: skip
    package = _write_zip([("manifest.json", header.manifest), *_trust_members(bad), *comps])
    _expect(E.BadSignatureError, "BMSFW-E105", package, trust_for(ed_pki))


def test_manifest_altered_after_signing(ed_pki: VendorPki, ed_signed: bytes) -> None:
    header = decode_header(release_header(ed_signed))
    manifest, comps = _manifest_of(ed_signed)
    manifest["security_counter"] = 99
    altered = ReleaseHeader(_canon(manifest), header.signature, header.certificates)
    package = _write_zip([("manifest.json", altered.manifest), *_trust_members(altered), *comps])
    _expect(E.BadSignatureError, "BMSFW-E105", package, trust_for(ed_pki))


@pytest.mark.req("SEED-SIGNATURE", "IEC62443-CR1.9")
def test_untrusted_signer(ed_pki: VendorPki, ed_signed: bytes) -> None:
    other = create_pki("ed25519", now=NOW - dt.timedelta(days=10))
    _expect(E.UntrustedSignerError, "BMSFW-E106", ed_signed, trust_for(other))
    pem = other.root_certificate.public_bytes(serialization.Encoding.PEM)
    _expect(
        E.UntrustedSignerError, "BMSFW-E106", ed_signed, TrustAnchors.from_root_certificate(pem)
    )


def test_signer_from_foreign_ca_with_trusted_root_appended(
    ed_pki: VendorPki, ed_signed: bytes
) -> None:
    other = create_pki("ed25519", now=NOW - dt.timedelta(days=10))
    chain = (other.intermediate_certificate, ed_pki.root_certificate)
    manifest, comps = _manifest_of(ed_signed)
    package = _forge(SignerCredentials(other.signer_key, other.signer_certificate, chain),
                     _canon(manifest), comps)  # fmt: skip
    _expect(E.UntrustedSignerError, "BMSFW-E106", package, trust_for(ed_pki))


@pytest.mark.req("IEC62443-CR1.9")
def test_expired_and_not_yet_valid(ed_pki: VendorPki, ed_signed: bytes) -> None:
    trust = trust_for(ed_pki)
    _expect(E.CertificateExpiredError, "BMSFW-E107", ed_signed, trust, now=NOW.replace(year=2040))
    _expect(
        E.CertificateNotYetValidError, "BMSFW-E108", ed_signed, trust, now=NOW.replace(year=2029)
    )


def _revoked_crl(pki: VendorPki) -> bytes:
    return create_revocation_list(
        pki.intermediate_key,
        pki.intermediate_certificate,
        [RevokedEntry(pki.signer_certificate.serial_number, NOW - dt.timedelta(days=1))],
        crl_number=1,
        now=NOW - dt.timedelta(days=1),
    )


@pytest.mark.req("SEED-SIGNATURE", "IEC62443-CR1.9")
def test_revoked_signer_via_trust(ed_pki: VendorPki, ed_signed: bytes) -> None:
    trust = trust_for(ed_pki).with_revocation_list(_revoked_crl(ed_pki))
    _expect(E.RevokedSignerError, "BMSFW-E109", ed_signed, trust)
    with pytest.raises(E.RevokedSignerError):
        verify_header(release_header(ed_signed), trust, None, now=NOW)


def test_revoked_signer_via_package_crl(ed_pki: VendorPki, firmware: bytes) -> None:
    package = sign_release(make_release(ed_pki, firmware), ed_pki.signer(),
                           revocation_lists=[_revoked_crl(ed_pki)])  # fmt: skip
    _expect(E.RevokedSignerError, "BMSFW-E109", package, trust_for(ed_pki))


def test_new_signer_after_revocation_is_accepted(ed_pki: VendorPki, firmware: bytes) -> None:
    key, cert = issue_signer(ed_pki.intermediate_key, ed_pki.intermediate_certificate,
                             name="signer-2", now=NOW - dt.timedelta(days=1))  # fmt: skip
    signer = SignerCredentials(
        key, cert, (ed_pki.intermediate_certificate, ed_pki.root_certificate)
    )
    package = sign_release(make_release(ed_pki, firmware), signer,
                           revocation_lists=[_revoked_crl(ed_pki)])  # fmt: skip
    trust = trust_for(ed_pki).with_revocation_list(_revoked_crl(ed_pki))
    assert verify_release(package, trust, FACTS, now=NOW).chain[0].subject.startswith("CN=signer-2")


@pytest.mark.req("SEED-HW-COMPAT", "SEED-ANTI-ROLLBACK")
@pytest.mark.parametrize(
    ("facts", "error", "code"),
    [
        (DeviceFacts("BMS-24V", "C", "1.2.0", 4), E.IncompatibleHardwareError, "BMSFW-E110"),
        (DeviceFacts("BMS-48V", "A", "1.2.0", 4), E.IncompatibleHardwareError, "BMSFW-E110"),
        (DeviceFacts("BMS-48V", "C", "1.0.9", 4), E.BootloaderTooOldError, "BMSFW-E111"),
        (DeviceFacts("BMS-48V", "C", "garbage", 4), E.BootloaderTooOldError, "BMSFW-E111"),
        (DeviceFacts("BMS-48V", "C", "1.2.0", 6), E.AntiRollbackError, "BMSFW-E112"),
    ],
)
def test_device_policy(ed_pki: VendorPki, ed_signed: bytes, facts: DeviceFacts,
                       error: type[PackageError], code: str) -> None:  # fmt: skip
    _expect(error, code, ed_signed, trust_for(ed_pki), facts)


def test_equal_security_counter_and_ota_standard_allowed(
    ed_pki: VendorPki, ed_signed: bytes
) -> None:
    facts = DeviceFacts("BMS-48V", "B", "1.1.0", 5, channel="ota")
    assert verify_release(ed_signed, trust_for(ed_pki), facts, now=NOW).manifest.version == "1.4.0"


@pytest.mark.req("SEED-OTA-NOT-SAFETY-CRITICAL", "IEC61508-SAFETY-UPDATE")
def test_safety_critical_over_ota(ed_pki: VendorPki, firmware: bytes) -> None:
    package = sign_release(make_release(ed_pki, firmware, safety_class="safety-critical"),
                           ed_pki.signer())  # fmt: skip
    ota = DeviceFacts("BMS-48V", "C", "1.2.0", 4, channel="ota")
    _expect(E.SafetyCriticalOverOtaError, "BMSFW-E113", package, trust_for(ed_pki), ota)
    assert verify_release(package, trust_for(ed_pki), FACTS, now=NOW)  # wired is fine


@pytest.mark.req("SEED-SIGNATURE")
def test_unsigned(ed_pki: VendorPki, firmware: bytes) -> None:
    _expect(E.UnsignedPackageError, "BMSFW-E114", make_release(ed_pki, firmware), trust_for(ed_pki))


@pytest.mark.req("IEC62443-CR1.9")
def test_ca_certificate_as_signer_is_policy_error(ed_pki: VendorPki, ed_signed: bytes) -> None:
    manifest, comps = _manifest_of(ed_signed)
    signer = SignerCredentials(ed_pki.intermediate_key, ed_pki.intermediate_certificate,
                               (ed_pki.root_certificate,))  # fmt: skip
    package = _forge(signer, _canon(manifest), comps)
    _expect(E.CertificatePolicyError, "BMSFW-E115", package, trust_for(ed_pki))


def test_forged_revocation_list(ed_pki: VendorPki, ed_signed: bytes) -> None:
    other = create_pki("ed25519", now=NOW - dt.timedelta(days=10))
    # Signed by another key, but naming our intermediate as issuer.
    forged = create_revocation_list(other.intermediate_key, ed_pki.intermediate_certificate, [],
                                    crl_number=1, now=NOW)  # fmt: skip
    _expect(E.RevocationListError, "BMSFW-E116", ed_signed,
            trust_for(ed_pki).with_revocation_list(forged))  # fmt: skip
    with pytest.raises(E.RevocationListError):
        trust_for(ed_pki).with_revocation_list(b"not a crl")


def test_image_manifest_mismatch(ed_pki: VendorPki) -> None:
    image = build_image(b"\x42" * 700, signing_key=ed_pki.image_signing_key, version="1.4.0",
                        security_counter=4)  # fmt: skip
    with pytest.raises(E.SecurityCounterMismatchError) as info:
        make_release(ed_pki, b"", components=[ComponentSource.image("app", image)])
    assert info.value.code == "BMSFW-E133"


def test_unpinned_image_key_rejected_when_pinned(ed_pki: VendorPki, ed_signed: bytes) -> None:
    trust = TrustAnchors.from_key_hashes([key_hash(ed_pki.root_key)]).with_image_key_hashes(
        [bytes(32)]
    )
    _expect(E.KeyHashNotTrustedError, "BMSFW-E124", ed_signed, trust)


def test_unsupported_encoding(ed_pki: VendorPki, firmware: bytes, ed_signed: bytes) -> None:
    with pytest.raises(E.UnsupportedEncodingError) as info:
        make_release(ed_pki, firmware, encoding="lz5")
    assert info.value.code == "BMSFW-E140"
    manifest, comps = _manifest_of(ed_signed)
    manifest["components"][0]["encoding"] = "delta"  # type: ignore[index]
    package = _forge(ed_pki.signer(), _canon(manifest), comps)
    _expect(E.UnsupportedEncodingError, "BMSFW-E140", package, trust_for(ed_pki))


def test_zstd_decode_error(ed_pki: VendorPki, ed_signed: bytes) -> None:
    manifest, _comps = _manifest_of(ed_signed)
    junk = b"\x28\xb5\x2f\xfd" + b"\x00" * 40  # zstd magic, then nonsense
    comp = manifest["components"][0]  # type: ignore[index]
    comp.update(
        encoding="zstd", stored_size=len(junk), stored_sha256=hashlib.sha256(junk).hexdigest()
    )
    package = _forge(ed_pki.signer(), _canon(manifest), [("components/app.bin.zst", junk)])
    _expect(E.ComponentDecodeError, "BMSFW-E141", package, trust_for(ed_pki))


# --- tampering -------------------------------------------------------------------------


@pytest.mark.req("SEED-CHECKSUM", "IEC62443-CR3.4")
def test_every_tampered_byte_is_rejected(ed_pki: VendorPki, ed_signed: bytes) -> None:
    """Flip one bit at sampled positions everywhere: the trust-relevant parts (manifest,
    signature, certificates, zip structure) densely, the component body with a stride."""
    trust = trust_for(ed_pki)
    body_start = ed_signed.index(b"components/app.bin") + 60
    body_end = body_start + 3000
    positions = [p for p in range(len(ed_signed)) if not body_start <= p < body_end or p % 37 == 0]
    assert len(positions) > 2000
    for pos in positions:
        tampered = bytearray(ed_signed)
        tampered[pos] ^= 0x01
        with pytest.raises(PackageError):
            verify_release(bytes(tampered), trust, FACTS, now=NOW)


def test_every_tampered_header_byte_is_rejected(ed_pki: VendorPki, ed_signed: bytes) -> None:
    header = release_header(ed_signed)
    trust = trust_for(ed_pki)
    for pos in range(len(header)):
        tampered = bytearray(header)
        tampered[pos] ^= 0x80
        with pytest.raises(PackageError):
            verify_header(bytes(tampered), trust, FACTS, now=NOW)


def test_inspect_needs_no_trust(signed: bytes) -> None:
    inspection = inspect_release(signed)
    assert inspection.signed and len(inspection.chain) == 3
    assert inspection.components[0].image is not None
    data = inspection.to_dict()
    assert data["manifest"]["version"] == "1.4.0"  # type: ignore[index]
    assert summarize_certificate  # re-exported helper used by the CLI
    assert Manifest.from_json_bytes(inspection.manifest.to_json_bytes()) == inspection.manifest


def test_device_image_key_hash_checked_before_transfer(ed_pki: VendorPki, ed_signed: bytes) -> None:
    # Only the manifest's root is trusted; the BMS reports the image key hash it has fused.
    trust = TrustAnchors.from_key_hashes([key_hash(ed_pki.root_key)])
    fused = key_hash(ed_pki.image_signing_key)
    ok = DeviceFacts("BMS-48V", "B", "1.2.0", 4, image_key_hashes=(fused,))
    assert verify_release(ed_signed, trust, ok, now=NOW).image_info["app"].key_hash == fused
    two = DeviceFacts("BMS-48V", "B", "1.2.0", 4, image_key_hashes=(bytes(32), fused))
    assert verify_release(ed_signed, trust, two, now=NOW).image_info["app"].key_hash == fused
    other = DeviceFacts("BMS-48V", "B", "1.2.0", 4, image_key_hashes=(b"\1" * 32,))
    _expect(E.ImageKeyNotFusedError, "BMSFW-E134", ed_signed, trust, other)
    # a BMS that reports no keys leaves the check to its secure boot
    silent = DeviceFacts("BMS-48V", "B", "1.2.0", 4)
    assert verify_release(ed_signed, trust, silent, now=NOW).image_info["app"].key_hash == fused
