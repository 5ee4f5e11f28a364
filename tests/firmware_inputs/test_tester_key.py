"""The tester key can be kept encrypted (PKCS#8 with a passphrase), and a wrong or
missing passphrase stops `bmsfw update` before anything is read or written.

The passphrase never goes on the command line (every user sees it in `ps`): it comes
from a file (`--key-passphrase-file` / `--tester-key-passphrase-file`), the environment
variable BMSFW_TESTER_KEY_PASSPHRASE, or a prompt on a terminal.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tests.cli_support import CONFIRM, SimProcess, run_bmsfw

from .conftest import Vendor

ENV = "BMSFW_TESTER_KEY_PASSPHRASE"
PASSPHRASE = "correct horse battery staple"


def _issue(vendor: Vendor, root: Path, *extra: str) -> tuple[Path, Path, dict[str, Any]]:
    chain, key = root / "tester-chain.pem", root / "tester.key"
    result = run_bmsfw("keys", "issue-tester", "--pki", str(vendor.pki), "--cert-out", str(chain),
                       "--key-out", str(key), *extra, "--json")  # fmt: skip
    return chain, key, json.loads(result.stdout)


@pytest.fixture(scope="module")
def locked(vendor: Vendor, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tester certificate whose key is encrypted with PASSPHRASE (from a file)."""
    root = tmp_path_factory.mktemp("locked-tester")
    secret = root / "passphrase.txt"
    secret.write_text(PASSPHRASE + "\n")
    chain, key, out = _issue(vendor, root, "--key-passphrase-file", str(secret))
    assert out["private_key_encrypted"] is True, out
    return chain, key


@pytest.mark.req("IEC62443-CR1.5")
def test_issued_key_is_encrypted_pkcs8(locked: tuple[Path, Path]) -> None:
    _, key = locked
    pem = key.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(TypeError):  # encrypted: no use without the passphrase
        serialization.load_pem_private_key(pem, None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(pem, b"wrong")
    serialization.load_pem_private_key(pem, PASSPHRASE.encode())


def test_issue_tester_takes_the_passphrase_from_the_environment(
    vendor: Vendor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)
    _, key, out = _issue(vendor, tmp_path, "--encrypt-key")
    assert out["private_key_encrypted"] is True
    serialization.load_pem_private_key(key.read_bytes(), PASSPHRASE.encode())
    # without the flag or a passphrase file the key is written as before, unencrypted
    monkeypatch.delenv(ENV)
    plain = tmp_path / "plain"
    plain.mkdir()
    _, key, out = _issue(vendor, plain)
    assert out["private_key_encrypted"] is False
    serialization.load_pem_private_key(key.read_bytes(), None)


@pytest.mark.skipif(os.isatty(0), reason="would prompt on this terminal")
def test_encrypt_key_without_a_passphrase_writes_nothing(
    vendor: Vendor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    chain, key, out = _issue(vendor, tmp_path, "--encrypt-key")
    assert out["error"]["code"] == "BMSFW-E001", out
    assert not chain.exists() and not key.exists()


def _update(
    vendor: Vendor, link: tuple[str, ...], locked: tuple[Path, Path], backups: Path, *extra: str
) -> tuple[int, dict[str, Any]]:
    chain, key = locked
    result = run_bmsfw(
        "update", *link, str(vendor.packages["bin"]), "--trust", str(vendor.pki / "root-ca.crt"),
        "--backup-dir", str(backups), "--tester-cert", str(chain), "--tester-key", str(key),
        *extra, "--operator", "tester-key", *CONFIRM, "--profile", str(vendor.profile), "--json",
        timeout_s=180,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


@pytest.mark.req("IEC62443-CR1.5", "SEED-TESTER-AUTH")
def test_update_with_an_encrypted_tester_key(
    vendor: Vendor,
    locked: tuple[Path, Path],
    fresh_bms: tuple[SimProcess, tuple[str, ...]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, link = fresh_bms
    monkeypatch.delenv(ENV, raising=False)
    backups = tmp_path / "backups"
    before = sim.stored()
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("correct horse battery\n")
    code, out = _update(vendor, link, locked, backups, "--tester-key-passphrase-file", str(wrong))
    assert out["error"]["code"] == "BMSFW-E136", out
    assert code != 0
    if not os.isatty(0):  # no passphrase anywhere and no terminal to ask on
        code, out = _update(vendor, link, locked, backups)
        assert out["error"]["code"] == "BMSFW-E135", out
    assert sim.stored() == before  # flash, OTP, journals, board: untouched
    assert not backups.exists()  # not even the backup directory was created

    # the right passphrase, from the environment: the key signs the BMS's challenge
    monkeypatch.setenv(ENV, PASSPHRASE)
    code, report = _update(vendor, link, locked, backups)
    assert code == 0, report.get("error")
    assert report["device_now"]["image_state"] == "confirmed"


@pytest.mark.req("IEC62443-CR1.5")
def test_agent_with_a_wrong_passphrase_sets_up_nothing(
    vendor: Vendor, locked: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway agent unlocks the key before its state directory or any BMS is touched."""
    monkeypatch.delenv(ENV, raising=False)
    chain, key = locked
    token, wrong, state = tmp_path / "token", tmp_path / "wrong.txt", tmp_path / "agent-state"
    token.write_text("not-used\n")
    wrong.write_text("not the passphrase\n")
    result = run_bmsfw(
        "agent", "--server", "https://127.0.0.1:9", "--token-file", str(token),
        "--trust-root", str(vendor.pki / "root-ca.crt"), "--state-dir", str(state),
        "--sim", "1", "--sim-initial", str(vendor.packages["factory"]),
        "--tester-cert", str(chain), "--tester-key", str(key),
        "--tester-key-passphrase-file", str(wrong), "--once", "--json",
    )  # fmt: skip
    assert json.loads(result.stdout)["error"]["code"] == "BMSFW-E136", result.stdout
    assert not state.exists()
