"""Images signed by the real imgtool, in both public-key formats, through `bmsfw package`.

imgtool writes the image key as a hash (KEYHASH TLV, its default) or in full
(PUBKEY TLV, ``--public-key-format full``). Either way `package verify --pki`
checks the signature against the vendor's image-signing key in the PKI
directory, and no command says "OK" for an image whose signature nobody checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bmsfw.cli import main
from package.conftest import run_cli as run

IMGTOOL = Path(sys.executable).with_name("imgtool")


def imgtool_sign(key: Path, src: Path, dst: Path, *extra: str) -> None:
    result = subprocess.run(
        [str(IMGTOOL), "sign", "-k", str(key), "--header-size", "0x200", "--pad-header",
         "--align", "8", "--slot-size", "0x40000", *extra, str(src), str(dst)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module", params=["ed25519", "ecdsa-p256"])
def vendor(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(f"pki-{request.param}")
    code = main_exit(["keys", "init", str(root / "pki"), "--algorithm", request.param])
    assert code == 0
    return root / "pki"


def main_exit(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _package(
    capsys: pytest.CaptureFixture[str], pki: Path, tmp_path: Path, key_format: str
) -> Path:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(bytes(range(251)) * 12)
    signed = tmp_path / f"signed-{key_format}.bin"
    imgtool_sign(pki / "image-signing.key", fw, signed, "--version", "1.1.1+3900000001",
                 "--security-counter", "4", "--public-key-format", key_format)  # fmt: skip
    package = tmp_path / f"r-{key_format}.bmsfw"
    code, _, err = run(
        capsys, "package", "build", "--product", "demo", "--version", "1.1.1-rc1",
        "--security-counter", "4", "--hw-model", "BMS-48V", "--hw-revision", "B",
        "--app", str(signed), "-o", str(package),
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, "package", "sign", str(package), "--pki", str(pki))
    assert code == 0, err
    return package


@pytest.mark.req("SEED-SIGNATURE", "SEED-SECURE-BOOT")
@pytest.mark.parametrize("key_format", ["hash", "full"])
def test_verify_with_the_pki_image_key(
    vendor: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key_format: str
) -> None:
    package = _package(capsys, vendor, tmp_path, key_format)
    code, out, err = run(capsys, "package", "verify", str(package), "--pki", str(vendor), "--json")
    assert code == 0, err
    app = json.loads(out)["images"]["app"]
    assert app["algorithm"] in {"ed25519", "ecdsa-p256"}
    assert app["key_trusted"] is True
    assert app["version"] == "1.1.1+3900000001"
    code, out, err = run(capsys, "package", "verify", str(package), "--pki", str(vendor))
    assert code == 0 and "OK" in out and "vendor's image key" not in " ".join(out.split())

    # Only the root certificate: the manifest is checked, the image key is not pinned.
    root_only = ["package", "verify", str(package), "--root-cert", str(vendor / "root-ca.crt")]
    code, out, err = run(capsys, *root_only)
    if key_format == "hash":  # nobody can check the signature: refused, never "OK"
        assert code == 3 and "BMSFW-E131" in err and "OK" not in out
        # ...and the remedy works
        code, out, err = run(capsys, *root_only, "--image-key", str(vendor / "image-signing.pub"))
        assert code == 0 and "OK" in out, err
    else:
        assert code == 0 and "OK" in out and "vendor's image key" in " ".join(out.split())


@pytest.mark.req("SEED-SECURE-BOOT")
@pytest.mark.parametrize("key_format", ["hash", "full"])
def test_another_vendors_image_key_is_refused(
    vendor: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key_format: str
) -> None:
    other = tmp_path / "other-pki"
    assert main_exit(["keys", "init", str(other)]) == 0
    package = _package(capsys, vendor, tmp_path, key_format)
    code, _, err = run(
        capsys, "package", "verify", str(package), "--root-cert", str(vendor / "root-ca.crt"),
        "--image-key", str(other / "image-signing.pub"),
    )  # fmt: skip
    assert code == 3 and "BMSFW-E124" in err


@pytest.mark.parametrize(
    ("counter_args", "code"), [((), "BMSFW-E132"), (("--security-counter", "6"), "BMSFW-E133")]
)
def test_build_refuses_an_image_the_bms_would_refuse(
    vendor: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    counter_args: tuple[str, ...],
    code: str,
) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(bytes(range(251)) * 12)
    signed = tmp_path / "signed.bin"
    imgtool_sign(vendor / "image-signing.key", fw, signed, "--version", "1.2.0", *counter_args)
    package = tmp_path / "r.bmsfw"
    exit_code, _, err = run(
        capsys, "package", "build", "--product", "demo", "--version", "1.2.0",
        "--security-counter", "7", "--hw-model", "BMS-48V", "--hw-revision", "B",
        "--app", str(signed), "-o", str(package),
    )  # fmt: skip
    assert (
        exit_code == 3
        and code in err
        and "imgtool sign --security-counter" in " ".join(err.split())
    )
    assert not package.exists()


def test_build_with_the_pki_refuses_an_image_signed_by_another_key(
    vendor: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other-pki"
    assert main_exit(["keys", "init", str(other)]) == 0
    fw = tmp_path / "fw.bin"
    fw.write_bytes(bytes(range(251)) * 12)
    signed = tmp_path / "signed.bin"
    imgtool_sign(other / "image-signing.key", fw, signed, "--version", "1.2.0",
                 "--security-counter", "7")  # fmt: skip
    package = tmp_path / "r.bmsfw"
    code, _, err = run(
        capsys, "package", "build", "--product", "demo", "--version", "1.2.0",
        "--security-counter", "7", "--hw-model", "BMS-48V", "--hw-revision", "B",
        "--image", f"app={signed}", "--pki", str(vendor), "-o", str(package),
    )  # fmt: skip
    assert code == 3 and "BMSFW-E124" in err and not package.exists()


def test_imgtool_hex_output_is_kept_as_the_signed_image(
    vendor: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bmsfw.package import parse_image
    from bmsfw.package._firmware import load_firmware
    from bmsfw.package._release import component_image

    fw = tmp_path / "fw.bin"
    fw.write_bytes(bytes(range(251)) * 12)
    signed_hex = tmp_path / "signed.hex"  # imgtool writes Intel HEX for a .hex output
    imgtool_sign(vendor / "image-signing.key", fw, signed_hex, "--version", "1.2.0",
                 "--security-counter", "7", "--hex-addr", "0x08020000")  # fmt: skip
    loaded = load_firmware(signed_hex.read_bytes())
    assert (loaded.format, loaded.container, loaded.load_address) == ("mcuboot", "ihex", 0x08020000)
    package = tmp_path / "r.bmsfw"
    code, out, err = run(
        capsys, "package", "build", "--product", "demo", "--version", "1.2.0",
        "--security-counter", "7", "--hw-model", "BMS-48V", "--hw-revision", "B",
        "--app", str(signed_hex), "--pki", str(vendor), "-o", str(package), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["inputs"]["app"]["format"] == "mcuboot"
    image = component_image(package.read_bytes())
    assert image == loaded.data and parse_image(image).security_counter == 7
