"""The unified procedure over a virtual BMS: rollback, retry after an interruption,
downgrade, stop requests and the record (backup dir, report, audit) - each decision
made by the core, each outcome checked on the device."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bmsfw.errors import retry_helps_for
from bmsfw.protocol.errors import UdsTimeoutError
from bmsfw.protocol.session import BootStatus, DeviceIdentity, SelfTestResult
from bmsfw.sim import SimClock, VirtualBms
from bmsfw.sim.direct import DirectSession
from bmsfw.update.audit import verify_audit_log
from bmsfw.update.errors import ProfileInvalidError
from bmsfw.update.events import Event, StepFinished, TransferProgress
from bmsfw.update.pipeline import RecordOptions, UpdateOptions, run_rollback
from bmsfw.update.profile import SELF_TEST_LIMITS, load_profile
from bmsfw.update.record import RecordTargets, check_record_targets
from bmsfw.update.report import UpdateReport, load_report, render_text

from .conftest import Vendor
from .conftest import run_on_sim_time as _run


class LinkLostAfterReset(DirectSession):
    """The link (or the power of the adapter) goes away right after the reset."""

    lost = False

    def reset(self) -> None:
        super().reset()
        self.lost = True

    def _gone(self) -> None:
        if self.lost:
            raise UdsTimeoutError("no response (link lost)")

    def wait_boot(self, timeout_s: float) -> BootStatus:
        self._gone()
        return super().wait_boot(timeout_s)

    def read_boot_status(self) -> BootStatus:
        self._gone()
        return super().read_boot_status()

    def read_self_test(self) -> SelfTestResult:
        self._gone()
        return super().read_self_test()

    def identify(self) -> DeviceIdentity:
        self._gone()
        return super().identify()


def _rollback(session: DirectSession, options: UpdateOptions, clock: SimClock) -> UpdateReport:
    record = RecordOptions(
        options.backup_dir, options.audit_log, options.report_dir, options.operator
    )
    return run_rollback(session, record, sleep=clock.sleep, clock=clock.monotonic)


def _audit(options: UpdateOptions) -> list[tuple[str, str]]:
    assert options.audit_log is not None
    return [(r["event"], r["result"]) for r in verify_audit_log(options.audit_log)]


def test_rollback_after_a_failed_self_test_changes_nothing_and_is_recorded(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    """The defect of issue 12: rollback used to confirm the image the BMS had rejected."""
    report = _run(session, packages["fail-selftest"], vendor, options, clock)
    assert report.error.code == "BMSFW-E511"
    rejected = bms.bank_info("B")
    ops, counter = bms.flash_op_count, bms.otp.security_counter

    rollback = _rollback(session, options, clock)
    assert rollback.kind == "rollback" and not rollback.ok
    assert rollback.outcome == "refused"
    assert rollback.error.code == "BMSFW-E517"
    assert "rejected image" in rollback.error.message or "no test image" in (rollback.error.message)
    status = bms.boot_status()
    assert (status.running_version, status.active_bank) == ("1.0.0", "A")
    assert status.image_state != "test"
    assert (bms.bank_info("B"), bms.flash_op_count, bms.otp.security_counter) == (
        rejected,
        ops,
        counter,
    )
    assert _audit(options) == [("update", "rolled-back"), ("rollback", "refused")]
    saved = load_report(rollback.report_path)
    assert saved.kind == "rollback" and saved.decisions["rollback"] == "nothing-to-roll-back"


def test_lost_link_after_reset_is_not_a_boot_loop_and_the_retry_finishes(
    *,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    first = _run(LinkLostAfterReset(bms), packages["2.0.0"], vendor, options, clock)
    assert first.outcome == "paused"
    assert first.error.code == "BMSFW-E516"  # power loss / lost link, not E510
    assert "not a boot loop" in first.error.message
    assert first.failed_step == "self-test"
    bms.wait_boot()  # the link comes back; the BMS booted its test image meanwhile
    status = bms.boot_status()
    assert (status.running_version, status.image_state) == ("2.0.0", "test")

    events: list[Event] = []
    again = _run(DirectSession(bms), packages["2.0.0"], vendor, options, clock, events)
    assert again.outcome == "updated", again.error
    assert again.decisions["start"] == "continue-test-image"
    steps = [e.step for e in events if isinstance(e, StepFinished)]
    assert steps == ["identify", "verify-package", "authenticate", "self-test", "confirm"]
    assert not [e for e in events if isinstance(e, TransferProgress)]  # nothing re-sent
    status = bms.boot_status()
    assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
    assert bms.otp.security_counter == 2
    assert _audit(options) == [("update", "paused"), ("update", "updated")]


def test_rollback_of_a_test_image_returns_to_the_confirmed_one(
    *,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    _run(LinkLostAfterReset(bms), packages["2.0.0"], vendor, options, clock)
    bms.wait_boot()
    assert bms.boot_status().image_state == "test"
    rollback = _rollback(DirectSession(bms), options, clock)
    assert rollback.ok and rollback.outcome == "rolled-back", rollback.error
    assert rollback.decisions["rollback"] == "revert-test-image"
    status = bms.boot_status()
    assert status.running_version == "1.0.0" and status.image_state != "test"
    assert bms.otp.security_counter == 1
    # and a second rollback has nothing left to do
    second = _rollback(DirectSession(bms), options, clock)
    assert second.error.code == "BMSFW-E517"
    assert bms.boot_status().running_version == "1.0.0"


def test_downgrade_needs_an_explicit_reason_which_is_recorded(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    lower = vendor.release("0.9.5", 1)  # the same security counter as what runs
    refused = _run(session, lower, vendor, options, clock)
    assert refused.outcome == "refused"
    assert refused.error.code == "BMSFW-E414"
    assert not bms.transfer_status().staged
    assert bms.boot_status().running_version == "1.0.0"

    allowed = dataclasses.replace(options, downgrade_reason="field recall R-17")
    report = _run(session, lower, vendor, allowed, clock)
    assert report.outcome == "updated", report.error
    assert bms.boot_status().running_version == "0.9.5"
    assert report.package["downgrade"] and report.package["downgrade_reason"] == (
        "field recall R-17"
    )
    assert any("downgrade" in w for w in report.warnings)
    assert options.audit_log is not None
    last = verify_audit_log(options.audit_log)[-1]
    assert last["package"]["downgrade_reason"] == "field recall R-17"


@pytest.mark.req("SEED-INTERRUPTION", "R156-SAFE-STATE")
def test_a_stop_request_ends_at_a_safe_point_with_report_and_audit(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    stop = [False]

    def on_event(event: Event) -> None:
        if isinstance(event, TransferProgress) and event.offset > 0:
            stop[0] = True  # Ctrl-C during the transfer

    events: list[Event] = []
    stopping = dataclasses.replace(options, stop=lambda: stop[0])
    report = _run(
        session,
        packages["2.0.0"],
        vendor,
        stopping,
        clock,
        _Tee(events, on_event),
    )
    assert report.outcome == "paused"
    assert report.error.code == "BMSFW-E518"
    assert 0 < report.transfer["offset"] < report.transfer["total"]
    assert bms.boot_status().running_version == "1.0.0"
    assert _audit(options) == [("update", "paused")]
    assert Path(report.report_path).is_file()
    again = _run(DirectSession(bms), packages["2.0.0"], vendor, options, clock)
    assert again.outcome == "updated"
    assert again.transfer["resumed_from"] == report.transfer["offset"]


class _Tee(list[Event]):
    def __init__(self, events: list[Event], hook: Callable[[Event], None]) -> None:
        super().__init__()
        self.events, self.hook = events, hook

    def append(self, event: Event) -> None:
        self.events.append(event)
        self.hook(event)


@pytest.mark.parametrize("where", ["file-in-path", "backup-dir-is-file", "audit-log-is-dir"])
def test_an_unusable_record_place_stops_before_the_first_byte(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
    tmp_path: Path,
    where: str,
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    if where == "file-in-path":
        options = dataclasses.replace(options, backup_dir=blocker / "backups")
        code = "BMSFW-E530"
    elif where == "backup-dir-is-file":
        options = dataclasses.replace(options, backup_dir=blocker)
        code = "BMSFW-E530"
    else:
        audit = tmp_path / "audit-dir"
        audit.mkdir()
        options = dataclasses.replace(options, audit_log=audit)
        code = "BMSFW-E532"
    ops = bms.flash_op_count
    report = _run(session, packages["2.0.0"], vendor, options, clock)
    assert report.error.code == code, report.error
    assert report.outcome == "refused"
    assert bms.flash_op_count == ops and not bms.transfer_status().staged
    assert bms.boot_status().running_version == "1.0.0"


def test_too_little_disk_space_is_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(Exception) as caught:
        check_record_targets(RecordTargets(tmp_path, min_free_bytes=1 << 62))
    assert getattr(caught.value, "code", "") == "BMSFW-E533"


def test_a_report_that_cannot_be_written_at_the_end_keeps_the_outcome(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    assert options.report_dir is not None
    report_dir: Path = options.report_dir

    class DriveRemoved(list[Event]):
        def append(self, event: Event) -> None:
            if isinstance(event, StepFinished) and event.step == "config-compare":
                shutil.rmtree(report_dir)
                report_dir.write_text("the drive is gone")  # mkdir now fails

    report = _run(session, packages["2.0.0"], vendor, options, clock, DriveRemoved())
    assert report.outcome == "updated" and report.ok
    assert report.record_error.code == "BMSFW-E519"
    assert report.exception is not None and report.exception.code == "BMSFW-E519"
    assert "updated" in report.record_error.message
    assert bms.boot_status().image_state == "confirmed"
    assert _audit(options) == [("update", "updated")]  # the audit record still went in


def test_a_pack_the_self_test_would_reject_is_stopped_by_the_preflight(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    """One set of limits: 14 V passed the old 9-32 V preflight, then failed the 18-30 V
    self-test after the image was written and activated."""
    bms.faults.set_supply(sag_v=10.0)  # 24 V -> 14 V
    ops = bms.flash_op_count
    report = _run(session, packages["2.0.0"], vendor, options, clock)
    assert report.outcome == "refused"
    assert report.error.code == "BMSFW-E403"
    supply = next(c for c in report.preflight if c["name"] == "supply-stability")
    assert supply["limit"].startswith(
        f"{SELF_TEST_LIMITS.supply_min_v:g}–{SELF_TEST_LIMITS.supply_max_v:g} V"
    )
    assert bms.flash_op_count == ops and not bms.transfer_status().staged


def test_a_profile_cannot_open_the_supply_window_wider_than_the_self_test(
    tmp_path: Path,
) -> None:
    wide = tmp_path / "wide.toml"
    wide.write_text("[preflight]\nsupply_min_v = 9.0\n")
    with pytest.raises(ProfileInvalidError, match="wider than the self-test"):
        load_profile(wide)
    product = tmp_path / "product.toml"
    product.write_text("[self_test]\nsupply_min_v = 20.0\nsupply_max_v = 28.0\n")
    profile = load_profile(product)
    assert (profile.preflight.supply_min_v, profile.preflight.supply_max_v) == (20.0, 28.0)


@pytest.mark.parametrize(
    ("code", "helps"),
    [
        ("BMSFW-E501", True),  # transfer interrupted: resumes
        ("BMSFW-E516", True),  # no answer after the reset: continues the test image
        ("BMSFW-E518", True),  # stopped by the operator
        ("BMSFW-E360", True),  # a transport time-out
        ("BMSFW-E209", True),  # power cut during a flash operation
        ("BMSFW-E401", False),  # state of charge: the pack must change first
        ("BMSFW-E511", False),  # self-test failed: the release must change
        ("BMSFW-E517", False),  # nothing to roll back to
        ("BMSFW-E999", False),  # unknown
    ],
)
def test_errors_say_whether_running_the_same_command_again_helps(code: str, helps: bool) -> None:
    import bmsfw.protocol.device_errors  # noqa: F401 - E209 lives there

    assert retry_helps_for(code) is helps


def test_the_report_says_whether_to_run_it_again(
    *,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    report = _run(LinkLostAfterReset(bms), packages["2.0.0"], vendor, options, clock)
    assert "run it again:    yes" in render_text(report)
    refused = _rollback(DirectSession(bms), options, clock)
    assert "run it again:    not until" in render_text(refused)
