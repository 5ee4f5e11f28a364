"""The technician's `bmsfw` command line over `--smp` (a subprocess, as a user runs it)."""

from __future__ import annotations

import json
from pathlib import Path

from bmsfw.sim.lab import write_tester_files
from cli_support import CONFIRM, run_bmsfw

from .conftest import SmpBench, start_device


def test_bmsfw_update_over_smp_udp(device_dir: Path, smp_bench: SmpBench, tmp_path: Path) -> None:
    files = write_tester_files(smp_bench.pki, tmp_path / "kit")
    package = tmp_path / "kit" / "2.0.0.bmsfw"
    package.write_bytes(smp_bench.releases["2.0.0"].package)
    process = start_device(device_dir, udp=True, require_auth=True)
    try:
        link = ["--smp", f"udp:{process.info['udp']}"]
        info = run_bmsfw("info", *link, "--json", check=0)
        assert json.loads(info.stdout)[0]["identity"]["app_version"] == "1.0.0"
        result = run_bmsfw(
            "update", *link, str(package),
            "--trust", str(files.trust),
            "--backup-dir", str(tmp_path / "backups"),
            "--tester-cert", str(files.tester_cert),
            "--tester-key", str(files.tester_key),
            *CONFIRM, "--json",
            check=0,
        )  # fmt: skip
        report = json.loads(result.stdout)  # one BMS: one report object
        assert report["outcome"] == "updated" and report["running_version"] == "2.0.0"
        assert report["node"].startswith("smp:udp:")
    finally:
        process.stop()


def test_malformed_smp_link_is_a_usage_error() -> None:
    result = run_bmsfw("info", "--smp", "bluetooth:BMS-1")
    assert result.returncode != 0
    assert "BMSFW-E396" in result.stderr and "Traceback" not in result.stderr
    both = run_bmsfw("info", "--smp", "udp:127.0.0.1", "--serial", "/dev/ttyUSB0", "--unit", "1")
    assert both.returncode != 0 and "--smp names one BMS by itself" in both.stderr


def test_bmsfw_update_over_ble_pairs_and_applies_the_ota_rule(
    device_dir: Path, smp_bench: SmpBench, tmp_path: Path
) -> None:
    """The technician's command over Bluetooth: pairing with the passkey from the
    environment, the product profile declaring Bluetooth its service link, and the
    report saying what the link was and why the OTA floor did not stop it."""
    files = write_tester_files(smp_bench.pki, tmp_path / "kit")
    package = tmp_path / "kit" / "2.0.0.bmsfw"
    package.write_bytes(smp_bench.releases["2.0.0"].package)
    profile = tmp_path / "ebike.toml"
    profile.write_text(
        '[product]\nname = "e-bike pack"\n'
        "[preflight]\nsupply_window_s = 0.2\nsupply_samples = 3\nble_service_link = true\n"
    )
    process = start_device(device_dir, ble=True, require_auth=True)
    try:
        result = run_bmsfw(
            "update", "--smp", f"ble:{process.info['ble_name']}@{process.info['ble_hci']}",
            str(package), "--profile", str(profile),
            "--trust", str(files.trust),
            "--backup-dir", str(tmp_path / "backups"),
            "--tester-cert", str(files.tester_cert),
            "--tester-key", str(files.tester_key),
            *CONFIRM, "--json",
            env_extra={"BMSFW_BLE_PASSKEY": process.info["ble_passkey"]},
            check=0,
        )  # fmt: skip
        report = json.loads(result.stdout)
        assert report["outcome"] == "updated" and report["running_version"] == "2.0.0"
        assert report["decisions"]["channel"] == "ota"
        checks = {c["name"]: c for c in report["preflight"]}
        assert checks["ble-link"]["passed"] and "ATT MTU 247" in checks["ble-link"]["measured"]
        assert checks["ota-bandwidth"]["passed"]
        assert "service link" in checks["ota-bandwidth"]["detail"]
        assert "LE Secure Connections, passkey" in checks["link-quality"]["measured"]
    finally:
        process.stop()
