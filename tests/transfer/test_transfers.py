"""Compressed, delta and encrypted updates through the virtual BMS's device API."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from bmsfw.package import TrustAnchors, _release, key_hash, verify_release
from bmsfw.package._encrypt import generate_encryption_key
from bmsfw.package._release import component_image
from bmsfw.package.errors import (
    DecryptionError,
    DeltaBaseMismatchError,
    DeltaPatchError,
    HashMismatchError,
)
from bmsfw.protocol.device_errors import NotVerifiedError, PowerCutError, VerifyFailedError
from bmsfw.sim import SimClock, VirtualBms
from bmsfw.sim._stream_decode import (
    EncodedTransfer,
    check_delta_base,
    fuse_encryption_key,
    install_encoded,
)

from .conftest import Release, Vendor, patch_release_payload, power_on

IMGTOOL = Path(sys.executable).with_name("imgtool")


def _finish_update(bms: VirtualBms, version: str) -> None:
    bms.activate()
    bms.reset()
    status = bms.wait_boot()
    assert (status.running_version, status.image_state) == (version, "test")
    assert bms.self_test().passed
    bms.confirm()
    assert bms.boot_status().image_state == "confirmed"


def _flash(path: Path) -> bytes:
    return (path / "flash.bin").read_bytes()


@pytest.mark.parametrize("encoding", ["zstd", "lz4", "heatshrink", "lzma2thumb"])
def test_compressed_update_end_to_end(vendor: Vendor, device_dir: Path, encoding: str) -> None:
    release = vendor.release("1.1.0", 2, encoding=encoding)
    comp = release.manifest.component("app")
    assert comp.encoding == encoding and comp.stored_size < comp.image_size
    bms = power_on(device_dir)
    install_encoded(bms, release.header, release.stored, chunk=300)
    _finish_update(bms, "1.1.0")


def test_delta_update_end_to_end(vendor: Vendor, v1: Release, device_dir: Path) -> None:
    delta = vendor.release(
        "1.0.1",
        1,
        delta_from={"app": component_image(v1.package)},
        payload=patch_release_payload("1.0.1"),
    )
    comp = delta.manifest.component("app")
    assert delta.manifest.format_version == 2 and comp.is_delta
    assert comp.stored_size * 10 < comp.image_size  # a patch release: a small delta
    full = vendor.release("1.0.1", 1, payload=patch_release_payload("1.0.1"))
    assert comp.image_sha256 == full.manifest.component("app").image_sha256  # same image
    # The host verifies the signed delta release without the base (patch kept as payload).
    trust = TrustAnchors.from_key_hashes([key_hash(vendor.pki.root_key)])
    verified = verify_release(delta.package, trust)
    assert "app" not in verified.images and len(verified.payloads["app"]) == comp.payload_size
    bms = power_on(device_dir)
    install_encoded(bms, delta.header, delta.stored)
    _finish_update(bms, "1.0.1")


def test_delta_against_wrong_base_is_refused_before_any_write(
    vendor: Vendor, device_dir: Path
) -> None:
    other_base = component_image(vendor.release("1.0.5", 1).package)
    delta = vendor.release("1.1.0", 2, delta_from={"app": other_base})
    bms = power_on(device_dir)
    before, ops = _flash(device_dir), bms.flash_op_count
    with pytest.raises(DeltaBaseMismatchError) as exc:
        install_encoded(bms, delta.header, delta.stored)
    assert exc.value.code == "BMSFW-E142"
    assert bms.flash_op_count == ops and _flash(device_dir) == before  # nothing written
    with pytest.raises(DeltaBaseMismatchError):
        check_delta_base(bms, delta.header)
    bms.close()
    assert power_on(device_dir).boot_status().running_version == "1.0.0"


def test_corrupted_patch_is_caught_before_activation(
    vendor: Vendor, v1: Release, device_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = component_image(v1.package)
    good = vendor.release(
        "1.0.1", 1, delta_from={"app": base}, payload=patch_release_payload("1.0.1")
    )
    # 1. Damaged in transit: the stored bytes no longer hash to the signed value.
    bms = power_on(device_dir)
    bms.begin_update(good.header)
    bms.erase_inactive()
    transfer = EncodedTransfer(bms)
    damaged = bytearray(good.stored)
    damaged[len(damaged) // 2] ^= 0x40
    transfer.feed(bytes(damaged))
    with pytest.raises(HashMismatchError):
        transfer.finish()
    # 2. Signed but wrong (a build-server bug): the patch was made from other base bytes
    # than the base it names, so it yields an image that is not the manifest's.
    wrong_base = bytearray(base)
    # A few bytes off by one: bsdiff still aligns the regions and records differences,
    # which added to the real base give a different image.
    wrong_base[2500:2510] = bytes((b + 1) & 0xFF for b in wrong_base[2500:2510])
    real_create = _release.create_delta
    monkeypatch.setattr(
        _release,
        "create_delta",
        lambda _base, new, compression: real_create(
            bytes(wrong_base), new, compression=compression
        ),
    )
    forged = vendor.release(
        "1.0.1", 1, delta_from={"app": base}, payload=patch_release_payload("1.0.1")
    )
    monkeypatch.undo()
    assert forged.manifest.component("app").delta_base_sha256 == hashlib.sha256(base).digest()
    bms.begin_update(forged.header)
    bms.erase_inactive()
    transfer = EncodedTransfer(bms)
    transfer.feed(forged.stored)
    with pytest.raises(DeltaPatchError) as exc:
        transfer.finish()
    assert exc.value.code == "BMSFW-E143"
    with pytest.raises(NotVerifiedError):
        bms.activate()
    with pytest.raises(VerifyFailedError):
        bms.verify_inactive()
    bms.close()
    status = power_on(device_dir).boot_status()
    assert (status.running_version, status.image_state) == ("1.0.0", "confirmed")


def test_delta_power_cut_exhaustive(vendor: Vendor, v1: Release, tmp_path: Path) -> None:
    """MCUboot-simulator style: cut the power at every flash operation of a delta update."""
    from bmsfw.sim import provision

    delta = vendor.release(
        "1.0.1",
        1,
        delta_from={"app": component_image(v1.package)},
        payload=patch_release_payload("1.0.1"),
    )
    template = tmp_path / "tpl"
    from .conftest import small_spec

    provision(
        template,
        initial_image=component_image(vendor.release("0.9.0", 1).package),
        root_key_hash=key_hash(vendor.pki.root_key),
        image_key_hash=key_hash(vendor.pki.image_signing_key),
        spec=small_spec(),
    )
    # Take one full update first: 1.0.0 then runs from bank B and bank A holds 0.9.0,
    # so the delta has a non-blank bank to erase, like a device in the field.
    bms = power_on(template)
    install_encoded(bms, v1.header, v1.stored)
    _finish_update(bms, "1.0.0")
    bms.close()

    def update(bms: VirtualBms) -> None:
        install_encoded(bms, delta.header, delta.stored)
        _finish_update(bms, "1.0.1")

    work = tmp_path / "count"
    shutil.copytree(template, work)
    bms = power_on(work)
    start = bms.flash_op_count
    update(bms)
    n_ops = bms.flash_op_count - start
    assert n_ops >= 15  # journals, erase of the old bank, patch output, boot record, OTP
    booted = {"1.0.0": 0, "1.0.1": 0}
    for k in range(1, n_ops + 1):
        work = tmp_path / f"cut{k}"
        shutil.copytree(template, work)
        clock = SimClock()
        bms = power_on(work, clock)
        bms.faults.power_cut_at(k, seed=k)
        with pytest.raises(PowerCutError):
            update(bms)
        bms = VirtualBms(work, clock=clock)
        status = bms.wait_boot()
        assert status.run_state == "application", (k, status)
        assert status.running_version in booted, (k, status)
        assert bms.self_test().passed, k
        booted[status.running_version] += 1
        # Finish the job: confirm a test image, or run the delta again (the base is intact).
        if status.running_version == "1.0.1" and status.image_state == "test":
            bms.confirm()
        elif status.running_version == "1.0.0":
            update(bms)
        final = bms.boot_status()
        assert (final.running_version, final.image_state) == ("1.0.1", "confirmed"), k
        bms.close()
    print(f"\ndelta power-cut sweep: {n_ops} cuts, all recovered; booted {booted}")
    assert booted["1.0.0"] > 0 and booted["1.0.1"] > 0


@pytest.mark.req("SEED-OTA-ENCRYPTION")
def test_encrypted_update_end_to_end_and_wrong_key(vendor: Vendor, device_dir: Path) -> None:
    device_key = generate_encryption_key("ecies-x25519")
    release = vendor.release("1.2.0", 2, encrypt_to=device_key.public_key(), encoding="zstd")
    comp = release.manifest.component("app")
    assert comp.encryption == "ecies-x25519" and len(comp.enc_key) == 80
    # Server/gateway/wire see ciphertext: the firmware marker is not in the payload.
    trust = TrustAnchors.from_key_hashes([key_hash(vendor.pki.root_key)])
    payload = verify_release(release.package, trust).payloads["app"]
    assert b"1.2.0" not in payload[0x200 : 0x200 + 4096]
    bms = power_on(device_dir)
    with pytest.raises(DecryptionError):  # no key fused yet
        install_encoded(bms, release.header, release.stored)
    bms.abort_update()
    fuse_encryption_key(bms, generate_encryption_key("ecies-x25519"))  # another class's key
    with pytest.raises(DecryptionError):
        install_encoded(bms, release.header, release.stored)
    bms.close()


def _imgtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IMGTOOL), *args], capture_output=True, text=True, check=False)


@pytest.mark.skipif(not IMGTOOL.exists(), reason="imgtool (dev extra) not installed")
@pytest.mark.parametrize("scheme", ["ecies-x25519", "ecies-p256"])
def test_encrypted_images_interoperate_with_imgtool(
    vendor: Vendor, device_dir: Path, tmp_path: Path, scheme: str
) -> None:
    device_key = generate_encryption_key(scheme)  # type: ignore[arg-type]
    pub_pem = tmp_path / "enc.pub.pem"
    pub_pem.write_bytes(
        device_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    sign_key = tmp_path / "sign.pem"
    sign_key.write_bytes(
        vendor.pki.image_signing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    from bmsfw.sim import make_app_payload

    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(make_app_payload("1.3.0", size=4096))
    # imgtool -> bmsfw: imgtool encrypts, the virtual BMS decrypts, secure-boots and runs it.
    result = _imgtool(
        "sign", "-k", str(sign_key), "-E", str(pub_pem), "--public-key-format", "full",
        "--header-size", "0x200",
        "--pad-header", "--align", "8", "--version", "1.3.0", "--security-counter", "3",
        "--slot-size", "0x2000", str(firmware), str(tmp_path / "imgtool.enc.bin"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    encrypted = (tmp_path / "imgtool.enc.bin").read_bytes()
    release = vendor.release("1.3.0", 3, image=encrypted)
    assert release.manifest.component("app").encryption == scheme
    bms = power_on(device_dir)
    fuse_encryption_key(bms, device_key)
    install_encoded(bms, release.header, release.stored)
    _finish_update(bms, "1.3.0")
    # bmsfw -> imgtool: our encrypted image, decrypted by the BMS into its bank, is what
    # imgtool verify accepts (same hash/signature layout over the plaintext + flag), and
    # imgtool dumpinfo reads our encrypted image with its ENC TLV.
    ours = vendor.release("1.4.0", 4, encrypt_to=device_key.public_key())
    ours_image = verify_release(
        ours.package, TrustAnchors.from_key_hashes([key_hash(vendor.pki.root_key)])
    ).payloads["app"]
    (tmp_path / "ours.enc.bin").write_bytes(ours_image)
    dump = _imgtool("dumpinfo", str(tmp_path / "ours.enc.bin"))
    assert dump.returncode == 0, dump.stderr
    assert ("ENCX25519" if scheme == "ecies-x25519" else "ENCEC256") in dump.stdout
    install_encoded(bms, ours.header, ours.stored)
    bank = bms._inactive_bank()
    plain = bytes(bms.flash.view(f"bank_{bank.lower()}")[: len(ours_image)])
    (tmp_path / "ours.plain.bin").write_bytes(plain)
    verify = _imgtool("verify", "-k", str(sign_key), str(tmp_path / "ours.plain.bin"))
    assert verify.returncode == 0 and "correctly validated" in verify.stdout, verify.stdout
    _finish_update(bms, "1.4.0")
    bms.close()
