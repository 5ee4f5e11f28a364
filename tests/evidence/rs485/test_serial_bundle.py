"""An RS485 update's evidence: one bundle per unit, with a timestamped Modbus frame log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bmsfw.evidence.bundle import verify_bundle
from cli_support import run_bmsfw


def _crc16_modbus(frame: bytes) -> int:
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@pytest.mark.req("R156-UPDATE-RECORD")
def test_units_updated_in_turn_each_get_a_bundle_with_the_bus_frame_log(
    make_string: Callable[..., object], tmp_path: Path
) -> None:
    bench = make_string((1, 2))
    bench.start()  # type: ignore[attr-defined]
    evidence = tmp_path / "evidence"
    args = bench.update_args("v2")  # type: ignore[attr-defined]
    result = run_bmsfw(*args, "--evidence", str(evidence), "--json", check=0)
    reports = json.loads(result.stdout)
    assert [r["outcome"] for r in reports] == ["updated", "updated"]
    bundles = {p.name.split("_")[1]: p for p in evidence.glob("evidence_*.zip")}
    assert sorted(bundles) == ["RS40000001", "RS40000002"]
    for unit, serial in ((1, "RS40000001"), (2, "RS40000002")):
        bundle = verify_bundle(bundles[serial].read_bytes())
        assert bundle.manifest["device"]["serial"] == serial
        assert bundle.manifest["bus_trace"]["kind"] == "serial-log"
        assert bundle.json("report.json")["running_version"] == "2.0.0"
        lines = bundle.files["bus-frames.log"].decode().splitlines()
        assert lines[0].startswith("# bmsfw serial frame log/1")
        frames = [line.split(maxsplit=3) for line in lines[1:]]
        assert len(frames) == bundle.manifest["bus_trace"]["frames"] > 20
        stamps = [f[0] for f in frames]
        assert stamps == sorted(stamps)  # ISO UTC stamps of equal width sort as time
        assert all(len(bytes.fromhex(f[3])) == int(f[2]) for f in frames)
        sent = [bytes.fromhex(f[3]) for f in frames if f[1] == "TX"]
        # complete RTU requests: CRC-16 (low byte first) over each frame checks out
        assert all(_crc16_modbus(b[:-2]) == int.from_bytes(b[-2:], "little") for b in sent)
        # the transfer window writes (function 0x10) to this unit are in the record
        assert sum(1 for b in sent if b[0] == unit and b[1] == 0x10) > 6
        assert any(f[1] == "RX" for f in frames)


@pytest.mark.req("R156-UPDATE-RECORD")
def test_a_broadcast_string_update_leaves_a_bundle_per_unit_also_for_the_refused_one(
    make_string: Callable[..., object], tmp_path: Path
) -> None:
    bench = make_string((1, 2))
    bench.prepare(2, lambda b: b.faults.set_soc(15.0))  # type: ignore[attr-defined]
    bench.start()  # type: ignore[attr-defined]
    evidence = tmp_path / "evidence"
    args = [*bench.update_args("v2"), "--broadcast", "--evidence", str(evidence), "--json"]  # type: ignore[attr-defined]
    run_bmsfw(*args, check=6)  # the first failure's exit code: unit 2's preflight
    bundles = {p.name.split("_")[1]: p for p in evidence.glob("evidence_*.zip")}
    updated = verify_bundle(bundles["RS40000001"].read_bytes())
    refused = verify_bundle(bundles["RS40000002"].read_bytes())
    assert updated.manifest["outcome"] == "updated"
    assert refused.manifest["outcome"] == "refused"
    soc = next(
        c for c in refused.json("preflight.json")["checks"] if c["name"] == "state-of-charge"
    )
    assert not soc["passed"] and soc["limit"] == "20–80 %" and soc["measured"].startswith("15")
    # the image went out once, to unit 0 (Modbus broadcast): in the frame log
    lines = updated.files["bus-frames.log"].decode().splitlines()[1:]
    sent = [bytes.fromhex(line.split(maxsplit=3)[3]) for line in lines if " TX " in line]
    assert sum(1 for b in sent if b[0] == 0 and b[1] == 0x10) > 3
    # `bmsfw evidence verify --json`: the manifest, for a machine
    checked = json.loads(
        run_bmsfw("evidence", "verify", str(bundles["RS40000002"]), "--json", check=0).stdout
    )
    assert checked["ok"] and checked["manifest"]["device"]["serial"] == "RS40000002"
