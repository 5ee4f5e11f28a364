"""Evidence bundles: what one holds, that a changed byte is refused, and a real CAN update."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import can
import pytest

from bmsfw.evidence.bundle import (
    AuditPosition,
    BusTrace,
    EvidenceInputs,
    blf_bytes,
    build_bundle,
    verify_bundle,
)
from bmsfw.evidence.errors import EvidenceBundleTamperedError, EvidenceBundleUnreadableError
from bmsfw.link.tap import CanFrameRecorder, SerialFrameRecorder
from bmsfw.protocol.session import DeviceIdentity
from bmsfw.update.audit import verify_audit_log
from bmsfw.update.preflight import CheckResult
from bmsfw.update.report import PackageRecord, StepRecord, UpdateReport
from cli_support import run_bmsfw

REQUEST_ID, RESPONSE_ID = 0x7E0, 0x7E8  # node 1 (docs/uds.md)


def _report() -> UpdateReport:
    return UpdateReport(
        node="SIM0000001",
        outcome="updated",
        started_at=1_790_000_000.0,
        device_before=DeviceIdentity(
            "vendor", "BMS-16S", "C", "SIM0000001", "1.0", "1.0.0", 1, "A"
        ),
        running_version="2.0.0",
        package=PackageRecord(sha256="ab" * 32, product="BMS-16S firmware", version="2.0.0"),
        steps=[StepRecord("verify-package", True, 1_790_000_000.5, 0.1, "signed by CN=signer")],
        preflight=[CheckResult("state-of-charge", "55.0 %", "20–80 %", passed=True, safety=True)],
        audit_hash="cd" * 32,
    )


def _inputs(**changes: object) -> EvidenceInputs:
    recorder = CanFrameRecorder(clock=iter(range(100, 200)).__next__)
    recorder(
        can.Message(arbitration_id=REQUEST_ID, data=b"\x02\x10\x02", is_extended_id=False),
        received=False,
    )
    recorder(
        can.Message(arbitration_id=RESPONSE_ID, data=b"\x02\x50\x02", is_extended_id=False),
        received=True,
    )
    inputs = EvidenceInputs(
        report=_report(),
        created_at=1_790_000_100.0,
        bmsfw_version="0.1.0",
        audit=AuditPosition("audit.jsonl", 3, {"seq": 3, "hash": "cd" * 32}, True, 4),
        config_before={"config": {"overcurrent_a": 200.0}},
        config_after={"config": {"overcurrent_a": 200.0}},
        trace=BusTrace("can-blf", blf_bytes(recorder.messages()), 2),
    )
    return dataclasses.replace(inputs, **changes)  # type: ignore[arg-type]


def test_a_bundle_holds_every_record_and_verifies() -> None:
    bundle = build_bundle(_inputs())
    assert build_bundle(_inputs()) == bundle  # canonical: same inputs, same bytes
    verified = verify_bundle(bundle)
    names = [f["name"] for f in verified.manifest["files"]]
    assert names == [
        "report.json",
        "report.txt",
        "audit-record.json",
        "package.json",
        "preflight.json",
        "config-before.json",
        "config-after.json",
        "bus.blf",
    ]  # fmt: skip  (no notice given: no notice.txt)
    assert verified.json("audit-record.json")["position"] == 3
    assert verified.json("package.json")["verification"]["result"] == "verified"
    assert verified.json("preflight.json")["checks"][0]["limit"] == "20–80 %"
    assert verified.json("config-after.json")["read_back"] is True
    assert b"UPDATED" in verified.files["report.txt"]
    # any unzip reads it
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert archive.testzip() is None and archive.namelist()[0] == "manifest.json"


def test_what_is_missing_is_said_not_left_out() -> None:
    bundle = build_bundle(
        _inputs(audit=None, audit_problem="no audit log", config_after=None,
                config_after_problem="BMSFW-E301: no answer", trace=None)
    )  # fmt: skip
    verified = verify_bundle(bundle)
    assert verified.json("audit-record.json") == {"record": None, "problem": "no audit log"}
    after = verified.json("config-after.json")
    assert after["read_back"] is False and after["problem"] == "BMSFW-E301: no answer"
    assert verified.manifest["bus_trace"] is None


def test_every_changed_byte_is_refused_with_its_own_code() -> None:
    bundle = build_bundle(_inputs())
    manifest_end = bundle.index(b"report.json", 100)  # the manifest entry and its header
    positions = [p for p in range(len(bundle)) if p < manifest_end or p % 7 == 0]
    assert len(positions) > 800
    for pos in positions:
        tampered = bytearray(bundle)
        tampered[pos] ^= 0x01
        with pytest.raises(EvidenceBundleTamperedError) as caught:
            verify_bundle(bytes(tampered))
        assert caught.value.code == "BMSFW-E544", pos
    with pytest.raises(EvidenceBundleTamperedError):
        verify_bundle(bundle + b"\0")  # a byte appended
    with pytest.raises(EvidenceBundleUnreadableError) as unreadable:
        verify_bundle(b"just some text")
    assert unreadable.value.code == "BMSFW-E543"


def test_a_consistently_rewritten_file_is_refused_by_its_digest() -> None:
    bundle = build_bundle(_inputs())
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        entries = [(n, archive.read(n)) for n in archive.namelist()]
    entries = [(n, d.replace(b'"updated"', b'"rolled-back"')) for n, d in entries]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)  # CRCs right, manifest left as it was
    with pytest.raises(EvidenceBundleTamperedError, match=r"report\.json does not match"):
        verify_bundle(buffer.getvalue())


def test_serial_frame_log_is_timestamped_and_in_order() -> None:
    recorder = SerialFrameRecorder(clock=iter([5.0, 4.0, 6.25]).__next__)
    recorder(b"\x01\x03\x00\x00\x00\x02\xc4\x0b", received=False)
    recorder(b"\x01\x03\x04", received=True)
    recorder(b"", received=True)  # nothing read: nothing logged
    recorder(b"\x00\x01\x00\x02\x2a\x32", received=True)
    lines = recorder.lines().splitlines()
    assert lines[0].startswith("# bmsfw serial frame log/1")
    assert lines[1] == "1970-01-01T00:00:05.000000Z TX    8 01 03 00 00 00 02 c4 0b"
    assert lines[2] == "1970-01-01T00:00:05.000000Z RX    3 01 03 04"  # never backwards
    assert lines[3].startswith("1970-01-01T00:00:06.250000Z RX    6")


def _service_ids(frames: list[can.Message]) -> list[int]:
    """The UDS service id of every request that starts in ``frames`` (ISO-TP SF or FF)."""
    sids = []
    for f in frames:
        pci = f.data[0] >> 4
        if pci == 0:
            sids.append(f.data[1])
        elif pci == 1:
            sids.append(f.data[2])
    return sids


def _isotp_length(first: can.Message) -> int:
    """The message length an ISO-TP single frame or first frame announces."""
    if first.data[0] >> 4 == 0:
        return first.data[0] & 0x0F
    return ((first.data[0] & 0x0F) << 8) | first.data[1]


def _starts(frames: list[can.Message], sid: int) -> list[int]:
    """Indexes of the frames that start a request with service id ``sid``."""
    return [
        i
        for i, f in enumerate(frames)
        if (f.data[0] >> 4 == 0 and f.data[1] == sid) or (f.data[0] >> 4 == 1 and f.data[2] == sid)
    ]


def _routines(frames: list[can.Message]) -> list[int]:
    """RoutineControl startRoutine ids in single-frame requests."""
    return [
        int.from_bytes(f.data[3:5], "big")
        for f in frames
        if f.data[0] >> 4 == 0 and f.data[1] == 0x31 and f.data[2] == 0x01
    ]


@pytest.mark.req("R156-UPDATE-RECORD", "R156-INFORM-BEFORE", "R156-INFORM-AFTER")
def test_can_update_writes_a_bundle_with_the_whole_flash_sequence_in_blf(
    make_bench: Callable[..., object], tmp_path: Path
) -> None:
    bench = make_bench()
    bench.start()  # type: ignore[attr-defined]
    evidence = tmp_path / "evidence"
    args = bench.update_args("v2")  # type: ignore[attr-defined]
    assert args[5].endswith("v2.bmsfw")
    result = run_bmsfw(*args, "--evidence", str(evidence), "--json", check=0)
    report = json.loads(result.stdout)
    assert report["outcome"] == "updated"
    (bundle_path,) = evidence.glob("evidence_SIM0000001_*.zip")
    data = bundle_path.read_bytes()
    assert f"sha256 {hashlib.sha256(data).hexdigest()}" in result.stderr
    bundle = verify_bundle(data)
    manifest = bundle.manifest
    assert (manifest["outcome"], manifest["running_version"]) == ("updated", "2.0.0")
    assert manifest["device"]["serial"] == "SIM0000001"
    assert bundle.json("report.json") == report
    # what the person on site was told before and after (stderr), kept in the bundle
    told = result.stderr.replace("\r", "")
    plan_at = told.index("What will happen (before the update):")
    assert "on 1 BMS over CAN 500 kbit/s" in told and "OUT OF SERVICE" in told
    assert plan_at < told.index("After the update: SIM0000001: runs 2.0.0, confirmed;")
    notice = bundle.files["notice.txt"].decode()
    assert notice.startswith("What will happen") and "the pack was out of service for" in notice
    # the audit record and its place in the chain
    records = verify_audit_log(bench.work / "backups" / "audit.jsonl")  # type: ignore[attr-defined]
    audit = bundle.json("audit-record.json")
    assert audit["chain_intact"] and audit["record"] == records[audit["position"]]
    assert audit["record"]["hash"] == report["audit_hash"]
    # package digest + verification, every preflight value with its limit
    package = bundle.json("package.json")
    assert package["sha256"] == hashlib.sha256(Path(args[5]).read_bytes()).hexdigest()
    assert package["verification"]["result"] == "verified"
    checks = bundle.json("preflight.json")["checks"]
    assert {c["name"] for c in checks} >= {"state-of-charge", "temperature", "supply-stability"}
    assert all(c["measured"] != "" and c["limit"] != "" for c in checks)
    # configuration before (the backup file) and after (read back from the BMS)
    before = bundle.json("config-before.json")
    assert before["backup"] == json.loads(Path(report["backup"]["path"]).read_text())
    after = bundle.json("config-after.json")
    assert after["read_back"] and after["snapshot"]["checksum"] == report["backup"]["checksum"]

    # The bus trace opens with python-can's own BLF reader and holds the whole flash.
    blf = tmp_path / "bus.blf"
    blf.write_bytes(bundle.files["bus.blf"])
    frames = list(can.BLFReader(str(blf)))
    assert len(frames) == manifest["bus_trace"]["frames"] > 50
    # what the host sent to node 1, and what it heard back (multicast may also hand
    # back an echo of its own frame late: that is in the record, marked received)
    requests = [f for f in frames if f.arbitration_id == REQUEST_ID and not f.is_rx]
    responses = [f for f in frames if f.arbitration_id == RESPONSE_ID]
    assert responses and all(f.is_rx for f in responses)
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps)
    sids = _service_ids(requests)
    first_download, exit_ = sids.index(0x34), sids.index(0x37)
    transfers = [i for i, sid in enumerate(sids) if sid == 0x36]
    assert first_download < transfers[0] and transfers[-1] < exit_
    # every byte of the image went out: the 0x36 lengths (ISO-TP first/single frame
    # length minus SID and block counter) add up to what the report says was sent
    blocks = [requests[i] for i in _starts(requests, 0x36)]
    assert [b.data[3] if b.data[0] >> 4 == 1 else b.data[2] for b in blocks] == list(
        range(1, len(blocks) + 1)
    )
    assert sum(_isotp_length(b) - 2 for b in blocks) == report["transfer"]["total"]
    assert 0x11 in sids[exit_:]  # ECUReset after the download
    routines = _routines(requests)
    assert 0xFF00 in routines and 0xFF01 in routines  # erase, check programming
    assert routines.index(0xFF01) < routines.index(0x0203)  # confirm comes last
    assert _service_ids(responses).count(0x76) == len(transfers)  # each block acknowledged

    # `bmsfw evidence verify`: intact -> 0; one changed byte -> BMSFW-E544, exit 7
    ok = run_bmsfw("evidence", "verify", str(bundle_path), check=0)
    assert "intact" in ok.stdout
    tampered = tmp_path / "tampered.zip"
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x20
    tampered.write_bytes(bytes(changed))
    refused = run_bmsfw("evidence", "verify", str(tampered), check=7)
    assert "BMSFW-E544" in refused.stderr + refused.stdout
    assert tampered.read_bytes() == bytes(changed)  # verifying changes nothing
