"""The device refuses bad packages with the package module's own error classes and codes,
and after each refusal the old image still boots and nothing stored changed."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from bmsfw.errors import BmsfwError
from bmsfw.package import (
    build_release,
    decode_header,
    encode_header,
    public_key_der,
    sign_release,
)
from bmsfw.package import release_header as header_of
from bmsfw.package.errors import (
    AntiRollbackError,
    BadSignatureError,
    IncompatibleHardwareError,
    KeyHashNotTrustedError,
    OtaDowngradeError,
    SafetyCriticalOverOtaError,
    UntrustedSignerError,
)
from bmsfw.protocol.device_errors import (
    EraseNeededError,
    NoStagedUpdateError,
    NotVerifiedError,
    ProvisioningError,
    VerifyFailedError,
    WriteOutOfRangeError,
)
from bmsfw.sim import SimClock, VirtualBms, provision

from .conftest import Release, Vendor, small_spec


def _fingerprint(device_dir: Path, bms: VirtualBms) -> tuple[str, str, int, str]:
    bank_a = hashlib.sha256(bms.flash.view("bank_a")).hexdigest()
    return (
        bms.config_snapshot().checksum,
        bank_a,
        bms.otp.security_counter,
        bms.boot_status().running_version,
    )


def _assert_untouched_after_power_cycle(
    device_dir: Path, bms: VirtualBms, before: tuple[str, str, int, str], *, staged: bool = False
) -> None:
    bms.close()
    again = VirtualBms(device_dir, clock=SimClock())
    status = again.wait_boot()
    assert (status.active_bank, status.running_version, status.image_state) == (
        "A",
        "1.0.0",
        "confirmed",
    )
    assert again.self_test().passed and again.contactors_closed
    assert _fingerprint(device_dir, again) == before
    transfer = again.transfer_status()
    assert transfer.staged is staged and not transfer.verified
    again.close()


def _tampered_signature(release: Release) -> bytes:
    parsed = decode_header(release.header)
    signature = bytearray(parsed.signature)
    signature[5] ^= 0x40
    return encode_header(type(parsed)(parsed.manifest, bytes(signature), parsed.certificates))


CASES: dict[str, tuple[Callable[[Vendor, Vendor], bytes], str, type[BmsfwError], str]] = {
    "bad signature": (
        lambda v, o: _tampered_signature(v.release("2.0.0", 2)),
        "wired",
        BadSignatureError,
        "BMSFW-E105",
    ),
    "wrong hardware revision": (
        lambda v, o: v.release("2.0.0", 2, revisions=("A", "B")).header,
        "wired",
        IncompatibleHardwareError,
        "BMSFW-E110",
    ),
    "lower security counter": (
        lambda v, o: v.release("0.9.0", 0).header,
        "wired",
        AntiRollbackError,
        "BMSFW-E112",
    ),
    "safety-critical over OTA": (
        lambda v, o: v.release("2.0.0", 2, safety_class="safety-critical").header,
        "ota",
        SafetyCriticalOverOtaError,
        "BMSFW-E113",
    ),
    "lower version over OTA at an equal security counter": (
        lambda v, o: v.release("0.9.0", 1).header,
        "ota",
        OtaDowngradeError,
        "BMSFW-E145",
    ),
    "signed by another vendor": (
        lambda v, o: v.release("2.0.0", 2, pki=o.pki).header,
        "wired",
        UntrustedSignerError,
        "BMSFW-E106",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_device_refuses_header(
    case: str, bms: VirtualBms, device_dir: Path, vendor: Vendor, other_vendor: Vendor
) -> None:
    make_header, channel, error, code = CASES[case]
    header = make_header(vendor, other_vendor)
    before = _fingerprint(device_dir, bms)
    with pytest.raises(error) as caught:
        bms.begin_update(header, channel=channel)  # type: ignore[arg-type]
    assert type(caught.value) is error and caught.value.code == code
    # Nothing was staged, so the transfer steps are refused too.
    with pytest.raises(NoStagedUpdateError):
        bms.erase_inactive()
    _assert_untouched_after_power_cycle(device_dir, bms, before)


@pytest.mark.req("SEED-OTA-NOT-SAFETY-CRITICAL", "IEC61508-SAFETY-UPDATE")
def test_safety_critical_is_accepted_wired(bms: VirtualBms, vendor: Vendor) -> None:
    release = vendor.release("2.0.0", 2, safety_class="safety-critical")
    status = bms.begin_update(release.header, channel="wired")
    assert status.staged and status.total_size == len(release.image)


def test_lower_version_at_an_equal_counter_is_accepted_wired(
    bms: VirtualBms, vendor: Vendor
) -> None:
    """The device's own version rule is for OTA only: on site the host decides (a person's
    explicit `--allow-downgrade REASON`), and the BMS stages the older release; a newer
    one over the air is staged as always."""
    older = vendor.release("0.9.0", 1)
    status = bms.begin_update(older.header, channel="wired")
    assert status.staged and status.total_size == len(older.image)
    newer = vendor.release("1.1.0", 1)
    assert bms.begin_update(newer.header, channel="ota").staged


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_authorised_downgrade_over_ota_lifts_only_the_version_rule(
    bms: VirtualBms, vendor: Vendor
) -> None:
    """With the authorised-downgrade flag (a person gave a reason on the host) the BMS
    stages a lower version over the air at an equal counter, and keeps the flag in its
    staging record (staging it again without the flag starts afresh: refused, E145);
    a lower security counter stays refused whatever the flag says."""
    lower_counter = vendor.release("0.8.0", 0).header
    with pytest.raises(AntiRollbackError):
        bms.begin_update(lower_counter, channel="ota", downgrade_authorised=True)
    assert not bms.transfer_status().staged
    older = vendor.release("0.9.0", 1)
    status = bms.begin_update(older.header, channel="ota", downgrade_authorised=True)
    assert status.staged and status.total_size == len(older.image)
    with pytest.raises(OtaDowngradeError):
        bms.begin_update(older.header, channel="ota")


@pytest.mark.req("SEED-SECURE-BOOT", "IEC62443-EDR3.10", "NIST800-193-PROTECT")
def test_image_signed_with_unfused_key_is_refused_at_verify(
    bms: VirtualBms, device_dir: Path, vendor: Vendor, other_vendor: Vendor
) -> None:
    """Manifest by the right vendor, MCUboot image signed with a key not fused in OTP."""
    from bmsfw.package import ComponentSource, HardwareCompat, verify_release
    from bmsfw.sim import make_app_payload

    unsigned = build_release(
        product="BMS-16S firmware",
        version="2.0.0",
        security_counter=2,
        hardware=HardwareCompat("BMS-16S", ("C",)),
        min_bootloader_version="2.0.0",
        components=[ComponentSource("app", make_app_payload("2.0.0", size=4096))],
        image_signing_key=other_vendor.pki.image_signing_key,
        encoding="raw",
    )
    package = sign_release(unsigned, vendor.pki.signer())
    image = verify_release(package, vendor.trust()).images["app"]
    before = _fingerprint(device_dir, bms)
    bms.begin_update(header_of(package))
    bms.erase_inactive()
    bms.write_inactive(0, image)
    with pytest.raises(KeyHashNotTrustedError) as caught:
        bms.verify_inactive()
    assert caught.value.code == "BMSFW-E124"
    with pytest.raises(NotVerifiedError):
        bms.activate()
    # The staged transfer stays (inactive bank only) so a client can inspect it; never verified.
    _assert_untouched_after_power_cycle(device_dir, bms, before, staged=True)


def test_corrupted_transfer_fails_verify_and_can_be_repaired(
    bms: VirtualBms, release_v2: Release
) -> None:
    image = bytearray(release_v2.image)
    image[1000] ^= 0xFF
    bms.begin_update(release_v2.header)
    bms.erase_inactive()
    bms.write_inactive(0, bytes(image))
    with pytest.raises(VerifyFailedError) as caught:
        bms.verify_inactive()
    assert caught.value.code == "BMSFW-E205"
    # Programming the right byte over the wrong one needs an erase: flash semantics.
    with pytest.raises(EraseNeededError):
        bms.write_inactive(1000, release_v2.image[1000:1001])
    # Repair by block CRC: find the bad block, erase, rewrite.
    good = [zlib.crc32(release_v2.image[o : o + 512]) for o in range(0, len(release_v2.image), 512)]
    bad = [i for i, (a, b) in enumerate(zip(bms.block_crcs(), good, strict=True)) if a != b]
    assert bad == [1000 // 512]
    bms.erase_inactive()
    bms.write_inactive(0, release_v2.image)
    assert bms.verify_inactive().security_counter == 2


def test_sequence_errors(bms: VirtualBms, release_v2: Release) -> None:
    with pytest.raises(NoStagedUpdateError):
        bms.write_inactive(0, b"x")
    with pytest.raises(NotVerifiedError):
        bms.begin_update(release_v2.header)
        bms.activate()
    with pytest.raises(EraseNeededError):
        bms.write_inactive(0, release_v2.image[:64])
    bms.erase_inactive()
    with pytest.raises(WriteOutOfRangeError):
        bms.write_inactive(len(release_v2.image) - 4, b"12345678")
    with pytest.raises(WriteOutOfRangeError):
        bms.write_inactive(-8, b"12345678")


def test_provisioning_refuses_an_image_key_that_is_not_the_fused_one(
    tmp_path: Path, vendor: Vendor, other_vendor: Vendor, release_v1: Release
) -> None:
    with pytest.raises(ProvisioningError, match="does not hash to image_key_hash"):
        provision(
            tmp_path / "bms",
            initial_image=release_v1.image,
            root_key_hash=vendor.root_key_hash,
            image_key_hash=vendor.image_key_hash,
            image_public_key=public_key_der(other_vendor.pki.image_signing_key),
            spec=small_spec(),
        )
    assert not (tmp_path / "bms").exists()  # refused before anything was created
