"""Bluetooth LE pairing: the BMS takes SMP only on an authenticated LE Secure Connections link.

Two processes, real bumble host stacks on virtual controllers: the virtual BMS pairs
as a display with its fixed passkey; bmsfw pairs as a keyboard with the passkey it is
given. A wrong or missing passkey is E313 and an open (unpaired, Just Works) BMS is
E314; in each case nothing was sent, which the BMS's own state shows afterwards
(read over its UDP link).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmsfw.protocol.smp import open_smp_session, parse_smp_link
from bmsfw.protocol.smp.errors import BleLinkInsecureError, BlePairingFailedError
from bmsfw.protocol.smp.link import PasskeyProvider
from bmsfw.sim.smp_server import SimSmpProcess
from cli_support import run_bmsfw

from .conftest import start_device


def stored_state(device_dir: Path) -> dict[str, str]:
    """Digest of every file of the BMS's flash, OTP and configuration (not its logs)."""
    return {
        str(p.relative_to(device_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(device_dir.rglob("*"))
        if p.is_file() and p.suffix not in {".log", ".jsonl"}
    }


def ble(process: SimSmpProcess, passkey: PasskeyProvider | None) -> str:
    return f"ble:{process.info['ble_name']}@{process.info['ble_hci']}"


@pytest.fixture
def paired_bms(device_dir: Path) -> Iterator[SimSmpProcess]:
    process = start_device(device_dir, ble=True, udp=True, require_auth=True)
    yield process
    process.stop()


def test_right_passkey_pairs_and_the_link_is_authenticated(paired_bms: SimSmpProcess) -> None:
    passkey = int(paired_bms.info["ble_passkey"])
    asked: list[int] = []

    def provider() -> int:
        asked.append(passkey)
        return passkey

    link = parse_smp_link(ble(paired_bms, provider), passkey=provider)
    with open_smp_session(link) as session:
        facts = session.ble_facts()
        assert facts is not None
        assert (facts.encrypted, facts.secure_connections, facts.mitm) == (True, True, True)
        assert session.identify().app_version == "1.0.0"
    assert asked == [passkey]  # asked once, when the BMS paired


@pytest.mark.parametrize("given", ["wrong", "none"])
def test_wrong_or_missing_passkey_is_e313_and_nothing_changes(
    given: str, paired_bms: SimSmpProcess, device_dir: Path
) -> None:
    before = stored_state(device_dir)
    right = int(paired_bms.info["ble_passkey"])
    wrong = (right + 1) % 1_000_000
    provider = (lambda: wrong) if given == "wrong" else None
    with pytest.raises(BlePairingFailedError) as failed:
        open_smp_session(parse_smp_link(ble(paired_bms, provider), passkey=provider))
    assert failed.value.code == "BMSFW-E313" and not failed.value.retry_helps
    # the BMS still answers on its other link, holds no upload, and nothing stored changed
    with open_smp_session(f"udp:{paired_bms.info['udp']}") as session:
        assert session.transfer_state().contiguous_bytes == 0
        assert session.read_boot_status().running_version == "1.0.0"
    assert stored_state(device_dir) == before


def test_open_bms_without_pairing_is_refused_e314(device_dir: Path) -> None:
    """A BMS that asks for no pairing (Just Works, no passkey) is not used: E314."""
    process = start_device(device_dir, ble=True, udp=True, require_auth=True, ble_open=True)
    try:
        assert "ble_passkey" not in process.info
        before = stored_state(device_dir)
        with pytest.raises(BleLinkInsecureError) as refused:
            open_smp_session(parse_smp_link(ble(process, None), passkey=lambda: 123456))
        assert refused.value.code == "BMSFW-E314"
        assert "not authenticated" in str(refused.value)
        with open_smp_session(f"udp:{process.info['udp']}") as session:
            assert session.transfer_state().contiguous_bytes == 0
        assert stored_state(device_dir) == before
    finally:
        process.stop()


def test_cli_passkey_from_environment_or_file_never_an_argument(
    paired_bms: SimSmpProcess, device_dir: Path, tmp_path: Path
) -> None:
    link = ["--smp", ble(paired_bms, None)]
    env = {"BMSFW_BLE_PASSKEY": paired_bms.info["ble_passkey"]}
    ok = run_bmsfw("info", *link, "--json", check=0, env_extra=env)
    assert '"app_version": "1.0.0"' in ok.stdout

    before = stored_state(device_dir)
    wrong = tmp_path / "passkey"
    wrong.write_text(f"{(int(paired_bms.info['ble_passkey']) + 7) % 1_000_000:06d}\n")
    refused = run_bmsfw("info", *link, "--ble-passkey-file", str(wrong))
    assert refused.returncode != 0
    assert "BMSFW-E313" in refused.stderr and "Traceback" not in refused.stderr
    malformed = run_bmsfw("info", *link, env_extra={"BMSFW_BLE_PASSKEY": "12ab"})
    assert malformed.returncode != 0 and "BMSFW-E397" in malformed.stderr
    assert stored_state(device_dir) == before
