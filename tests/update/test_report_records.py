"""The report's parts are typed frozen records (the device as identified and its boot
status at the end too), and its JSON is the one the dict-based
report wrote: reports on disk from before load and write back byte for byte."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bmsfw.protocol.session import BootStatus, DeviceIdentity, SelfTestCheck
from bmsfw.update.errors import ReportUnreadableError
from bmsfw.update.preflight import CheckResult
from bmsfw.update.report import (
    DecisionsRecord,
    PackageRecord,
    ReportDraft,
    SelfTestRecord,
    TransferRecord,
    UpdateReport,
    load_report,
    render_text,
)

# Written by bmsfw before the parts were typed (`run_update` / `run_rollback` on main at
# bee0869): a delta update, a resumed one, a downgrade, two reverts (the self-test record
# read after the revert, and none), a rollback.
OLD_REPORTS = sorted((Path(__file__).parent / "data" / "reports-v1").glob("*.json"))


def test_the_old_reports_are_all_there() -> None:
    assert [p.stem for p in OLD_REPORTS] == [
        "after-revert-dict",
        "after-revert-null",
        "delta",
        "downgrade",
        "resumed",
        "rollback",
    ]


@pytest.mark.parametrize("path", OLD_REPORTS, ids=lambda p: p.stem)
def test_an_old_report_loads_typed_and_writes_back_byte_for_byte(path: Path) -> None:
    report = load_report(path)
    assert report.to_json() == path.read_text(encoding="utf-8")
    assert isinstance(report.package, PackageRecord)
    assert isinstance(report.transfer, TransferRecord)
    assert isinstance(report.self_test, SelfTestRecord)
    assert isinstance(report.decisions, DecisionsRecord)
    assert all(isinstance(c, CheckResult) for c in report.preflight)
    assert all(isinstance(c, SelfTestCheck) for c in report.self_test.checks or ())
    assert render_text(report).startswith(f"bmsfw {report.kind} report - ")


def test_what_the_old_reports_say_reads_as_attributes() -> None:
    delta = load_report(OLD_REPORTS[2])
    assert isinstance(delta.device_before, DeviceIdentity) and delta.serial
    assert isinstance(delta.device_now, BootStatus) and delta.device_now.image_state == "confirmed"
    assert delta.package.payload == "delta" and delta.package.delta_sha256
    assert delta.decisions.start == "start" and delta.decisions.installed == "installed"
    assert delta.transfer.bytes_sent == delta.transfer.total
    reverted = load_report(OLD_REPORTS[0])
    assert reverted.self_test.passed is False and reverted.self_test.detail
    assert reverted.self_test.after_revert and reverted.self_test.after_revert.passed
    assert load_report(OLD_REPORTS[1]).self_test.after_revert is None
    rollback = load_report(OLD_REPORTS[5])
    assert rollback.decisions.verdict("rollback")[0] == "revert-test-image"
    assert not rollback.package and not rollback.transfer  # nothing recorded: {} in JSON


def test_a_string_updates_transfer_keeps_its_broadcast_fields() -> None:
    data = json.loads(OLD_REPORTS[4].read_text(encoding="utf-8"))
    data["transfer"].update(
        mode="broadcast", activation_group=2, repair_frames=3, repaired_blocks=1, repair_rounds=1
    )
    report = UpdateReport.from_dict(data)
    assert (report.transfer.mode, report.transfer.activation_group) == ("broadcast", 2)
    assert report.to_dict() == data


@pytest.mark.parametrize(
    ("part", "change", "named"),
    [
        ("transfer", {"total": "4096"}, "transfer.total is str, not a number"),
        ("transfer", {"duration_s": True}, "transfer.duration_s is bool, not a number"),
        ("package", {"signer": "CN=x"}, "package.signer is str, not a list"),
        ("decisions", {"start-reason": 7}, "decisions.start-reason is int, not a text"),
        ("self_test", {"checks": [{"name": "x", "passed": "yes"}]}, "checks[0].passed"),
        ("self_test", {"checks": [{"passed": True}]}, "self_test.checks[0] does not match"),
        ("self_test", {"after_revert": []}, "self_test.after_revert is list, not an object"),
        ("device_before", {"serial": 7}, "device_before.serial is int, not a text"),
        ("device_now", {"image_state": "great"}, "device_now.image_state is 'great', not one of"),
    ],
)
def test_a_part_of_another_shape_is_refused_with_its_code(
    part: str, change: dict[str, object], named: str
) -> None:
    data = json.loads(OLD_REPORTS[2].read_text(encoding="utf-8"))
    data[part] = {**data[part], **change}
    with pytest.raises(ReportUnreadableError, match=named.replace("[", r"\[").replace("]", r"\]")):
        UpdateReport.from_dict(data)
    assert ReportUnreadableError.code == "BMSFW-E515"


def test_a_preflight_row_of_another_shape_is_refused() -> None:
    data = json.loads(OLD_REPORTS[2].read_text(encoding="utf-8"))
    data["preflight"] = [{"name": "soc", "passed": True}]
    with pytest.raises(ReportUnreadableError, match=r"preflight\[0\] does not match"):
        UpdateReport.from_dict(data)


def test_the_parts_are_frozen_records_with_slots() -> None:
    report = load_report(OLD_REPORTS[2])
    for part in (report.package, report.transfer, report.self_test, report.decisions):
        assert not hasattr(part, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, dataclasses.fields(part)[0].name, None)


def test_a_frozen_report_does_not_change_with_its_draft() -> None:
    draft = ReportDraft(node="n1")
    draft.note_transfer(total=10, offset=4)
    draft.decide(start="start", start_reason="1.0.0 -> 2.0.0")
    frozen = draft.freeze()
    draft.note_transfer(offset=10, bytes_sent=10)
    draft.decide(after_boot="confirm")
    assert frozen.transfer == TransferRecord(total=10, offset=4)
    assert frozen.decisions.to_dict() == {"start": "start", "start-reason": "1.0.0 -> 2.0.0"}


def test_the_draft_is_the_record_so_far_and_knows_only_its_fields() -> None:
    draft = ReportDraft(node="n1", kind="rollback")
    draft.append("warnings", "first")
    handed_out = draft.now
    draft.set(outcome="rolled-back", running_version="1.0.0")
    draft.append("warnings", "second", "third")
    assert handed_out.warnings == ("first",) and handed_out.outcome == "failed"
    assert draft.now.ok and draft.now.warnings == ("first", "second", "third")
    with pytest.raises(TypeError):
        draft.set(transfers=TransferRecord())  # not a field of the report
    with pytest.raises(ValueError, match="'done' is not a valid Outcome"):
        draft.set(outcome="done")
    assert draft.freeze(report_path="r.json") == dataclasses.replace(
        draft.now, report_path="r.json"
    )
