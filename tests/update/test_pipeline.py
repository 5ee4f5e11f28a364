"""The pipeline over DirectSession on a simulated clock: every outcome and what it leaves."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bmsfw.protocol.errors import UdsTimeoutError
from bmsfw.sim import SimClock, VirtualBms
from bmsfw.sim.direct import DirectSession
from bmsfw.update.audit import verify_audit_log
from bmsfw.update.events import Event, StepFinished, TransferProgress, UpdateFinished
from bmsfw.update.pipeline import UpdateOptions, run_update, run_updates
from bmsfw.update.report import load_report

from .conftest import Vendor
from .conftest import run_on_sim_time as _run


@pytest.mark.req(
    "SEED-PROGRESS-LOG",
    "SEED-APPROVED-OR-FALLBACK",
    "IEC62443-CR2.8",
    "R156-UPDATE-RECORD",
    "R156-INFORM-AFTER",
)
def test_successful_update_confirms_reports_and_audits(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    events: list[Event] = []
    config_before = bms.config_snapshot()
    report = _run(session, packages["2.0.0"], vendor, options, clock, events)
    assert report.outcome == "updated", report.error  # type: ignore[attr-defined]
    status = bms.boot_status()
    assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
    assert bms.otp.security_counter == 2
    assert bms.config_snapshot() == config_before
    assert report.config_changes == ()  # type: ignore[attr-defined]
    steps = [e.step for e in events if isinstance(e, StepFinished)]
    assert steps == [
        "identify", "verify-package", "preflight", "confirmations", "backup",
        "authenticate", "transfer", "device-verify", "activate", "self-test",
        "confirm", "config-compare",
    ]  # fmt: skip
    progress = [e.offset for e in events if isinstance(e, TransferProgress)]
    assert progress[-1] == report.transfer.total > 4096
    assert progress == sorted(progress)
    assert isinstance(events[-1], UpdateFinished) and events[-1].ok
    records = verify_audit_log(options.audit_log)  # type: ignore[arg-type]
    assert [r["result"] for r in records] == ["updated"]
    assert records[0]["who"] == "tester" and records[0]["device"]["serial"] == "SIM0000001"
    saved = list((options.report_dir or Path()).glob("*.json"))
    assert len(saved) == 1
    assert load_report(saved[0]).running_version == "2.0.0"
    backup = json.loads(Path(str(report.backup.path)).read_text())  # type: ignore[attr-defined]
    assert backup["firmware_version"] == "1.0.0"


@pytest.mark.req("SEED-SOC-RANGE", "SEED-TEMP-RANGE", "SEED-STABLE-SUPPLY", "R156-ENERGY")
@pytest.mark.parametrize(
    ("inject", "code", "check"),
    [
        (lambda b: b.faults.set_soc(15.0), "BMSFW-E401", "state-of-charge"),
        (lambda b: b.faults.set_soc(85.0), "BMSFW-E401", "state-of-charge"),
        (lambda b: b.faults.set_temperatures(-5.0), "BMSFW-E402", "temperature"),
        (lambda b: b.faults.set_temperatures(50.0), "BMSFW-E402", "temperature"),
        (
            lambda b: b.faults.set_supply(ripple_v=2.0, ripple_hz=0.7),
            "BMSFW-E403",
            "supply-stability",
        ),
        (lambda b: b.faults.set_protection_fault("overcurrent"), "BMSFW-E404", "active-faults"),
    ],
    ids=["soc-15", "soc-85", "temp-minus-5", "temp-50", "unstable-supply", "active-fault"],
)
def test_preflight_failure_writes_nothing(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
    inject: Callable[[VirtualBms], None],
    code: str,
    check: str,
) -> None:
    inject(bms)
    flash_ops = bms.flash_op_count
    report = _run(session, packages["2.0.0"], vendor, options, clock)
    assert report.outcome == "refused"  # type: ignore[attr-defined]
    assert report.error.code == code  # type: ignore[attr-defined]
    assert report.failed_step == "preflight"  # type: ignore[attr-defined]
    failed = [c for c in report.preflight if not c.passed]  # type: ignore[attr-defined]
    assert check in [c.name for c in failed]
    assert report.running_version == "1.0.0"  # type: ignore[attr-defined]
    # Nothing written: no staged update, inactive bank untouched, no flash operation.
    assert not bms.transfer_status().staged
    assert bms.bank_info("B").state == "empty"
    assert bms.flash_op_count == flash_ops
    assert not report.backup  # type: ignore[attr-defined]


@pytest.mark.req("SEED-APPROVED-OR-FALLBACK", "R156-SAFE-STATE")
def test_self_test_failure_rolls_back(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    report = _run(session, packages["fail-selftest"], vendor, options, clock)
    assert report.outcome == "rolled-back"  # type: ignore[attr-defined]
    assert report.error.code == "BMSFW-E511"  # type: ignore[attr-defined]
    assert report.failed_step == "self-test"  # type: ignore[attr-defined]
    assert report.running_version == "1.0.0"  # type: ignore[attr-defined]
    assert report.self_test.passed is False
    status = bms.boot_status()
    assert status.running_version == "1.0.0" and status.image_state != "test"
    assert bms.otp.security_counter == 1


def test_never_confirming_image_rolls_back(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    report = _run(session, packages["never-confirm"], vendor, options, clock)
    assert report.outcome == "rolled-back"  # type: ignore[attr-defined]
    assert report.error.code == "BMSFW-E512"  # type: ignore[attr-defined]
    assert report.running_version == "1.0.0"  # type: ignore[attr-defined]
    assert bms.boot_status().running_version == "1.0.0"
    assert bms.otp.security_counter == 1


@pytest.mark.req("SEED-INTERRUPTION", "R156-SAFE-STATE")
@pytest.mark.parametrize("cut_at", [4, 10, 12], ids=["early", "late", "last-block"])
def test_power_cut_during_transfer_then_update_again_resumes(
    *,
    cut_at: int,
    open_bms: Callable[[], VirtualBms],
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    bms = open_bms()
    bms.faults.power_cut_at(cut_at)
    report = _run(DirectSession(bms), packages["2.0.0"], vendor, options, clock)
    assert report.outcome == "paused"  # type: ignore[attr-defined]
    assert report.error.code == "BMSFW-E501"  # type: ignore[attr-defined]
    assert report.failed_step == "transfer"  # type: ignore[attr-defined]
    assert bms.dead
    reached = report.transfer.offset
    assert reached > 0

    bms = open_bms()  # power back on: the old firmware runs
    assert bms.boot_status().running_version == "1.0.0"
    events: list[Event] = []
    again = _run(DirectSession(bms), packages["2.0.0"], vendor, options, clock, events)
    assert again.outcome == "updated", again.error  # type: ignore[attr-defined]
    assert again.transfer.resumed_from <= reached
    assert bms.boot_status().running_version == "2.0.0"


@pytest.mark.req("SEED-STABLE-SUPPLY", "R156-ENERGY", "R156-SAFE-STATE")
def test_transfer_stops_at_safe_point_when_supply_leaves_limits(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    def sink(event: Event) -> None:
        # The supply sags once a third of the image is on the device.
        if isinstance(event, TransferProgress) and event.offset >= event.total // 3:
            bms.faults.set_supply(sag_v=16.0)  # 24 V -> 8 V
        clock.sleep(0.3)  # blocks take time: the watcher runs between them

    report = run_update(
        session, packages["2.0.0"], vendor.trust(), options,
        sink=sink, sleep=clock.sleep, clock=clock.monotonic,
    )  # fmt: skip
    assert report.outcome == "paused"
    assert report.error.code == "BMSFW-E502"
    assert "supply" in report.error.message
    status = bms.transfer_status()
    assert status.staged and 0 < status.contiguous_bytes < status.total_size
    assert bms.boot_status().running_version == "1.0.0"
    bms.faults.set_supply(sag_v=0.0)
    again = run_update(
        session,
        packages["2.0.0"],
        vendor.trust(),
        options,
        sleep=clock.sleep,
        clock=clock.monotonic,
    )
    assert again.outcome == "updated"
    assert again.transfer.resumed_from == status.contiguous_bytes


@pytest.mark.req("SEED-HW-COMPAT")
def test_incompatible_package_is_refused_before_preflight(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    report = _run(session, packages["rev-z"], vendor, options, clock)
    assert report.outcome == "refused"  # type: ignore[attr-defined]
    assert report.error.code == "BMSFW-E110"  # type: ignore[attr-defined]
    assert report.failed_step == "verify-package"  # type: ignore[attr-defined]
    assert not bms.transfer_status().staged


@pytest.mark.req("SEED-FLAMMABLES")
def test_missing_confirmation_stops_before_backup(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    opts = dataclasses.replace(options, confirmed=frozenset({"stable-power"}))
    report = _run(session, packages["2.0.0"], vendor, opts, clock)
    assert report.error.code == "BMSFW-E409"  # type: ignore[attr-defined]
    assert "flammables-removed" in report.error.message  # type: ignore[attr-defined]
    asked: list[str] = []
    report = run_update(
        session, packages["2.0.0"], vendor.trust(), opts,
        ask=lambda c: asked.append(c.id) or True, sleep=clock.sleep, clock=clock.monotonic,
    )  # fmt: skip
    assert report.outcome == "updated"
    assert asked == ["flammables-removed"]
    assert {c.how for c in report.confirmations} == {"flag", "interactive"}


def test_safety_check_cannot_be_overridden(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    bms.faults.set_soc(10.0)
    opts = dataclasses.replace(options, overrides={"state-of-charge": "customer insists"})
    report = _run(session, packages["2.0.0"], vendor, opts, clock)
    assert report.error.code == "BMSFW-E410"  # type: ignore[attr-defined]
    assert not bms.transfer_status().staged


def test_config_change_by_new_firmware_is_restored(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    package = vendor.release("2.3.0", 2, behaviour="reset-config")
    before = bms.config_snapshot()
    report = _run(session, package, vendor, options, clock)
    assert report.outcome == "updated", report.error  # type: ignore[attr-defined]
    if report.config_changes:  # type: ignore[attr-defined]
        assert report.config_restored  # type: ignore[attr-defined]
    assert bms.config_snapshot().checksum == before.checksum


def test_already_installed_writes_nothing(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    ops = bms.flash_op_count
    report = _run(session, packages["1.0.0"], vendor, options, clock)
    assert report.outcome == "already-installed"  # type: ignore[attr-defined]
    assert bms.flash_op_count == ops


def test_two_nodes_concurrently(
    *,
    tmp_path: Path,
    template_device: Path,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
) -> None:
    import shutil

    clock = SimClock()
    devices = []
    for name in ("a", "b"):
        shutil.copytree(template_device, tmp_path / name)
        bms = VirtualBms(tmp_path / name, clock=clock)
        bms.wait_boot()
        devices.append(bms)
    devices[1].faults.set_soc(90.0)
    reports = run_updates(
        [DirectSession(b) for b in devices], packages["2.0.0"], vendor.trust(), options,
        sleep=clock.sleep, clock=clock.monotonic,
    )  # fmt: skip
    assert [r.outcome for r in reports] == ["updated", "refused"]
    assert devices[0].boot_status().running_version == "2.0.0"
    assert devices[1].boot_status().running_version == "1.0.0"
    assert len(verify_audit_log(options.audit_log)) == 2  # type: ignore[arg-type]


class _BusyAfterConfirm(DirectSession):
    """A real in-process session whose first ``failures`` boot-status reads after
    confirm time out, as a loaded link or a BMS busy writing its journal can."""

    def __init__(self, bms: VirtualBms, failures: int) -> None:
        super().__init__(bms)
        self.failures = failures
        self.confirmed = False

    def confirm(self) -> None:
        super().confirm()
        self.confirmed = True

    def read_boot_status(self):  # type: ignore[no-untyped-def]
        if self.confirmed and self.failures > 0:
            self.failures -= 1
            raise UdsTimeoutError("no response within P2*")
        return super().read_boot_status()


def test_a_lost_answer_after_confirm_does_not_fail_a_confirmed_update(
    *,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    session = _BusyAfterConfirm(bms, failures=2)
    report = _run(session, packages["2.0.0"], vendor, options, clock)
    assert report.outcome == "updated", report.error  # type: ignore[attr-defined]
    device_now = report.device_now  # type: ignore[attr-defined]
    assert (device_now.running_version, device_now.image_state) == ("2.0.0", "confirmed")
    assert session.failures == 0


def test_a_bms_silent_after_confirm_is_reported_as_unknown_not_guessed(
    *,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    session = _BusyAfterConfirm(bms, failures=1000)
    report = _run(session, packages["2.0.0"], vendor, options, clock)
    assert report.outcome == "failed"  # type: ignore[attr-defined]
    assert report.failed_step == "confirm"  # type: ignore[attr-defined]
    assert report.error.code == "BMSFW-E360"  # type: ignore[attr-defined]
    assert report.running_version == "unknown (BMS not answering)"  # type: ignore[attr-defined]
    assert any(
        "could not read the boot status afterwards" in w
        for w in report.warnings  # type: ignore[attr-defined]
    )
    # The device itself did confirm: what the report cannot see, it does not claim.
    assert bms.boot_status().image_state == "confirmed"
