"""imgtool 2.5 interoperability, both ways, with the real imgtool CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bmsfw.package import (
    HardwareCompat,
    VendorPki,
    build_image,
    key_hash,
    parse_image,
    private_key_pem,
    verify_image,
)

IMGTOOL = Path(sys.executable).with_name("imgtool")
pytestmark = pytest.mark.skipif(not IMGTOOL.exists(), reason="imgtool (dev extra) not installed")


def _imgtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMGTOOL), *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_imgtool_signed_image_verifies_with_bmsfw(pki: VendorPki, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_key_pem(pki.image_signing_key))
    (tmp_path / "fw.bin").write_bytes(bytes(range(256)) * 20)
    result = _imgtool(
        "sign", "-k", str(key_file), "--header-size", "0x200", "--pad-header", "--align", "8",
        "--version", "2.0.1+9", "--slot-size", "0x40000", "--security-counter", "12",
        str(tmp_path / "fw.bin"), str(tmp_path / "signed.bin"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "signed.bin").read_bytes()
    image = parse_image(data)
    assert str(image.version) == "2.0.1+9" and image.security_counter == 12
    info = verify_image(
        data,
        key_hashes=[key_hash(pki.image_signing_key)],
        public_keys=[pki.image_signing_key.public_key()],
    )
    assert info.payload_size == 5120
    assert info.key_hash == key_hash(pki.image_signing_key)  # same KEYHASH definition


def test_bmsfw_image_passes_imgtool_verify_and_dumpinfo(pki: VendorPki, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_key_pem(pki.image_signing_key))
    data = build_image(
        b"\xa5" * 4096,
        signing_key=pki.image_signing_key,
        version="3.1.4+15",
        security_counter=21,
        hardware=HardwareCompat("BMS-48V", ("B",)),
    )
    (tmp_path / "img.bin").write_bytes(data)
    verify = _imgtool("verify", "-k", str(key_file), str(tmp_path / "img.bin"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "Image was correctly validated" in verify.stdout
    assert "3.1.4+15" in verify.stdout
    dump = _imgtool("dumpinfo", str(tmp_path / "img.bin"))
    assert dump.returncode == 0, dump.stderr
    for name in ("SEC_CNT", "SHA256", "KEYHASH", "PUBKEY"):
        assert name in dump.stdout
    assert ("ED25519" if pki.algorithm == "ed25519" else "ECDSASIG") in dump.stdout


def test_imgtool_rejects_tampered_bmsfw_image(ed_pki: VendorPki, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_key_pem(ed_pki.image_signing_key))
    data = bytearray(
        build_image(b"\x00" * 512, signing_key=ed_pki.image_signing_key, version="1.0.0",
                    security_counter=1)
    )  # fmt: skip
    data[0x200 + 3] ^= 0xFF
    (tmp_path / "img.bin").write_bytes(bytes(data))
    verify = _imgtool("verify", "-k", str(key_file), str(tmp_path / "img.bin"))
    assert verify.returncode != 0
