"""A release whose image is signed by a key the BMS did not fuse is refused before the
transfer, over CAN and RS485.

The vendor rotated its image-signing key: the release below is built and signed with the
vendor's own PKI (its chain is good), but its image is signed by the new key while the
BMS's secure boot holds the old one. The BMS reports its fused key hash (UDS DID 0x0103,
Modbus image_key_* registers), so `bmsfw update` refuses with E134 before a byte is sent:
flash (banks, OTP, journals) and board state stay as they were, and no backup is taken.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.cli_support import CONFIRM, SimProcess, run_bmsfw

from .conftest import DATA, Vendor, build, imgtool_sign

FOREIGN = "BMSFW-E134"


@pytest.fixture(scope="module")
def rotated(vendor: Vendor, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The vendor's PKI with a new image-signing key, and releases whose image it signs:
    wrapped by `package build` (KEYHASH and PUBKEY TLVs) and by `imgtool sign` with its
    default key format (KEYHASH only)."""
    root = tmp_path_factory.mktemp("rotated")
    pki, fresh = root / "pki", root / "fresh"
    shutil.copytree(vendor.pki, pki)
    run_bmsfw("keys", "init", str(fresh), check=0)
    for name in ("image-signing.key", "image-signing.pub"):
        shutil.copyfile(fresh / name, pki / name)
    signed = root / "imgtool-keyhash.bin"
    imgtool_sign(pki / "image-signing.key", DATA / "app.bin", signed, "--version", "1.6.0+0",
                 "--security-counter", "2")  # fmt: skip
    return {
        "bmsfw-wrapped": build(root, pki, "rotated", "1.6.0", 2, "--app", str(DATA / "app.bin")),
        "imgtool-keyhash": build(
            root, pki, "rotated-imgtool", "1.6.0", 2, "--image", f"app={signed}"
        ),
    }


def _update(
    vendor: Vendor, link: tuple[str, ...], package: Path, backups: Path
) -> tuple[int, dict[str, Any]]:
    result = run_bmsfw(
        "update", *link, str(package), "--trust", str(vendor.pki / "root-ca.crt"),
        "--backup-dir", str(backups), "--tester-cert", str(vendor.tester_chain),
        "--tester-key", str(vendor.tester_key), "--operator", "foreign-key", *CONFIRM,
        "--profile", str(vendor.profile), "--json", timeout_s=180,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


@pytest.mark.req("SEED-SECURE-BOOT", "SEED-TROUBLESHOOTING")
@pytest.mark.parametrize("form", ["bmsfw-wrapped", "imgtool-keyhash"])
def test_foreign_image_key_refused_before_any_byte(
    vendor: Vendor,
    rotated: dict[str, Path],
    fresh_bms: tuple[SimProcess, tuple[str, ...]],
    tmp_path: Path,
    form: str,
) -> None:
    sim, link = fresh_bms
    stored_before = sim.stored()
    backups = tmp_path / "backups"
    code, report = _update(vendor, link, rotated[form], backups)
    assert code == 3, report
    assert report["error"]["code"] == FOREIGN, report["error"]
    assert report["failed_step"] == "verify-package"
    assert report["decisions"]["start"] == "refuse-image-key"
    fused = report["device_before"]["image_key_hashes"]
    assert len(fused) == 1 and fused[0][:16] in report["error"]["message"]
    assert sim.stored() == stored_before  # not one image byte: banks, OTP, journals, board
    assert not list(backups.glob("**/*backup*")), "no backup is taken for a refused release"


def test_the_remedy_installs(
    vendor: Vendor, fresh_bms: tuple[SimProcess, tuple[str, ...]], tmp_path: Path
) -> None:
    """E134's remedy: the release signed by the key the BMS holds goes in, same BMS."""
    _, link = fresh_bms
    code, report = _update(vendor, link, vendor.packages["bin"], tmp_path / "backups")
    assert code == 0, report.get("error")
    assert report["decisions"]["image-key"].startswith("signed by key")
    assert report["device_now"]["image_state"] == "confirmed"


@pytest.mark.req("SEED-SECURE-BOOT")
def test_package_verify_with_the_devices_key(vendor: Vendor, rotated: dict[str, Path]) -> None:
    """`package verify` with device facts: the key hash `bmsfw info` shows decides too."""
    fused = run_bmsfw("keys", "hash", str(vendor.pki / "image-signing.pub"), check=0).stdout.strip()
    facts = ("--model", "BMS-16S", "--hw-revision", "C", "--bootloader", "1.0.0",
             "--device-counter", "1", "--root-cert", str(vendor.pki / "root-ca.crt"),
             "--device-image-key-hash", fused, "--json")  # fmt: skip
    for package in rotated.values():
        refused = run_bmsfw("package", "verify", str(package), *facts)
        assert refused.returncode == 3, refused.stdout
        assert json.loads(refused.stdout)["error"]["code"] == FOREIGN
    ok = json.loads(
        run_bmsfw("package", "verify", str(vendor.packages["bin"]), *facts, check=0).stdout
    )
    assert ok["device_image_key"].startswith("signed by a key the BMS holds")
