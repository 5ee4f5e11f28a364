"""The unified procedure over a virtual BMS: rollback, retry after an interruption,
downgrade, stop requests and the record (backup dir, report, audit) - each decision
made by the core, each outcome checked on the device."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class Bench:
    """This test's BMS and the procedure as `bmsfw update` / `bmsfw rollback` run it on
    it: the vendor's trust, the default confirmations, report and audit record in the
    test's record places, waits on the BMS's simulated clock."""

    bms: VirtualBms
    vendor: Vendor
    packages: dict[str, bytes]
    options: UpdateOptions
    clock: SimClock

    def update(
        self,
        package: str | bytes = "2.0.0",
        *,
        session: DirectSession | None = None,
        options: UpdateOptions | None = None,
        events: list[Event] | None = None,
    ) -> UpdateReport:
        """One run of the update (``package``: a name in ``packages`` or the bytes)."""
        data = self.packages[package] if isinstance(package, str) else package
        return _run(
            session or DirectSession(self.bms),
            data,
            self.vendor,
            options or self.options,
            self.clock,
            events,
        )

    def rollback(self) -> UpdateReport:
        o = self.options
        record = RecordOptions(o.backup_dir, o.audit_log, o.report_dir, o.operator)
        return run_rollback(
            DirectSession(self.bms), record, sleep=self.clock.sleep, clock=self.clock.monotonic
        )

    def interrupted_after_reset(self) -> UpdateReport:
        """An update whose link was lost right after the reset; the link comes back and
        the BMS runs the new image as its test image."""
        first = self.update(session=LinkLostAfterReset(self.bms))
        self.bms.wait_boot()
        return first

    def audit(self) -> list[tuple[str, str]]:
        assert self.options.audit_log is not None
        return [(r["event"], r["result"]) for r in verify_audit_log(self.options.audit_log)]


@pytest.fixture
def bench(
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> Bench:
    return Bench(bms, vendor, packages, options, clock)


def test_rollback_after_a_failed_self_test_changes_nothing_and_is_recorded(bench: Bench) -> None:
    """The defect of issue 12: rollback used to confirm the image the BMS had rejected."""
    bms = bench.bms
    report = bench.update("fail-selftest")
    assert report.error.code == "BMSFW-E511"
    rejected = bms.bank_info("B")
    ops, counter = bms.flash_op_count, bms.otp.security_counter

    rollback = bench.rollback()
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
    assert bench.audit() == [("update", "rolled-back"), ("rollback", "refused")]
    saved = load_report(rollback.report_path)
    assert saved.kind == "rollback" and saved.decisions.rollback == "nothing-to-roll-back"


def test_lost_link_after_reset_is_not_a_boot_loop_and_the_retry_finishes(bench: Bench) -> None:
    bms = bench.bms
    first = bench.interrupted_after_reset()
    assert first.outcome == "paused"
    assert first.error.code == "BMSFW-E516"  # power loss / lost link, not E510
    assert "not a boot loop" in first.error.message
    assert first.failed_step == "self-test"
    status = bms.boot_status()  # the BMS booted its test image meanwhile
    assert (status.running_version, status.image_state) == ("2.0.0", "test")

    events: list[Event] = []
    again = bench.update(events=events)
    assert again.outcome == "updated", again.error
    assert again.decisions.start == "continue-test-image"
    steps = [e.step for e in events if isinstance(e, StepFinished)]
    assert steps == ["identify", "verify-package", "authenticate", "self-test", "confirm"]
    assert not [e for e in events if isinstance(e, TransferProgress)]  # nothing re-sent
    status = bms.boot_status()
    assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
    assert bms.otp.security_counter == 2
    assert bench.audit() == [("update", "paused"), ("update", "updated")]


def test_rollback_of_a_test_image_returns_to_the_confirmed_one(bench: Bench) -> None:
    bms = bench.bms
    bench.interrupted_after_reset()
    assert bms.boot_status().image_state == "test"
    rollback = bench.rollback()
    assert rollback.ok and rollback.outcome == "rolled-back", rollback.error
    assert rollback.decisions.rollback == "revert-test-image"
    status = bms.boot_status()
    assert status.running_version == "1.0.0" and status.image_state != "test"
    assert bms.otp.security_counter == 1
    # and a second rollback has nothing left to do
    second = bench.rollback()
    assert second.error.code == "BMSFW-E517"
    assert bms.boot_status().running_version == "1.0.0"


def test_downgrade_needs_an_explicit_reason_which_is_recorded(bench: Bench) -> None:
    bms, options = bench.bms, bench.options
    lower = bench.vendor.release("0.9.5", 1)  # the same security counter as what runs
    refused = bench.update(lower)
    assert refused.outcome == "refused"
    assert refused.error.code == "BMSFW-E414"
    assert not bms.transfer_status().staged
    assert bms.boot_status().running_version == "1.0.0"

    allowed = dataclasses.replace(options, downgrade_reason="field recall R-17")
    report = bench.update(lower, options=allowed)
    assert report.outcome == "updated", report.error
    assert bms.boot_status().running_version == "0.9.5"
    assert report.package.downgrade and report.package.downgrade_reason == ("field recall R-17")
    assert any("downgrade" in w for w in report.warnings)
    assert options.audit_log is not None
    last = verify_audit_log(options.audit_log)[-1]
    assert last["package"]["downgrade_reason"] == "field recall R-17"


@pytest.mark.req("SEED-INTERRUPTION", "R156-SAFE-STATE")
def test_a_stop_request_ends_at_a_safe_point_with_report_and_audit(bench: Bench) -> None:
    stop = [False]

    def on_event(event: Event) -> None:
        if isinstance(event, TransferProgress) and event.offset > 0:
            stop[0] = True  # Ctrl-C during the transfer

    events: list[Event] = []
    stopping = dataclasses.replace(bench.options, stop=lambda: stop[0])
    report = bench.update(options=stopping, events=_Tee(events, on_event))
    assert report.outcome == "paused"
    assert report.error.code == "BMSFW-E518"
    assert 0 < report.transfer.offset < report.transfer.total
    assert bench.bms.boot_status().running_version == "1.0.0"
    assert bench.audit() == [("update", "paused")]
    assert Path(report.report_path).is_file()
    again = bench.update()
    assert again.outcome == "updated"
    assert again.transfer.resumed_from == report.transfer.offset


class _Tee(list[Event]):
    def __init__(self, events: list[Event], hook: Callable[[Event], None]) -> None:
        super().__init__()
        self.events, self.hook = events, hook

    def append(self, event: Event) -> None:
        self.events.append(event)
        self.hook(event)


@pytest.mark.parametrize("where", ["file-in-path", "backup-dir-is-file", "audit-log-is-dir"])
def test_an_unusable_record_place_stops_before_the_first_byte(
    bench: Bench, tmp_path: Path, where: str
) -> None:
    bms, options = bench.bms, bench.options
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
    report = bench.update(options=options)
    assert report.error.code == code, report.error
    assert report.outcome == "refused"
    assert bms.flash_op_count == ops and not bms.transfer_status().staged
    assert bms.boot_status().running_version == "1.0.0"


def test_too_little_disk_space_is_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(Exception) as caught:
        check_record_targets(RecordTargets(tmp_path, min_free_bytes=1 << 62))
    assert getattr(caught.value, "code", "") == "BMSFW-E533"


def test_a_report_that_cannot_be_written_at_the_end_keeps_the_outcome(bench: Bench) -> None:
    assert bench.options.report_dir is not None
    report_dir: Path = bench.options.report_dir

    class DriveRemoved(list[Event]):
        def append(self, event: Event) -> None:
            if isinstance(event, StepFinished) and event.step == "config-compare":
                shutil.rmtree(report_dir)
                report_dir.write_text("the drive is gone")  # mkdir now fails

    report = bench.update(events=DriveRemoved())
    assert report.outcome == "updated" and report.ok
    assert report.record_error.code == "BMSFW-E519"
    assert report.exception is not None and report.exception.code == "BMSFW-E519"
    assert "updated" in report.record_error.message
    assert bench.bms.boot_status().image_state == "confirmed"
    assert bench.audit() == [("update", "updated")]  # the audit record still went in


def test_a_pack_the_self_test_would_reject_is_stopped_by_the_preflight(bench: Bench) -> None:
    """One set of limits: 14 V passed the old 9-32 V preflight, then failed the 18-30 V
    self-test after the image was written and activated."""
    bms = bench.bms
    bms.faults.set_supply(sag_v=10.0)  # 24 V -> 14 V
    ops = bms.flash_op_count
    report = bench.update()
    assert report.outcome == "refused"
    assert report.error.code == "BMSFW-E403"
    supply = next(c for c in report.preflight if c.name == "supply-stability")
    assert supply.limit.startswith(
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


def test_the_report_says_whether_to_run_it_again(bench: Bench) -> None:
    report = bench.update(session=LinkLostAfterReset(bench.bms))
    assert "run it again:    yes" in render_text(report)
    refused = bench.rollback()  # the BMS is still booting: nothing to roll back yet
    assert "run it again:    not until" in render_text(refused)
