"""Every way back to the previous image: which bank runs afterwards, and the OTP counter."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bmsfw.protocol.device_errors import (
    DeviceNotRunningError,
    NotConfirmableError,
    RollbackBlockedError,
    UpdateInProgressError,
)
from bmsfw.sim import DeviceConfig, SimClock, VirtualBms

from .conftest import Vendor, install


def _dtc_names(bms: VirtualBms) -> list[str]:
    return [d.name for d in bms.dtcs()]


def _assert_back_on_a(bms: VirtualBms, reason_part: str) -> None:
    status = bms.boot_status()
    assert status.run_state == "application"
    assert (status.active_bank, status.running_version) == ("A", "1.0.0")
    assert status.image_state == "reverted"
    assert reason_part in status.last_revert_reason
    assert status.security_counter == 1  # never raised: nothing was confirmed
    assert bms.self_test().passed and bms.contactors_closed
    assert "REVERTED" in _dtc_names(bms) or "ROLLBACK_REQUESTED" in _dtc_names(bms)


@pytest.mark.req("SEED-DUAL-BANK", "SEED-ANTI-ROLLBACK")
def test_successful_update_confirms_and_raises_counter(bms: VirtualBms, vendor: Vendor) -> None:
    release = vendor.release("2.0.0", 5)
    install(bms, release)
    status = bms.boot_status()
    assert (status.active_bank, status.image_state, status.security_counter) == ("B", "test", 1)
    assert bms.self_test().passed
    bms.confirm()
    status = bms.boot_status()
    assert (status.active_bank, status.image_state, status.security_counter) == (
        "B",
        "confirmed",
        5,
    )
    bms.confirm()  # repeated confirm (a lost response) is harmless
    old = bms.bank_info("A")  # 1.0.0 has counter 1 < 5: no longer bootable (anti-rollback)
    assert (old.valid, old.state) == (False, "invalid") and "E112" in old.problem


@pytest.mark.req("SEED-APPROVED-OR-FALLBACK")
def test_failed_self_test_reverts(bms: VirtualBms, vendor: Vendor) -> None:
    install(bms, vendor.release("2.0.0", 2, behaviour="fail-selftest"))
    _assert_back_on_a(bms, "self-test failed: application")
    assert "SELF_TEST_FAILED" in _dtc_names(bms)


def test_real_self_test_failure_of_the_board_reverts(bms: VirtualBms, vendor: Vendor) -> None:
    """Not a marker: a dead balancing channel makes the new image's self-test fail."""
    bms.faults.dead_balancing_channel(3)
    install(bms, vendor.release("2.0.0", 2))
    status = bms.boot_status()
    assert status.active_bank == "A" and "balancing" in status.last_revert_reason
    # The old image's self-test fails too (the board is broken): contactors stay open.
    assert not bms.self_test().passed and not bms.contactors_closed
    assert status.security_counter == 1


@pytest.mark.req("SEED-APPROVED-OR-FALLBACK")
def test_unconfirmed_image_reverts_after_watchdog_window(
    bms: VirtualBms, vendor: Vendor, clock: SimClock
) -> None:
    install(bms, vendor.release("2.0.0", 2))
    assert bms.boot_status().image_state == "test"
    bms.run_for(bms.spec.watchdog_window_s - 5)
    assert bms.boot_status().active_bank == "B"  # still inside the window
    bms.run_for(10)
    bms.wait_boot()
    _assert_back_on_a(bms, "watchdog")


def test_never_confirm_marker_reverts_despite_confirm(bms: VirtualBms, vendor: Vendor) -> None:
    install(bms, vendor.release("2.0.0", 2, behaviour="never-confirm"))
    bms.confirm()  # acknowledged, but the firmware does not write the image-ok flag
    assert bms.boot_status().image_state == "test"
    assert bms.boot_status().security_counter == 1
    bms.run_for(bms.spec.watchdog_window_s + 1)
    bms.wait_boot()
    _assert_back_on_a(bms, "watchdog")


@pytest.mark.req("SEED-APPROVED-OR-FALLBACK", "NIST800-193-RECOVER")
def test_boot_loop_reverts_via_boot_counter(bms: VirtualBms, vendor: Vendor) -> None:
    install(bms, vendor.release("2.0.0", 2, behaviour="boot-loop"))
    _assert_back_on_a(bms, "boot loop: 1 start(s)")


@pytest.mark.req("SEED-SECURE-BOOT", "IEC62443-CR3.14", "NIST800-193-DETECT", "NIST800-193-RECOVER")
def test_secure_boot_failure_reverts(bms: VirtualBms, vendor: Vendor) -> None:
    """The bank verified, then a bit flipped before the reset: the bootloader refuses it."""
    release = vendor.release("2.0.0", 2)
    bms.begin_update(release.header)
    bms.erase_inactive()
    bms.write_inactive(0, release.image)
    bms.verify_inactive()
    bms.activate()
    bms.faults.corrupt_bank("B", 0x300)
    bms.reset()
    bms.wait_boot()
    _assert_back_on_a(bms, "secure boot failed on bank B: BMSFW-E123")
    assert "SECURE_BOOT_FAILED" in _dtc_names(bms)


def test_rollback_request_of_test_image(bms: VirtualBms, vendor: Vendor) -> None:
    install(bms, vendor.release("2.0.0", 2))
    bms.rollback()
    assert bms.boot_status().run_state == "booting"
    assert not bms.contactors_closed  # opened before the reset
    bms.wait_boot()
    status = bms.boot_status()
    assert (status.active_bank, status.running_version, status.security_counter) == (
        "A",
        "1.0.0",
        1,
    )
    assert "rollback requested" in status.last_revert_reason


def test_rollback_of_confirmed_image_with_same_counter(bms: VirtualBms, vendor: Vendor) -> None:
    install(bms, vendor.release("1.1.0", 1))
    bms.confirm()
    bms.rollback()
    status = bms.wait_boot()
    assert (status.active_bank, status.running_version, status.image_state) == (
        "A",
        "1.0.0",
        "confirmed",
    )
    assert status.security_counter == 1


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_rollback_blocked_by_anti_rollback(bms: VirtualBms, vendor: Vendor) -> None:
    install(bms, vendor.release("2.0.0", 2))
    bms.confirm()
    with pytest.raises(RollbackBlockedError) as err:
        bms.rollback()
    assert err.value.code == "BMSFW-E211" and "E112" in err.value.message
    status = bms.boot_status()
    assert (status.active_bank, status.running_version, status.security_counter) == (
        "B",
        "2.0.0",
        2,
    )


def test_second_update_refused_while_test_image_unconfirmed(
    bms: VirtualBms, vendor: Vendor
) -> None:
    install(bms, vendor.release("2.0.0", 2))
    with pytest.raises(UpdateInProgressError):
        bms.begin_update(vendor.release("3.0.0", 3).header)
    assert bms.bank_info("A").valid  # the fallback image was not touched


def test_confirm_refused_after_failed_self_test_of_confirmed_image(bms: VirtualBms) -> None:
    bms.faults.ntc(1, "open")
    bms.reset()
    bms.wait_boot()
    result = bms.self_test()
    assert not result.passed
    failed = {c.name for c in result.checks if not c.passed}
    assert failed == {"temperature_sensors", "protection"}
    assert not bms.contactors_closed
    bms.confirm()  # confirmed image: nothing to do
    assert bms.boot_status().image_state == "confirmed"


@pytest.mark.req("SEED-RUNTIME-INTEGRITY", "NIST800-193-DETECT", "NIST800-193-RECOVER")
def test_integrity_fault_then_fallback_on_next_boot(bms: VirtualBms, vendor: Vendor) -> None:
    install(bms, vendor.release("1.1.0", 1, behaviour="integrity-fault"))
    bms.confirm()
    assert bms.contactors_closed
    bms.run_for(bms.spec.integrity_period_s + 1)
    telemetry = bms.telemetry()
    assert "firmware_integrity" in telemetry.faults and not telemetry.contactors_closed
    assert "FW_INTEGRITY" in _dtc_names(bms)
    bms.reset()
    status = bms.wait_boot()
    # Bank B no longer passes secure boot; the bootloader falls back to A by itself.
    assert (status.active_bank, status.running_version, status.security_counter) == (
        "A",
        "1.0.0",
        1,
    )
    assert "BOOT_FALLBACK" in _dtc_names(bms)


@pytest.mark.req("SEED-RECOVERY-REFLASH", "NIST800-193-RECOVER")
def test_no_bootable_image_stays_in_bootloader_and_accepts_recovery(
    bms: VirtualBms, vendor: Vendor
) -> None:
    release = vendor.release("2.0.0", 2)
    bms.faults.corrupt_bank("A", 0x280)
    bms.reset()
    status = bms.wait_boot()
    assert status.run_state == "bootloader" and status.image_state == "none"
    assert not bms.contactors_closed
    with pytest.raises(NotConfirmableError):
        bms.confirm()
    install(bms, release)  # recovery through the bootloader itself
    bms.confirm()
    status = bms.boot_status()
    assert (status.active_bank, status.running_version, status.security_counter) == (
        "B",
        "2.0.0",
        2,
    )


def test_reset_config_marker_resets_config_keeps_calibration(
    bms: VirtualBms, vendor: Vendor
) -> None:
    bms.write_config(DeviceConfig(capacity_ah=300.0))
    calibration = bms.calibration()
    backup = bms.config_snapshot()
    install(bms, vendor.release("2.0.0", 2, behaviour="reset-config"))
    assert bms.config() == DeviceConfig()
    assert bms.calibration() == calibration
    bms.restore_snapshot(backup)
    assert bms.config_snapshot().checksum == backup.checksum


# --------------------------------------------------------------------------- rejected images


def _stored_state(bms: VirtualBms) -> tuple[bytes, bytes]:
    """Flash (boot record, OTP, banks, fault log) and board file, byte for byte."""
    return (bms.state_dir / "flash.bin").read_bytes(), (bms.state_dir / "board.json").read_bytes()


def _revert_by(bms: VirtualBms, vendor: Vendor, how: str) -> None:
    if how == "self-test":
        install(bms, vendor.release("2.0.0", 2, behaviour="fail-selftest"))
    elif how == "watchdog":
        install(bms, vendor.release("2.0.0", 2, behaviour="never-confirm"))
        bms.run_for(bms.spec.watchdog_window_s + 1)
        bms.wait_boot()
    elif how == "boot-loop":
        install(bms, vendor.release("2.0.0", 2, behaviour="boot-loop"))
    else:  # the tester asked for it
        install(bms, vendor.release("2.0.0", 2))
        bms.rollback()
        bms.wait_boot()
    status = bms.boot_status()
    assert (status.active_bank, status.running_version) == ("A", "1.0.0")


@pytest.mark.parametrize("how", ["self-test", "watchdog", "boot-loop", "rollback request"])
def test_rejected_image_can_be_neither_confirmed_nor_rolled_back_to(
    bms: VirtualBms, vendor: Vendor, how: str
) -> None:
    _revert_by(bms, vendor, how)
    assert bms.bank_info("B").state == "rejected"
    before = _stored_state(bms)
    with pytest.raises(NotConfirmableError, match="nothing to confirm: the test image on bank B"):
        bms.confirm()
    with pytest.raises(RollbackBlockedError, match="nothing to roll back to: bank B"):
        bms.rollback()
    assert _stored_state(bms) == before  # refused: nothing written, not even a DTC
    status = bms.boot_status()
    assert (status.run_state, status.active_bank, status.running_version) == (
        "application",
        "A",
        "1.0.0",
    )
    assert status.security_counter == 1 and bms.contactors_closed


def test_rejection_survives_power_cycles(
    bms: VirtualBms, vendor: Vendor, open_device: Callable[[], VirtualBms]
) -> None:
    _revert_by(bms, vendor, "self-test")
    bms.close()
    again = open_device()
    assert again.boot_status().active_bank == "A"
    with pytest.raises(NotConfirmableError):
        again.confirm()
    with pytest.raises(RollbackBlockedError):
        again.rollback()


def test_bootloader_never_falls_back_to_a_rejected_image(bms: VirtualBms, vendor: Vendor) -> None:
    """The confirmed bank rots: rather than boot the rejected image, stay in recovery mode."""
    _revert_by(bms, vendor, "self-test")
    bms.faults.corrupt_bank("A", 0x280)
    bms.reset()
    status = bms.wait_boot()
    assert (status.run_state, status.image_state) == ("bootloader", "none")
    assert "RECOVERY_MODE" in _dtc_names(bms)
    install(bms, vendor.release("2.1.0", 2))  # a new verified upgrade request recovers it
    bms.confirm()
    assert bms.boot_status().running_version == "2.1.0"


def test_a_new_verified_update_lifts_the_rejection(bms: VirtualBms, vendor: Vendor) -> None:
    _revert_by(bms, vendor, "self-test")
    install(bms, vendor.release("2.0.1", 1))
    assert bms.bank_info("B").state == "running"
    bms.confirm()
    bms.rollback()  # B was confirmed, A is the previous confirmed image: allowed
    status = bms.wait_boot()
    assert (status.active_bank, status.running_version) == ("A", "1.0.0")


def test_test_image_without_a_self_test_in_this_boot_cannot_be_confirmed(
    bms: VirtualBms, vendor: Vendor
) -> None:
    release = vendor.release("2.0.0", 2)
    bms.begin_update(release.header)
    bms.erase_inactive()
    bms.write_inactive(0, release.image)
    bms.verify_inactive()
    bms.activate()
    bms.reset()
    with pytest.raises(DeviceNotRunningError):
        bms.confirm()  # booting / self-test running: nothing has passed yet
    bms.wait_boot()
    assert bms.boot_status().image_state == "test"
    bms.reset()  # MCUboot: a test image reset before its confirm is reverted, not retried
    status = bms.wait_boot()
    assert (status.active_bank, status.image_state) == ("A", "reverted")
    assert "not confirmed before the next start (reset cause: software)" in (
        status.last_revert_reason
    )
    with pytest.raises(NotConfirmableError):
        bms.confirm()
    assert bms.boot_status().security_counter == 1


def test_rollback_of_a_factory_fresh_bms_is_refused_and_changes_nothing(bms: VirtualBms) -> None:
    """Bank B was never written: nothing to roll back to."""
    before = _stored_state(bms)
    with pytest.raises(RollbackBlockedError, match="bank B holds no bootable image"):
        bms.rollback()
    assert _stored_state(bms) == before
    assert bms.boot_status().running_version == "1.0.0" and bms.contactors_closed


def _power_cycle(bms: VirtualBms) -> VirtualBms:
    """Power off and on again: nothing is written on the way down."""
    bms.close()
    return VirtualBms(bms.state_dir, clock=SimClock())


def _activate(bms: VirtualBms, vendor: Vendor) -> None:
    release = vendor.release("2.0.0", 2)
    bms.begin_update(release.header)
    bms.erase_inactive()
    bms.write_inactive(0, release.image)
    bms.verify_inactive()
    bms.activate()  # MCUboot boot_set_pending(0): a test boot at the next start


@pytest.mark.req("SEED-DUAL-BANK", "SEED-INTERRUPTION")
def test_power_cut_before_the_test_boot_still_test_boots_the_image(
    bms: VirtualBms, vendor: Vendor
) -> None:
    _activate(bms, vendor)
    again = _power_cycle(bms)  # pending set, the reset never came
    status = again.wait_boot()
    assert (status.running_version, status.image_state) == ("2.0.0", "test"), status
    again.confirm()
    assert again.boot_status().image_state == "confirmed"


@pytest.mark.req("SEED-DUAL-BANK", "SEED-INTERRUPTION")
def test_power_cut_while_the_bootloader_works_on_the_test_image_resumes_it(
    bms: VirtualBms, vendor: Vendor
) -> None:
    _activate(bms, vendor)
    bms.reset()
    timing = bms.spec.timing
    bms.run_for(timing.contactor_open_s + timing.reset_s + timing.bootloader_init_s / 2)
    assert bms.boot_status().run_state == "booting"
    assert bms.boot_record().attempts == 0  # copy-done not written yet
    again = _power_cycle(bms)
    status = again.wait_boot()
    assert (status.running_version, status.image_state) == ("2.0.0", "test"), status


@pytest.mark.req("SEED-DUAL-BANK", "SEED-INTERRUPTION")
def test_power_cut_after_the_test_boot_reverts_at_the_next_start(
    bms: VirtualBms, vendor: Vendor
) -> None:
    """MCUboot swap type REVERT: the test image ran once and was not confirmed."""
    _activate(bms, vendor)
    bms.reset()
    assert bms.wait_boot().image_state == "test"
    assert bms.self_test().passed  # passing is not confirming
    again = _power_cycle(bms)
    status = again.wait_boot()
    assert (status.active_bank, status.running_version) == ("A", "1.0.0")
    assert status.image_state == "reverted"
    assert "reset cause: power-on" in status.last_revert_reason
    with pytest.raises(NotConfirmableError):
        again.confirm()  # the reverted image stays rejected
    assert again.boot_status().security_counter == 1
