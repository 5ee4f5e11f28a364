"""`bmsfw keys` and `bmsfw package` end to end through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from package.conftest import run_cli as run


def test_keys_and_package_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = tmp_path / "pki"
    pw = tmp_path / "pw.txt"
    pw.write_text("s3cret\n")
    code, out, _ = run(
        capsys,
        "keys",
        "init",
        str(pki),
        "--algorithm",
        "ecdsa-p256",
        "--passphrase-file",
        str(pw),
        "--json",
    )
    assert code == 0
    info = json.loads(out)
    code, out, _ = run(capsys, "keys", "hash", str(pki / "root-ca.crt"))
    assert code == 0 and out.strip() == info["root_key_hash"]
    code, out, _ = run(
        capsys, "keys", "hash", str(pki / "image-signing.key"), "--passphrase-file", str(pw)
    )
    assert out.strip() == info["image_key_hash"]

    fw = tmp_path / "app.bin"
    fw.write_bytes(bytes(range(256)) * 8)
    pkg = tmp_path / "r.bmsfw"
    code, out, err = run(
        capsys,
        "package",
        "build",
        "--product",
        "demo",
        "--version",
        "2.0.0",
        "--security-counter",
        "3",
        "--hw-model",
        "BMS-48V",
        "--hw-revision",
        "B",
        "--min-bootloader",
        "1.0.0",
        "--app",
        str(fw),
        "--pki",
        str(pki),
        "--passphrase-file",
        str(pw),
        "-o",
        str(pkg),
    )
    assert code == 0, err
    code, _, err = run(capsys, "package", "verify", str(pkg), "--pki", str(pki))
    assert code == 3 and "BMSFW-E114" in err  # unsigned
    code, _, err = run(
        capsys, "package", "sign", str(pkg), "--pki", str(pki), "--passphrase-file", str(pw)
    )
    assert code == 0, err
    code, out, err = run(
        capsys,
        "package",
        "verify",
        str(pkg),
        "--root-hash",
        info["root_key_hash"],
        "--image-key-hash",
        info["image_key_hash"],
        "--model",
        "BMS-48V",
        "--hw-revision",
        "B",
        "--bootloader",
        "1.0.0",
        "--device-counter",
        "3",
        "--json",
    )
    assert code == 0, err
    verified = json.loads(out)
    assert verified["ok"] and verified["manifest"]["version"] == "2.0.0"
    assert verified["images"]["app"]["security_counter"] == 3

    code, out, _ = run(capsys, "package", "inspect", str(pkg), "--json")
    assert code == 0 and json.loads(out)["signed"] is True
    code, out, _ = run(capsys, "package", "inspect", str(pkg))
    assert code == 0 and "signer chain" in out

    code, _, err = run(
        capsys,
        "package",
        "verify",
        str(pkg),
        "--pki",
        str(pki),
        "--model",
        "BMS-48V",
        "--hw-revision",
        "B",
        "--bootloader",
        "1.0.0",
        "--device-counter",
        "4",
    )
    assert code == 3 and "BMSFW-E112" in err and "remedy" in err

    signer_cert = pki / "signers" / "release-signer.crt"
    code, _, err = run(
        capsys, "keys", "revoke", str(pki), str(signer_cert), "--passphrase-file", str(pw)
    )
    assert code == 0, err
    code, _, err = run(capsys, "package", "verify", str(pkg), "--pki", str(pki))
    assert code == 3 and "BMSFW-E109" in err

    code, _, err = run(
        capsys, "keys", "issue-signer", str(pki), "signer-2", "--passphrase-file", str(pw)
    )
    assert code == 0, err
    code, _, err = run(
        capsys,
        "package",
        "sign",
        str(pkg),
        "--pki",
        str(pki),
        "--signer",
        "signer-2",
        "--passphrase-file",
        str(pw),
    )
    assert code == 0, err
    code, _, err = run(capsys, "package", "verify", str(pkg), "--pki", str(pki))
    assert code == 0, err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "hash", str(tmp_path / "missing.pem"))
    assert code == 2
    junk = tmp_path / "junk.bmsfw"
    junk.write_bytes(b"nope")
    code, _, err = run(capsys, "package", "verify", str(junk))
    assert code == 2 and "trust anchor" in err
    code, _, err = run(capsys, "package", "verify", str(junk), "--root-hash", "00" * 32)
    assert code == 3 and "BMSFW-E101" in err


@pytest.mark.parametrize(("version", "code"), [("1.0.0-dev", "BMSFW-E118"), ("1.0", "BMSFW-E117")])
def test_build_refuses_a_version_the_header_cannot_carry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str, code: str
) -> None:
    pki = tmp_path / "pki"
    assert run(capsys, "keys", "init", str(pki))[0] == 0
    fw = tmp_path / "app.bin"
    fw.write_bytes(bytes(range(256)) * 4)
    out_path = tmp_path / "r.bmsfw"
    build = ["package", "build", "--product", "demo", "--version", version]
    build += ["--security-counter", "1", "--hw-model", "BMS-48V", "--hw-revision", "B"]
    build += ["--app", str(fw), "--pki", str(pki), "-o", str(out_path), "--json"]
    exit_code, out, _ = run(capsys, *build)
    assert exit_code == 3
    assert json.loads(out)["error"]["code"] == code
    assert not out_path.exists()


FIXTURES = Path(__file__).resolve().parents[1] / "firmware_inputs" / "data"


def test_build_reads_firmware_formats_and_refuses_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bmsfw.package import parse_image
    from bmsfw.package._release import component_image

    pki = tmp_path / "pki"
    assert run(capsys, "keys", "init", str(pki))[0] == 0
    base = ["package", "build", "--product", "demo", "--version", "1.5.0"]
    base += ["--security-counter", "1", "--hw-model", "BMS-48V", "--hw-revision", "B"]
    base += ["--pki", str(pki), "--encoding", "raw"]
    flat = (FIXTURES / "app.bin").read_bytes()
    for name in ("app.elf", "app.hex", "app.srec", "app.bin"):
        out_path = tmp_path / f"{name}.bmsfw"
        code, out, err = run(
            capsys, *base, "--app", str(FIXTURES / name), "-o", str(out_path), "--json"
        )
        assert code == 0, err
        inputs = json.loads(out)["inputs"]["app"]
        assert inputs["size"] == len(flat)
        image = component_image(out_path.read_bytes())
        header = parse_image(image)
        body = image[header.header_size : header.header_size + header.payload_size]
        assert body == flat  # the same bytes objcopy -O binary gives

    readme = tmp_path / "app.hex"
    readme.write_text("flash this with the vendor tool\n")
    out_path = tmp_path / "text.bmsfw"
    code, out, err = run(capsys, *base, "--app", str(readme), "-o", str(out_path))
    assert code == 3 and "BMSFW-E130" in err and not out_path.exists()
    code, out, err = run(
        capsys, *base, "--image", f"app={FIXTURES / 'app.hex'}", "-o", str(out_path)
    )
    assert code == 3 and "BMSFW-E121" in err and not out_path.exists()


def test_build_fill_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bmsfw.package import parse_image
    from bmsfw.package._release import component_image

    pki = tmp_path / "pki"
    assert run(capsys, "keys", "init", str(pki))[0] == 0
    base = ["package", "build", "--product", "demo", "--version", "1.5.0"]
    base += ["--security-counter", "1", "--hw-model", "BMS-48V", "--hw-revision", "B"]
    base += ["--pki", str(pki), "--app", str(FIXTURES / "app.hex")]
    out_path = tmp_path / "r.bmsfw"
    code, _, err = run(capsys, *base, "--fill", "0x00", "-o", str(out_path))
    assert code == 0, err
    image = component_image(out_path.read_bytes())
    start = parse_image(image).header_size + 2576  # the gap before .calib
    assert image[start : start + 1008] == bytes(1008)
    code, _, err = run(capsys, *base, "--fill", "0x100", "-o", str(tmp_path / "x.bmsfw"))
    assert code == 2 and "--fill" in err and not (tmp_path / "x.bmsfw").exists()


@pytest.mark.req("SEED-TESTER-AUTH")
def test_issue_tester_makes_credentials_the_bms_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from bmsfw.package import key_hash, load_certificate_file
    from bmsfw.protocol.uds._auth import (
        TesterCertificateRejected,
        chain_pem_to_der,
        sign_challenge,
        verify_proof,
        verify_tester_chain,
    )

    pki = tmp_path / "pki"
    pw = tmp_path / "pw.txt"
    pw.write_text("s3cret\n")
    assert run(capsys, "keys", "init", str(pki), "--passphrase-file", str(pw))[0] == 0
    chain, key = tmp_path / "tester.pem", tmp_path / "tester.key"
    args = ["keys", "issue-tester", "--pki", str(pki), "--cert-out", str(chain)]
    args += ["--key-out", str(key), "--validity-days", "30", "--name", "laptop-7"]
    code, out, err = run(capsys, *args, "--passphrase-file", str(pw), "--json")
    assert code == 0, err
    issued = json.loads(out)
    assert "laptop-7" in issued["subject"] and key.stat().st_mode & 0o077 == 0

    # What the BMS checks: the chain up to the fused root hash, then proof of possession.
    root_hash = key_hash(load_certificate_file(pki / "root-ca.crt").public_key())
    now = dt.datetime.now(dt.UTC)
    identity = verify_tester_chain(
        chain_pem_to_der(chain.read_bytes()), root_key_hash=root_hash, now=now
    )
    assert "laptop-7" in identity.subject
    assert verify_proof(identity.public_key, b"nonce", sign_challenge(key.read_bytes(), b"nonce"))
    leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    assert dt.timedelta(days=29) < leaf.not_valid_after_utc - now <= dt.timedelta(days=30)

    # A lost laptop: revoke its certificate from the chain file; the BMS then refuses it.
    code, _, err = run(capsys, "keys", "revoke", str(pki), str(chain), "--passphrase-file", str(pw))
    assert code == 0, err
    crl = x509.load_der_x509_crl((pki / "revocation.crl").read_bytes())
    with pytest.raises(TesterCertificateRejected, match="revoked"):
        verify_tester_chain(
            chain_pem_to_der(chain.read_bytes()), root_key_hash=root_hash, now=now,
            revocation_lists_der=[crl.public_bytes(serialization.Encoding.DER)],
        )  # fmt: skip

    # Nothing is overwritten; a validity beyond the CA's end is refused.
    code, _, err = run(capsys, *args, "--passphrase-file", str(pw))
    assert code == 2 and "exists" in err
    chain.unlink()
    key.unlink()
    code, _, err = run(capsys, *args, "--passphrase-file", str(tmp_path / "missing"))
    assert code == 2 and not chain.exists() and not key.exists()


def test_package_header_is_the_release_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import struct

    from bmsfw.package import decode_header, release_header

    pki = tmp_path / "pki"
    assert run(capsys, "keys", "init", str(pki))[0] == 0
    pkg = tmp_path / "r.bmsfw"
    build = ["package", "build", "--product", "demo", "--version", "1.5.0"]
    build += ["--security-counter", "1", "--hw-model", "BMS-48V", "--hw-revision", "B"]
    build += ["--pki", str(pki), "--app", str(FIXTURES / "app.bin"), "-o", str(pkg)]
    assert run(capsys, *build)[0] == 0
    out_path = tmp_path / "header.bin"
    code, _, err = run(capsys, "package", "header", str(pkg), "-o", str(out_path))
    assert code == 3 and "BMSFW-E114" in err and not out_path.exists()  # unsigned
    assert run(capsys, "package", "sign", str(pkg), "--pki", str(pki))[0] == 0
    code, out, err = run(capsys, "package", "header", str(pkg), "-o", str(out_path), "--json")
    assert code == 0, err
    data = out_path.read_bytes()
    assert data == release_header(pkg.read_bytes())
    assert json.loads(out)["size"] == len(data)
    # little-endian, as documented: magic, u16 format 1, u16 section count, u16 tag, u32 length
    magic, fmt, count, tag, length = struct.unpack_from("<8sHHHI", data)
    assert (magic, fmt, tag) == (b"BMSFWHDR", 1, 1) and count >= 3
    assert data[18 : 18 + length] == decode_header(data).manifest


def test_inspect_and_verify_name_the_release_a_header_version_denotes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    assert run(capsys, "keys", "init", str(pki))[0] == 0
    pkg = tmp_path / "rc.bmsfw"
    build = ["package", "build", "--product", "demo", "--version", "1.4.0-rc1"]
    build += ["--security-counter", "1", "--hw-model", "BMS-48V", "--hw-revision", "B"]
    build += ["--pki", str(pki), "--app", str(FIXTURES / "app.bin"), "-o", str(pkg)]
    assert run(capsys, *build)[0] == 0
    assert run(capsys, "package", "sign", str(pkg), "--pki", str(pki))[0] == 0
    code, out, err = run(capsys, "package", "verify", str(pkg), "--pki", str(pki), "--json")
    assert code == 0, err
    app = json.loads(out)["images"]["app"]
    assert (app["version"], app["release_version"]) == ("1.4.0+3900000001", "1.4.0-rc1")
    from bmsfw.cli._package import _image_version_text
    from bmsfw.package.version import ImageVersion

    assert _image_version_text(ImageVersion(1, 4, 0, 3900000001)) == "1.4.0+3900000001 (1.4.0-rc1)"
    assert _image_version_text(ImageVersion(1, 5, 0, 17)) == "1.5.0+17"
