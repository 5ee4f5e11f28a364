"""`bmsfw update` and friends, run as a user would, against virtual BMS processes on CAN."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from bmsfw.sim import VirtualBms

from .conftest import BMSFW, Bench, run_bmsfw


def test_successful_update_and_config_survives(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench()
    bench.start()
    result = run_bmsfw(*bench.update_args("v2"), "--json", check=0)
    report = json.loads(result.stdout)
    assert report["outcome"] == "updated"
    assert report["running_version"] == "2.0.0"
    assert report["device_now"]["image_state"] == "confirmed"
    assert report["transfer"]["offset"] == report["transfer"]["total"]
    info = json.loads(run_bmsfw("info", *bench.link_args(), "--json", check=0).stdout)
    assert info[0]["boot"]["running_version"] == "2.0.0"
    diff = run_bmsfw("diff", *bench.link_args(), report["backup"]["path"], "--check", check=0)
    assert "no changes" in diff.stdout
    audit = run_bmsfw("report", "--audit", str(bench.work / "backups" / "audit.jsonl"), check=0)
    assert "chain intact" in audit.stdout


def _set_supply_ripple(bms: VirtualBms) -> None:
    # 0.37 Hz on the device clock (x20 in the simulator): the 0.5 s samples see other phases.
    bms.faults.set_supply(ripple_v=4.0, ripple_hz=0.37)


PREFLIGHT_CASES: dict[int, tuple[Callable[[VirtualBms], None], str, str]] = {
    1: (lambda b: b.faults.set_soc(15.0), "BMSFW-E401", "state-of-charge"),
    2: (lambda b: b.faults.set_soc(85.0), "BMSFW-E401", "state-of-charge"),
    3: (lambda b: b.faults.set_temperatures(-5.0), "BMSFW-E402", "temperature"),
    4: (lambda b: b.faults.set_temperatures(50.0), "BMSFW-E402", "temperature"),
    5: (_set_supply_ripple, "BMSFW-E403", "supply-stability"),
    6: (lambda b: b.faults.set_protection_fault("overcurrent"), "BMSFW-E404", "active-faults"),
}


def test_each_preflight_failure_stops_before_any_byte(make_bench: Callable[..., Bench]) -> None:
    """SOC 15 % / 85 %, -5 °C / 50 °C, unstable supply, active fault: one pack each."""
    bench = make_bench(tuple(PREFLIGHT_CASES))
    for node, (inject, _, _) in PREFLIGHT_CASES.items():
        bench.prepare(node, inject)
    before = {node: bench.offline(node) for node in PREFLIGHT_CASES}
    ops = {node: (bms.flash_op_count, bms.bank_info("B")) for node, bms in before.items()}
    for bms in before.values():
        bms.close()
    bench.start()
    result = run_bmsfw(*bench.update_args("v2"), "--json", check=6)
    reports = {r["device_before"]["serial"]: r for r in json.loads(result.stdout)}
    bench.stop()
    for node, (_, code, check) in PREFLIGHT_CASES.items():
        report = reports[f"SIM000000{node}"]
        assert report["outcome"] == "refused", report
        assert report["failed_step"] == "preflight"
        assert report["error"]["code"] == code
        failed = {c["name"]: c for c in report["preflight"] if not c["passed"]}
        assert check in failed, failed
        assert failed[check]["measured"] and failed[check]["limit"]
        assert report["running_version"] == "1.0.0"
        assert not report["backup"] and not report["transfer"]
        bms = bench.offline(node)
        try:
            assert not bms.transfer_status().staged
            assert bms.bank_info("B") == ops[node][1]
            assert bms.boot_status().running_version == "1.0.0"
        finally:
            bms.close()


def test_preflight_command_reports_value_and_limit(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench()
    bench.prepare(1, lambda b: b.faults.set_soc(15.0))
    bench.start()
    result = run_bmsfw("preflight", *bench.link_args(), "--json", check=6)
    checks = {c["name"]: c for c in json.loads(result.stdout)[0]["checks"]}
    assert checks["state-of-charge"]["measured"].startswith("15.")
    assert checks["state-of-charge"]["limit"] == "20–80 %"
    assert not checks["state-of-charge"]["passed"] and checks["temperature"]["passed"]
    assert "BMSFW-E401" in result.stderr


@pytest.mark.req("SEED-APPROVED-OR-FALLBACK", "R156-SAFE-STATE", "R156-INFORM-AFTER")
def test_self_test_failure_and_never_confirm_end_on_old_firmware(
    make_bench: Callable[..., Bench],
) -> None:
    bench = make_bench((1, 2))
    bench.start()
    cases = ((1, "fail-selftest", "BMSFW-E511"), (2, "never-confirm", "BMSFW-E512"))
    for node, package, code in cases:
        result = run_bmsfw(*bench.update_args(package, node), check=4)
        assert code in result.stdout, result.stdout
        assert "ROLLED BACK" in result.stdout
        assert "device runs now: 1.0.0" in result.stdout
        assert "remedy:" in result.stdout
    info = json.loads(run_bmsfw("info", *bench.link_args(), "--json", check=0).stdout)
    for entry in info:
        assert entry["boot"]["running_version"] == "1.0.0"
        assert entry["boot"]["image_state"] != "test"
        assert entry["identity"]["security_counter"] == 1


@pytest.mark.req("SEED-PROGRESS-LOG", "SEED-INTERRUPTION")
def test_power_cut_during_transfer_then_update_again(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench()
    bench.start()
    args = [BMSFW, "-v", *bench.update_args("v2-big"), "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    cut_at = 0
    for line in proc.stderr:  # the real-time event log of -v
        if '"event": "TransferProgress"' in line:
            offset = json.loads(line.split("bmsfw.cli: ", 1)[1])["offset"]
            if offset >= 16 * 1024:
                bench.power_cut()
                cut_at = offset
                break
    out, _ = proc.communicate(timeout=90)
    assert cut_at, "the transfer never got going"
    assert proc.returncode == 7, out
    report = json.loads(out)
    assert report["outcome"] == "paused"
    assert report["error"]["code"] == "BMSFW-E501"
    assert report["failed_step"] == "transfer"

    bms = bench.offline(1)  # power back on: still the old firmware, part of the new staged
    try:
        assert bms.boot_status().running_version == "1.0.0"
        held = bms.transfer_status().contiguous_bytes
    finally:
        bms.close()
    assert held > 0
    bench.start()
    result = run_bmsfw(*bench.update_args("v2-big"), "--json", check=0)
    again = json.loads(result.stdout)
    assert again["outcome"] == "updated"
    assert again["transfer"]["resumed_from"] == held
    assert again["running_version"] == "2.0.0"
    run_bmsfw("diff", *bench.link_args(), report["backup"]["path"], "--check", check=0)


def test_scan_diagnose_backup_restore_rollback(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench((1, 2))
    bench.start()
    found = json.loads(run_bmsfw("scan", "--can", bench.link, "--json", check=0).stdout)
    assert sorted(f["serial"] for f in found) == ["SIM0000001", "SIM0000002"]
    diag = run_bmsfw(
        "diagnose", *bench.link_args(1), "--package", str(bench.kit.packages["v2"]),
        "--trust", str(bench.kit.trust), "--window", "0.2", "--samples", "3", "--json", check=0,
    )  # fmt: skip
    items = {i["name"]: i for i in json.loads(diag.stdout)[0]["items"]}
    assert items["certificate-chain"]["ok"] and items["compatibility"]["ok"]
    assert items["link"]["ok"] and items["supply"]["ok"]
    backup_dir = bench.work / "manual"
    made = json.loads(
        run_bmsfw("backup", *bench.link_args(1), "--to", str(backup_dir), "--json", check=0).stdout
    )
    creds = ["--tester-cert", str(bench.kit.tester_cert), "--tester-key", str(bench.kit.tester_key)]
    run_bmsfw("restore", *bench.link_args(1), made[0]["path"], *creds, check=0)
    wrong = run_bmsfw("restore", *bench.link_args(2), made[0]["path"], *creds, check=7)
    assert "BMSFW-E505" in wrong.stderr
    run_bmsfw(*bench.update_args("v2", 1), check=0)
    # 2.0.0 runs confirmed: no test image to roll back. The host never asks the BMS to
    # boot the other bank as a confirmed image without a self-test.
    records = ["--backup-dir", str(bench.work / "backups")]
    refused = run_bmsfw("rollback", *bench.link_args(1), *creds, *records, "--json", check=7)
    assert json.loads(refused.stdout)["error"]["code"] == "BMSFW-E517"
    info = json.loads(run_bmsfw("info", *bench.link_args(1), "--json", check=0).stdout)
    assert info[0]["boot"]["running_version"] == "2.0.0"


def test_rollback_after_a_failed_self_test_keeps_the_old_firmware(
    make_bench: Callable[..., Bench],
) -> None:
    """Issue 12: `rollback` after a self-test failure used to confirm the rejected image."""
    bench = make_bench()
    bench.start()
    failed = run_bmsfw(*bench.update_args("fail-selftest"), "--json", check=4)
    assert json.loads(failed.stdout)["error"]["code"] == "BMSFW-E511"
    creds = ["--tester-cert", str(bench.kit.tester_cert), "--tester-key", str(bench.kit.tester_key)]
    backups = bench.work / "backups"
    result = run_bmsfw(
        "rollback", *bench.link_args(), *creds, "--backup-dir", str(backups), check=7
    )
    assert "nothing changed" in result.stdout and "BMSFW-E517" in result.stdout, result.stdout
    assert "runs 1.0.0" in result.stdout
    info = json.loads(run_bmsfw("info", *bench.link_args(), "--json", check=0).stdout)
    assert info[0]["boot"]["running_version"] == "1.0.0"
    assert info[0]["boot"]["image_state"] != "test"
    assert info[0]["identity"]["security_counter"] == 1
    audit = run_bmsfw("report", "--audit", str(backups / "audit.jsonl"), "--json", check=0)
    events = [(r["event"], r["result"]) for r in json.loads(audit.stdout)]
    assert events == [("update", "rolled-back"), ("rollback", "refused")]
    bench.stop()
    bms = bench.offline(1)  # and after a power cycle it still boots the old firmware
    try:
        assert bms.boot_status().running_version == "1.0.0"
    finally:
        bms.close()
