"""`bmsfw update / info / diagnose` over RS485, run as a technician would, against a
string of virtual BMS in its own process behind one pty."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .conftest import StringBench, run_bmsfw


def test_single_unit_update_then_info(make_string: Callable[..., StringBench]) -> None:
    bench = make_string((1,))
    bench.start()
    result = run_bmsfw(*bench.update_args("v2"), "--json", check=0)
    report = json.loads(result.stdout)
    assert report["outcome"] == "updated", report
    assert report["running_version"] == "2.0.0"
    assert report["device_now"]["image_state"] == "confirmed"
    assert report["transfer"]["offset"] == report["transfer"]["total"]
    assert report["node"].endswith("/unit 1")
    info = json.loads(run_bmsfw("info", *bench.link_args(), "--json", check=0).stdout)
    assert info[0]["identity"]["app_version"] == "2.0.0"
    assert info[0]["boot"]["image_state"] == "confirmed"
    assert info[0]["self_test"]["passed"]
    text = run_bmsfw("info", *bench.link_args(), check=0).stdout
    assert "2.0.0" in text


def test_string_broadcast_one_rolls_back_one_skipped(
    make_string: Callable[..., StringBench],
) -> None:
    """4 units, one broadcast: unit 2's cell ADC is off by 3 % (its new firmware's self-test
    fails, it rolls back), unit 3 is at 15 % SOC (refused by preflight, nothing written);
    units 1 and 4 run 2.0.0 confirmed."""
    bench = make_string((1, 2, 3, 4))
    bench.prepare(2, lambda b: b.faults.adc_gain_error(0, 0.03))
    bench.prepare(3, lambda b: b.faults.set_soc(15.0))
    untouched = bench.inactive_bank(3)
    assert not untouched[2]
    bench.start()
    result = run_bmsfw(*bench.update_args("v2"), "--broadcast", "--json", check=4)
    string = json.loads(result.stdout)
    rows = {row["unit"]: row for row in string["nodes"]}
    reports = {r["device_before"]["serial"]: r for r in string["reports"]}
    assert string["transfer"]["mode"] == "broadcast"
    assert string["transfer"]["units"] == [1, 2, 4]
    # one broadcast: about one frame per 244 image bytes, for all three units together
    image_size = reports["RS40000001"]["transfer"]["total"]
    assert string["transfer"]["frames"] <= image_size // 244 + 2
    for unit in (1, 4):
        assert rows[unit]["outcome"] == "updated", rows[unit]
        assert rows[unit]["now"] == "2.0.0"
        report = reports[f"RS4000000{unit}"]
        assert report["device_now"]["image_state"] == "confirmed"
        assert report["transfer"]["mode"] == "broadcast"
        assert [s["step"] for s in report["steps"]][-1] == "config-compare"
    assert rows[2]["outcome"] == "rolled-back"
    assert rows[2]["error_code"] == "BMSFW-E511"
    assert rows[2]["now"] == "1.0.0"
    assert not reports["RS40000002"]["self_test"]["passed"]
    assert rows[3]["outcome"] == "skipped"
    assert rows[3]["failed_step"] == "preflight"
    assert rows[3]["error_code"] == "BMSFW-E401"
    skipped = reports["RS40000003"]
    assert not skipped["backup"] and not skipped["transfer"]
    assert all(r["audit_hash"] for r in string["reports"])

    info = json.loads(run_bmsfw("info", *bench.link_args(), "--json", check=0).stdout)
    running = {e["identity"]["serial"]: e["boot"]["running_version"] for e in info}
    assert running == {
        "RS40000001": "2.0.0",
        "RS40000002": "1.0.0",
        "RS40000003": "1.0.0",
        "RS40000004": "2.0.0",
    }
    audit_log = str(bench.work / "backups" / "audit.jsonl")
    records = json.loads(run_bmsfw("report", "--audit", audit_log, "--json", check=0).stdout)
    results = {r["device"]["serial"]: (r["result"], r["error_code"]) for r in records}
    assert results == {
        "RS40000001": ("updated", ""),
        "RS40000002": ("rolled-back", "BMSFW-E511"),
        "RS40000003": ("refused", "BMSFW-E401"),
        "RS40000004": ("updated", ""),
    }
    bench.stop()
    # the skipped unit heard the broadcast but, never authenticated nor staged, ignored it
    assert bench.inactive_bank(3) == untouched


def test_diagnose_finds_the_string_at_another_baud_rate(
    make_string: Callable[..., StringBench],
) -> None:
    bench = make_string((1, 2))
    for unit in (1, 2):  # the BMS are set to 38400; the technician assumes 115200
        bench.prepare(unit, lambda b: b.write_config(replace(b.config(), rs485_baud=38_400)))
    bench.start(baud_bps=38_400)
    bench.wait_answering(38_400)
    # the scan's 50 ms per probe is for a quiet line; a loaded test machine answers later
    slow = ("--timeout", "0.25")
    wrong = run_bmsfw("diagnose", *bench.link_args(baud=115_200), *slow, "--json", check=5)
    assert "BMSFW-E373" in wrong.stderr
    assert "use --baud 38400" in wrong.stderr
    scan = json.loads(wrong.stdout)["scan"]
    assert scan["baud_mismatch"] and scan["expected_baud"] == 115_200
    found = {(u["unit"], u["baud_bps"], u["serial"]) for u in scan["units"]}
    # (the simulated pty does not garble a parity mismatch, so 8N1 may answer too)
    assert found == {(1, 38_400, "RS40000001"), (2, 38_400, "RS40000002")}
    by_rate = {s["rate"]: s for s in scan["settings"]}
    assert by_rate["115200 8E1"]["units"] == []
    assert by_rate["38400 8E1"]["units"] == [1, 2]
    # human output: the rate table, where the units are, and what to do
    text = run_bmsfw("diagnose", *bench.link_args(baud=115_200), *slow, check=5)
    assert "38400 8E1" in text.stdout and "units 1-2" in text.stdout
    assert "RS40000002" in text.stdout
    assert "remedy" in text.stderr.lower()
    # at the right rate the scan agrees and the per-unit checks run
    right = run_bmsfw(
        "diagnose", *bench.link_args(1, baud=38_400), "--window", "0.2", "--samples", "3",
        "--json", check=0,
    )  # fmt: skip
    out = json.loads(right.stdout)
    assert not out["scan"]["baud_mismatch"]
    items = {i["name"]: i for i in out["diagnose"][0]["items"]}
    assert items["link"]["ok"] and items["rate"]["ok"]


def _reports_by_serial(bench: StringBench) -> dict[str, dict[str, Any]]:
    files = sorted((bench.work / "backups" / "reports").glob("update_*.json"))
    reports = [json.loads(f.read_text()) for f in files]
    return {r["device_before"]["serial"]: r for r in reports}


def _step(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["step"] == name)


def test_rolling_activation_two_at_a_time_text_output(
    make_string: Callable[..., StringBench],
) -> None:
    """3 units, rolling k=2: units 1-2 reset together and confirm before unit 3 resets;
    unit 3 fails its self-test and rolls back. The technician's text output says so."""
    bench = make_string((1, 2, 3))
    bench.prepare(3, lambda b: b.faults.adc_gain_error(0, 0.03))
    bench.start()
    args = bench.update_args("v2")
    result = run_bmsfw(*args, "--broadcast", "--activation", "rolling", "--rolling-k", "2", check=4)
    out = result.stdout
    assert out.count("bmsfw update report - modbus:") == 3
    assert out.count("result:          UPDATED") == 2
    assert "result:          FAILED - ROLLED BACK to the previous firmware" in out
    unit3 = out[out.index("/unit 3") :]
    assert "error:           BMSFW-E511" in unit3
    assert "device runs now: 1.0.0" in unit3
    assert "remedy:" in unit3
    rows = [line for line in out.splitlines() if "RS4000000" in line and "│" in line]
    cells = {int(r.split("│")[1]): [c.strip() for c in r.split("│")[1:-1]] for r in rows}
    assert cells[1][3:5] == ["2.0.0", "updated"] and cells[1][8] == "1"
    assert cells[2][3:5] == ["2.0.0", "updated"] and cells[2][8] == "1"
    assert cells[3][3:7] == ["1.0.0", "rolled-back", "self-test", "BMSFW-E511"]
    assert cells[3][8] == "2"
    assert "activation rolling, 2 at a time" in out
    # unit 3 reset only after units 1 and 2 had confirmed and compared their config
    reports = _reports_by_serial(bench)
    first_group_done = max(
        _step(reports[s], "config-compare")["started_at"] for s in ("RS40000001", "RS40000002")
    )
    assert _step(reports["RS40000003"], "self-test")["started_at"] > first_group_done
    assert reports["RS40000003"]["transfer"]["activation_group"] == 2


def test_units_one_after_another_without_broadcast(
    make_string: Callable[..., StringBench],
) -> None:
    bench = make_string((1, 2))
    bench.start()
    result = run_bmsfw(*bench.update_args("v2"), "--json", check=0)
    reports = json.loads(result.stdout)
    assert [r["outcome"] for r in reports] == ["updated", "updated"]
    assert [r["node"][-6:] for r in reports] == ["unit 1", "unit 2"]
    first_end = reports[0]["finished_at"]
    assert _step(reports[1], "identify")["started_at"] >= first_end  # one at a time
    assert all(r["transfer"]["total"] == r["transfer"]["offset"] for r in reports)


def test_update_on_a_fast_line_with_three_and_a_half_character_gaps(
    make_string: Callable[..., StringBench],
) -> None:
    bench = make_string((1,))
    bench.prepare(
        1, lambda b: b.write_config(replace(b.config(), rs485_baud=921_600, rs485_char_timed_gap=1))
    )
    bench.start(921_600, frame_gap="chars", throttle=True)
    # The BMS says it times frames by 3.5 characters: a host on the spec's 1.75 ms gap
    # is refused by the preflight link test, before anything is written.
    spec = run_bmsfw(*bench.update_args("v2", link=bench.link_args(baud=921_600)), "--json")
    assert spec.returncode == 6, spec.stderr
    refusal = json.loads(spec.stdout)
    assert refusal["error"]["code"] == "BMSFW-E405" and "MISMATCH" in refusal["error"]["message"]
    link = [*bench.link_args(baud=921_600), "--frame-gap", "chars"]
    result = run_bmsfw(*bench.update_args("v2", link=link), "--json", check=0)
    report = json.loads(result.stdout)
    assert report["outcome"] == "updated", report
    assert report["running_version"] == "2.0.0"
    assert report["device_now"]["image_state"] == "confirmed"
    refused = run_bmsfw("info", *bench.link_args(), "--frame-gap", "fast", check=2)
    assert "frame-gap" in refused.stderr


def test_rollback_after_a_failed_self_test_keeps_the_old_firmware(
    make_string: Callable[..., StringBench],
) -> None:
    """Issue 12 over RS485: `rollback` after a self-test failure changes nothing."""
    bench = make_string((1,))
    bench.prepare(1, lambda b: b.faults.adc_gain_error(0, 0.03))  # the new self-test fails
    bench.start()
    failed = json.loads(run_bmsfw(*bench.update_args("v2"), "--json", check=4).stdout)
    assert failed["error"]["code"] == "BMSFW-E511" and failed["running_version"] == "1.0.0"
    backups = bench.work / "backups"
    creds = ["--tester-cert", str(bench.kit.tester_cert), "--tester-key", str(bench.kit.tester_key)]
    rollback = run_bmsfw(
        "rollback", *bench.link_args(), *creds, "--backup-dir", str(backups), "--json", check=7
    )
    report = json.loads(rollback.stdout)
    assert report["kind"] == "rollback" and report["outcome"] == "refused"
    assert report["error"]["code"] == "BMSFW-E517"
    assert report["decisions"]["rollback"] == "nothing-to-roll-back"
    info = json.loads(run_bmsfw("info", *bench.link_args(), "--json", check=0).stdout)
    assert info[0]["boot"]["running_version"] == "1.0.0"
    assert info[0]["boot"]["image_state"] != "test"
    assert info[0]["identity"]["security_counter"] == 1
    audit = run_bmsfw("report", "--audit", str(backups / "audit.jsonl"), "--json", check=0)
    events = [(r["event"], r["result"]) for r in json.loads(audit.stdout)]
    assert events == [("update", "rolled-back"), ("rollback", "refused")]
