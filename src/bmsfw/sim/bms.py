"""The virtual BMS: bootloader, application firmware and board in one object.

A :class:`VirtualBms` is one powered-on BMS whose whole state lives in a state
directory (see :func:`bmsfw.sim.provision.provision`). Creating the object is
switching the power on; it then boots like the real thing, on the caller's
clock:

1. reset: contactors open (the pack is isolated), MCU reset;
2. bootloader: reads the power-fail-safe boot record, chooses the bank (a
   pending *test* image, else the confirmed one), runs the secure-boot check of
   that bank (MCUboot image hash + signature against the image-key hash fused
   in OTP, security counter not below the OTP counter, hardware TLV), reverts
   or falls back on its own when needed, and keeps the OTP counter in step with
   the confirmed image;
3. application start, then the self-test (cell voltages against the reference
   within ±0.5 %, NTCs plausible, CAN and RS485 at their configured rates,
   balancing switches each bleed with a visible effect, supply, protection);
4. contactors close only after a pass.

Automatic revert of a test image: no confirm within the watchdog window, a
failed self-test (the test image requests it and resets), a secure-boot
failure, or any reset of a test image before it confirmed (power cut, reset,
crash, watchdog): as MCUboot's swap modes (copy-done set, image-ok unset ->
swap type REVERT), a test image is booted once (``max_boot_attempts``,
default 1) and reverted on the next boot. A power cut while the bootloader
still works on the test image (before the test boot starts) test-boots it
again on the next start.
A reverted image (or one rolled back on request) stays *rejected*, as in
MCUboot: it is never booted, confirmed or rolled back to again until a newly
verified image is activated; confirm and rollback then refuse and change nothing.

Protocol servers drive updates with::

    begin_update(header, channel=...) -> erase_inactive() -> write_inactive(off, data)*
    -> verify_inactive() -> activate() -> reset() -> wait_boot() -> self_test()
    -> confirm() | rollback()

``reset()`` returns at once; the boot proceeds as the clock advances (call
``poll()``, ``wait_boot()`` or any other method). While booting, requests other
than :meth:`boot_status` raise :class:`DeviceNotRunningError` (a real BMS does
not answer then). Every method is thread-safe. After a power cut (injected at
a flash operation) the object is dead: every call raises ``PowerCutError``;
open a new ``VirtualBms`` on the same directory to power it up again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar

from bmsfw.errors import PackageError
from bmsfw.package import (
    Component,
    DeviceFacts,
    ImageInfo,
    Manifest,
    McubootImage,
    TrustAnchors,
    parse_image_stream,
    verify_header,
    verify_image_stream,
)
from bmsfw.package.errors import (
    AntiRollbackError,
    ImageManifestMismatchError,
    IncompatibleHardwareError,
    InvalidManifestError,
)
from bmsfw.protocol.device_errors import (
    ConfigSchemaError,
    ConfigValueError,
    DeviceNotRunningError,
    EraseNeededError,
    NoStagedUpdateError,
    NotConfirmableError,
    NotVerifiedError,
    PowerCutError,
    RollbackBlockedError,
    StateDirectoryError,
    UpdateInProgressError,
    VerifyFailedError,
    WriteOutOfRangeError,
    WrongStateError,
)
from bmsfw.protocol.session import (
    BootStatus,
    ConfigSnapshot,
    DeviceIdentity,
    FlashLayout,
    SelfTestCheck,
    SelfTestResult,
    Telemetry,
)
from bmsfw.sim import flash as fl
from bmsfw.sim._journal import Journal
from bmsfw.sim._state import (
    BootRecord,
    StagedUpdate,
    append_dtc,
    bank_region,
    other_bank,
    read_dtcs,
    write_json,
)
from bmsfw.sim.battery import PROTECTION_FAULTS, BatteryModel, BoardState
from bmsfw.sim.clock import Clock, RealClock
from bmsfw.sim.config import (
    CAN_BITRATES_BPS,
    CONFIG_SCHEMA_VERSION,
    RS485_BAUDS,
    Calibration,
    DeviceConfig,
    check_snapshot,
    decode_record,
    encode_record,
    snapshot_checksum,
)
from bmsfw.sim.flash import BANK_A, Flash, PowerCutInjector
from bmsfw.sim.images import AppDescriptor, find_app_descriptor
from bmsfw.sim.otp import Otp
from bmsfw.sim.records import BankInfo, DtcRecord, TransferStatus
from bmsfw.sim.spec import DeviceSpec
from bmsfw.update.profile import SELF_TEST_LIMITS

# starts of a crashing confirmed image before the bootloader gives up (recovery mode)
_CONFIRMED_CRASHES_BEFORE_RECOVERY = 3

if TYPE_CHECKING:
    import datetime as dt

    from bmsfw.sim._stream_decode import EncodedTransfer

__all__ = ["DTC_CODES", "VirtualBms"]

log = logging.getLogger(__name__)

RunState = Literal["application", "booting", "self-test", "bootloader", "off"]

DTC_CODES = {
    "REVERTED": "B1001",
    "SECURE_BOOT_FAILED": "B1002",
    "BOOT_FALLBACK": "B1003",
    "RECOVERY_MODE": "B1004",
    "SELF_TEST_FAILED": "B1005",
    "FW_INTEGRITY": "B1006",
    "CONFIG_DEFAULTED": "B1007",
    "ROLLBACK_REQUESTED": "B1008",
    "cell_overvoltage": "B1010",
    "cell_undervoltage": "B1011",
    "overtemperature": "B1012",
    "undertemperature": "B1013",
    "overcurrent": "B1014",
    "ntc_fault": "B1015",
    "supply": "B1016",
}

# Self-test limits: the product profile of the host is their one source.
CELL_CAL_TOLERANCE_PCT = SELF_TEST_LIMITS.cell_cal_tolerance_pct
NTC_PLAUSIBLE_C = (SELF_TEST_LIMITS.ntc_min_c, SELF_TEST_LIMITS.ntc_max_c)
NTC_MAX_SPREAD_C = SELF_TEST_LIMITS.ntc_max_spread_c
BALANCE_MIN_DROP_V = SELF_TEST_LIMITS.balance_min_drop_v
SUPPLY_RANGE_V = (SELF_TEST_LIMITS.supply_min_v, SELF_TEST_LIMITS.supply_max_v)

P = ParamSpec("P")
R = TypeVar("R")


def _api(fn: Callable[Concatenate[VirtualBms, P], R]) -> Callable[Concatenate[VirtualBms, P], R]:
    """Public entry: lock, refuse when dead, catch up with the clock, die on a power cut."""

    @functools.wraps(fn)
    def wrapper(self: VirtualBms, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            self._check_alive()
            try:
                self._advance()
                return fn(self, *args, **kwargs)
            except PowerCutError:
                self._die()
                raise

    return wrapper  # type: ignore[return-value]


@dataclass
class _Running:
    bank: str
    test: bool
    info: ImageInfo
    hashed_size: int
    descriptor: AppDescriptor | None
    started_at: float = 0.0

    @property
    def behaviour(self) -> str | None:
        return self.descriptor.behaviour if self.descriptor else None

    @property
    def version(self) -> str:
        return self.descriptor.version if self.descriptor else str(self.info.version)


class VirtualBms:
    """One simulated BMS on a state directory. Constructing it powers it on."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        clock: Clock | None = None,
        power_cut: PowerCutInjector | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        device_file = self.state_dir / "device.json"
        if not device_file.is_file() or not (self.state_dir / "flash.bin").is_file():
            raise StateDirectoryError(f"{self.state_dir} is not a provisioned virtual BMS")
        device = json.loads(device_file.read_text())
        self.spec = DeviceSpec.from_dict(device["spec"])
        self.serial: str = device["serial"]
        self.clock: Clock = clock or RealClock()
        self._lock = threading.RLock()
        self.power = power_cut or PowerCutInjector()
        self.flash = Flash(self.state_dir / "flash.bin", self.spec.flash, self.clock, self.power)
        self.otp = Otp(self.flash)
        self._image_keys = self._bootloader_keys()
        self._journals = {name: Journal(self.flash, name) for name in fl.JOURNAL_REGIONS}
        board = BoardState.from_dict(json.loads((self.state_dir / "board.json").read_text()))
        self.battery = BatteryModel(board)
        self.flash.slow_factor = board.slow_flash_factor
        self._dead = False
        self._boots = 0
        self._run_state: RunState = "off"
        self._contactors_closed = False
        self._seq: Iterator[float] | None = None
        self._seq_due = 0.0
        self._last_t = self.clock.monotonic()
        self._running: _Running | None = None
        self._self_test: SelfTestResult | None = None
        self._next_integrity_at = 0.0
        self._integrity_fault = False
        self._reverted_this_boot = False
        self._active_faults: set[str] = set()
        self._written: bytearray | None = None
        self._verified: tuple[str, ImageInfo] | None = None
        self._nvm_defaulted: list[str] = []
        self._config, self._calibration = self._load_nvm_config()
        self.battery.set_capacity(self._config.capacity_ah)
        self.faults = FaultInjector(self)
        log.info("virtual BMS %s powered on (%s)", self.serial, self.state_dir)
        self._start_boot("power-on")
        with self._lock:
            try:
                self._advance()
            except PowerCutError:
                self._die()
                raise

    # ------------------------------------------------------------------ plumbing

    def _bootloader_keys(self) -> tuple[bytes, ...]:
        """The image-signing public key compiled into the bootloader (trusted only if it
        hashes to the OTP value, which verify_image_stream checks)."""
        from bmsfw.sim.provision import read_bootloader_key

        key = read_bootloader_key(self.flash.view(fl.BOOTLOADER))
        return () if key is None else (key,)

    def _check_alive(self) -> None:
        if self._dead:
            raise PowerCutError(f"BMS {self.serial} lost power; open the state directory again")

    def _die(self) -> None:
        self._dead = True
        self._run_state = "off"
        self._contactors_closed = False
        self.flash.dead = True
        self.flash.close()

    @property
    def dead(self) -> bool:
        return self._dead

    @property
    def boot_epoch(self) -> tuple[int, int]:
        """Changes whenever the MCU resets (any reset, or a new power-on): protocol
        servers end sessions and authentication when it does, as a reboot would."""
        return id(self), self._boots

    def close(self) -> None:
        """Switch off cleanly (the pack state is saved; a new VirtualBms powers on again)."""
        with self._lock:
            if not self._dead:
                self._save_board()
                self._die()

    def _save_board(self) -> None:
        write_json(self.state_dir / "board.json", self.battery.state.to_dict())

    def _journal(self, name: str) -> Journal:
        return self._journals[name]

    def _boot_record(self) -> BootRecord:
        raw = self._journal(fl.BOOTSTATE).read()
        return BootRecord() if raw is None else BootRecord.decode(raw)

    def _write_boot_record(self, record: BootRecord) -> None:
        self._journal(fl.BOOTSTATE).write(record.encode())

    def _dtc(self, name: str, detail: str, *, active: bool = False) -> None:
        log.warning("DTC %s %s: %s", DTC_CODES[name], name, detail)
        record = DtcRecord(DTC_CODES[name], name, detail, self.clock.now().isoformat(), active)
        append_dtc(self._journal(fl.DTC), record)

    # ------------------------------------------------------------------ time

    def _catch_up(self) -> None:
        """Lock held: refuse when dead, then :meth:`_advance`; a power cut kills the BMS."""
        self._check_alive()
        try:
            self._advance()
        except PowerCutError:
            self._die()
            raise

    def _advance(self) -> None:
        """Catch up with the clock: battery, boot sequence, watchdog, integrity, protection."""
        for _ in range(1000):
            self._step_battery()
            if self._seq is not None and self.clock.monotonic() >= self._seq_due:
                try:
                    delay = next(self._seq)
                except StopIteration:
                    self._seq = None
                else:
                    self._seq_due = self.clock.monotonic() + delay
                continue
            if self._seq is None and self._run_state == "application" and self._app_tick():
                continue
            return

    def _step_battery(self) -> None:
        now = self.clock.monotonic()
        dt = now - self._last_t
        if dt <= 0:
            return
        step = max(self.spec.model_step_s, dt / 1000.0)
        while dt > 1e-9:
            h = min(step, dt)
            self._apply_balancing()
            self.battery.step(h, contactors_closed=self._contactors_closed)
            dt -= h
        self._last_t = now

    def _apply_balancing(self) -> None:
        """Passive balancing by the running firmware: bleed cells above the weakest."""
        if self._run_state != "application" or self._self_test is None:
            self.battery.bleeding = [False] * self.battery.cells
            return
        volts = [self._cell_measured_v(i) for i in range(self.battery.cells)]
        low = min(volts)
        cfg = self._config
        self.battery.bleeding = [
            v >= cfg.balance_start_v and (v - low) * 1000.0 > cfg.balance_delta_mv for v in volts
        ]

    def _start_boot(self, cause: str) -> None:
        self._boots += 1
        self._seq = self._boot_sequence(cause)
        self._seq_due = self.clock.monotonic()

    def _next_event_in(self) -> float | None:
        now = self.clock.monotonic()
        if self._seq is not None:
            return max(0.0, self._seq_due - now)
        if self._run_state == "application" and self._running is not None:
            events = [self._next_integrity_at]
            if self._running.test:
                events.append(self._running.started_at + self.spec.watchdog_window_s)
            return max(0.0, min(events) - now)
        return None

    # ------------------------------------------------------------------ boot

    def _boot_sequence(self, cause: str) -> Iterator[float]:
        t = self.spec.timing
        crashes = 0
        while True:
            self._contactors_closed = False
            self._run_state = "booting"
            self._running = None
            self._self_test = None
            self._integrity_fault = False
            self._written = None
            self._verified = None
            self._reverted_this_boot = False
            self.battery.bleeding = [False] * self.battery.cells
            yield t.contactor_open_s + t.reset_s
            running, duration, started = self._bootloader(cause)
            yield duration
            if started is not None:
                # MCUboot's copy-done: written once the test boot is under way, so a
                # power cut during the bootloader's work resumes it on the next start
                self._write_boot_record(started)
            if running is None:
                self._run_state = "bootloader"
                log.error("no bootable image: staying in the bootloader (recovery mode)")
                return
            self._running = running
            log.info(
                "booting bank %s version %s (%s)",
                running.bank,
                running.version,
                "test" if running.test else "confirmed",
            )
            yield t.app_start_s
            if running.behaviour == "boot-loop":
                crashes += 1
                cause = "crash"
                log.warning("firmware on bank %s crashed during start (%d)", running.bank, crashes)
                if not running.test and crashes >= _CONFIRMED_CRASHES_BEFORE_RECOVERY:
                    self._dtc("RECOVERY_MODE", f"confirmed image on bank {running.bank} boot-loops")
                    self._running = None
                    self._run_state = "bootloader"
                    return
                continue
            if self._nvm_defaulted:
                self._dtc("CONFIG_DEFAULTED", f"unreadable NVM: {', '.join(self._nvm_defaulted)}")
                self._nvm_defaulted = []
            if running.behaviour == "reset-config" and self._config != DeviceConfig():
                self._config = DeviceConfig()
                self._journal(fl.CONFIG).write(encode_record("config", self._config.to_dict()))
            self._run_state = "self-test"
            yield t.self_test_s
            result = self._run_self_test(running)
            self._self_test = result
            if not result.passed:
                failed = ", ".join(c.name for c in result.checks if not c.passed)
                self._dtc("SELF_TEST_FAILED", f"bank {running.bank} {running.version}: {failed}")
                if running.test:
                    # The test image gives up: ask the bootloader to revert, then reset.
                    record = self._boot_record()
                    self._write_boot_record(
                        replace(record, revert_requested=f"self-test failed: {failed}")
                    )
                    cause = "software"
                    continue
            else:
                yield t.contactor_close_s
            running.started_at = self.clock.monotonic()
            self._next_integrity_at = running.started_at + self.spec.integrity_period_s
            self._run_state = "application"
            self._update_protection()
            return

    def _bootloader(self, cause: str) -> tuple[_Running | None, float, BootRecord | None]:
        """Choose and check the image to boot: (running, time spent, record to write
        once the test boot is under way, None when booting the confirmed image)."""
        t = self.spec.timing
        duration = t.bootloader_init_s
        record = self._boot_record()
        if record.pending is not None:
            reason = ""
            if cause == "watchdog":
                reason = (
                    f"test image on bank {record.pending} not confirmed within the watchdog"
                    f" window ({self.spec.watchdog_window_s:g} s)"
                )
            elif record.revert_requested:
                reason = record.revert_requested
            elif record.attempts >= self.spec.max_boot_attempts:
                # MCUboot swap type REVERT: the test image ran and was not confirmed
                # before this start, whatever the reset cause (the reset cause register
                # only names it)
                if cause == "crash":
                    reason = (
                        f"boot loop: {record.attempts} start(s) of bank {record.pending}"
                        " crashed without confirm"
                    )
                else:
                    reason = (
                        f"test image on bank {record.pending} not confirmed before the next"
                        f" start (reset cause: {cause})"
                    )
            else:
                pending = record.pending
                running, problem, spent = self._secure_boot(pending, test=True)
                duration += spent
                if running is not None:
                    return running, duration, replace(record, attempts=record.attempts + 1)
                reason = f"secure boot failed on bank {record.pending}: {problem}"
                self._dtc("SECURE_BOOT_FAILED", reason)
            record = record.revert(reason)
            self._write_boot_record(record)
            self._reverted_this_boot = True
            self._dtc("REVERTED", reason)
        running, problem, spent = self._secure_boot(record.active, test=False)
        duration += spent
        if running is None:
            self._dtc("SECURE_BOOT_FAILED", f"confirmed bank {record.active}: {problem}")
            other = other_bank(record.active)
            # MCUboot never boots a rejected image again: recovery mode instead
            fallback: _Running | None = None
            problem2 = f"bank {other} holds a rejected image"
            if other != record.rejected:
                fallback, problem2, spent2 = self._secure_boot(other, test=False)
                duration += spent2
            if fallback is None:
                self._dtc("RECOVERY_MODE", f"no bootable bank ({problem}; {problem2})")
                return None, duration, None
            self._write_boot_record(replace(record, active=fallback.bank))
            self._dtc("BOOT_FALLBACK", f"bank {record.active} unbootable, booted {fallback.bank}")
            running = fallback
        # MCUboot raises the hardware counter when a confirmed image boots (heals a
        # power cut between confirm and the OTP write).
        if running.info.security_counter is not None:
            self.otp.raise_security_counter(running.info.security_counter)
        return running, duration, None

    def _bank_reader(self, bank: str) -> tuple[Callable[[int, int], bytes], int]:
        view = self.flash.view(bank_region(bank))

        def read(offset: int, length: int) -> bytes:
            return bytes(view[offset : offset + length])

        return read, len(view)

    def _check_bank(self, bank: str) -> tuple[ImageInfo | None, int, str]:
        """Secure-boot check of one bank: (info, hashed size, problem)."""
        read, size = self._bank_reader(bank)
        try:
            info = verify_image_stream(
                read, size, key_hashes=[self.otp.image_key_hash], public_keys=self._image_keys
            )
            hashed_size = parse_image_stream(read, size).hashed_size
        except PackageError as exc:
            return None, 0, f"{exc.code}: {exc.message}"
        counter = self.otp.security_counter
        if info.security_counter is None or info.security_counter < counter:
            return (
                None,
                0,
                (
                    f"{AntiRollbackError.code}: image security counter {info.security_counter}"
                    f" below the OTP counter {counter}"
                ),
            )
        if info.hardware is not None and not info.hardware.accepts(
            self.spec.model, self.spec.hw_revision
        ):
            return None, 0, f"{IncompatibleHardwareError.code}: image is for {info.hardware}"
        return info, hashed_size, ""

    def _secure_boot(self, bank: str, *, test: bool) -> tuple[_Running | None, str, float]:
        info, hashed_size, problem = self._check_bank(bank)
        t = self.spec.timing
        if info is None:
            return None, problem, t.signature_verify_s
        spent = hashed_size / t.hash_rate_bytes_per_s + t.signature_verify_s
        view = self.flash.view(bank_region(bank))
        image = parse_image_stream(*self._bank_reader(bank))
        start = image.header_size
        descriptor = find_app_descriptor(view[start : start + image.payload_size])
        return _Running(bank, test, info, hashed_size, descriptor), "", spent

    # ------------------------------------------------------------------ application

    def _app_tick(self) -> bool:
        """Periodic firmware work; True if it started a reboot."""
        running = self._running
        assert running is not None
        now = self.clock.monotonic()
        if running.test and now - running.started_at >= self.spec.watchdog_window_s:
            log.warning("watchdog: test image on bank %s was not confirmed", running.bank)
            self._start_boot("watchdog")
            return True
        if now >= self._next_integrity_at:
            self._next_integrity_at = now + self.spec.integrity_period_s
            self._integrity_check(running)
        self._update_protection()
        return False

    def _integrity_check(self, running: _Running) -> None:
        region = bank_region(running.bank)
        if running.behaviour == "integrity-fault" and not self._integrity_fault:
            # The marker's stray write: one code byte in the running bank changes.
            self.flash.corrupt(region, min(running.hashed_size - 1, 0x800), 0x10)
        self.clock.sleep(running.hashed_size / self.spec.timing.hash_rate_bytes_per_s)
        digest = hashlib.sha256(self.flash.view(region)[: running.hashed_size]).digest()
        if digest != running.info.digest and not self._integrity_fault:
            self._integrity_fault = True
            self._dtc(
                "FW_INTEGRITY",
                f"bank {running.bank} SHA-256 {digest.hex()[:16]}… differs from the booted"
                f" {running.info.digest.hex()[:16]}…",
                active=True,
            )

    def _cell_measured_v(self, cell: int) -> float:
        raw = self.battery.cell_voltage_adc_v(cell, self._contactors_closed)
        cal = self._calibration
        return raw * cal.cell_gain[cell] + cal.cell_offset_v[cell]

    def _temperature_measured_c(self, sensor: int) -> float:
        offsets = self._calibration.ntc_offset_c
        return self.battery.temperature_raw_c(sensor) + (
            offsets[sensor] if sensor < len(offsets) else 0.0
        )

    def _supply_v(self) -> float:
        return self.battery.supply_voltage_v(self.clock.monotonic())

    def _protection_faults(self) -> set[str]:
        cfg = self._config
        faults = set(self.battery.state.forced_faults)
        cells = [self._cell_measured_v(i) for i in range(self.battery.cells)]
        temps = [self._temperature_measured_c(i) for i in range(self.spec.ntc_count)]
        if max(cells) > cfg.cell_overvoltage_v:
            faults.add("cell_overvoltage")
        if min(cells) < cfg.cell_undervoltage_v:
            faults.add("cell_undervoltage")
        lo, hi = NTC_PLAUSIBLE_C
        plausible = [t for t in temps if lo <= t <= hi]
        if len(plausible) != len(temps):
            faults.add("ntc_fault")
        if plausible and max(plausible) > cfg.overtemperature_c:
            faults.add("overtemperature")
        if plausible and min(plausible) < cfg.undertemperature_c:
            faults.add("undertemperature")
        if abs(self.battery.state.pack_current_a) > cfg.overcurrent_a:
            faults.add("overcurrent")
        if self._integrity_fault:
            faults.add("firmware_integrity")
        return faults

    def _update_protection(self) -> None:
        faults = self._protection_faults()
        for name in sorted(faults - self._active_faults):
            if name in DTC_CODES:
                self._dtc(name, f"{name} raised; contactors opened", active=True)
        self._active_faults = faults
        passed = self._self_test is not None and self._self_test.passed
        self._contactors_closed = passed and not faults

    def _run_self_test(self, running: _Running) -> SelfTestResult:
        checks: list[SelfTestCheck] = []
        n = self.battery.cells
        worst_pct, worst_cell = 0.0, 0
        for i in range(n):
            reference = self.battery.cell_voltage_true_v(i, False)
            err = abs(self._cell_measured_v(i) - reference) / reference * 100.0
            if err > worst_pct:
                worst_pct, worst_cell = err, i
        checks.append(
            SelfTestCheck(
                "cell_voltage_calibration",
                worst_pct <= CELL_CAL_TOLERANCE_PCT,
                f"{worst_pct:.3f} %",
                f"±{CELL_CAL_TOLERANCE_PCT} %",
                f"worst cell {worst_cell + 1} of {n}",
            )
        )
        temps = [self._temperature_measured_c(i) for i in range(self.spec.ntc_count)]
        lo, hi = NTC_PLAUSIBLE_C
        bad = [i + 1 for i, t in enumerate(temps) if not lo <= t <= hi]
        spread = max(temps) - min(temps)
        ok = not bad and spread <= NTC_MAX_SPREAD_C
        checks.append(
            SelfTestCheck(
                "temperature_sensors",
                ok,
                ", ".join(f"{t:.1f}" for t in temps) + " °C",
                f"{lo:g}..{hi:g} °C, spread ≤ {NTC_MAX_SPREAD_C:g} °C",
                f"implausible sensors {bad}" if bad else f"spread {spread:.1f} °C",
            )
        )
        cfg = self._config
        for name, rate, allowed, unit in (
            ("can", cfg.can_bitrate_bps, CAN_BITRATES_BPS, "bit/s"),
            ("rs485", cfg.rs485_baud, RS485_BAUDS, "baud"),
        ):
            fault = name in self.battery.state.interface_faults
            checks.append(
                SelfTestCheck(
                    f"{name}_interface",
                    rate in allowed and not fault,
                    f"{rate} {unit}",
                    "configured rate, loopback ok",
                    "loopback failed at the configured rate" if fault else "loopback ok",
                )
            )
        dead: list[int] = []
        drops: list[float] = []
        for i in range(n):
            before = self._cell_measured_v(i)
            self.battery.bleeding = [j == i for j in range(n)]
            after = self._cell_measured_v(i)
            self.battery.bleeding = [False] * n
            drops.append(before - after)
            if before - after < BALANCE_MIN_DROP_V:
                dead.append(i + 1)
        checks.append(
            SelfTestCheck(
                "balancing",
                not dead,
                f"min drop {min(drops) * 1000:.1f} mV",
                f"≥ {BALANCE_MIN_DROP_V * 1000:.0f} mV per cell",
                f"no effect on cells {dead}" if dead else f"all {n} bleed switches work",
            )
        )
        now = self.clock.monotonic()
        samples = [self.battery.supply_voltage_v(now + k * 0.00137) for k in range(16)]
        slo, shi = SUPPLY_RANGE_V
        checks.append(
            SelfTestCheck(
                "supply_voltage",
                slo <= min(samples) and max(samples) <= shi,
                f"{min(samples):.2f}..{max(samples):.2f} V",
                f"{slo:g}..{shi:g} V",
            )
        )
        faults = self._protection_faults()
        checks.append(
            SelfTestCheck(
                "protection",
                not faults,
                ", ".join(sorted(faults)) or "none",
                "no active protection fault",
            )
        )
        if running.behaviour == "fail-selftest":
            checks.append(
                SelfTestCheck(
                    "application", False, "", "", "firmware self-check failed (behaviour marker)"
                )
            )
        return SelfTestResult(
            passed=all(c.passed for c in checks), checks=tuple(checks), version=running.version
        )

    # ------------------------------------------------------------------ NVM config

    def _load_nvm_config(self) -> tuple[DeviceConfig, Calibration]:
        """Read both NVM areas; an unreadable record falls back to defaults (DTC at boot)."""
        self._nvm_defaulted = []
        config: DeviceConfig | None = None
        cal: Calibration | None = None
        try:
            raw = self._journal(fl.CONFIG).read()
            config = DeviceConfig.from_dict(decode_record("config", raw)) if raw else None
        except (ConfigSchemaError, ConfigValueError):
            config = None
        try:
            raw = self._journal(fl.CALIBRATION).read()
            cal = Calibration.from_dict(decode_record("calibration", raw)) if raw else None
        except (ConfigSchemaError, ConfigValueError):
            cal = None
        if config is None:
            self._nvm_defaulted.append("config")
        if cal is None:
            self._nvm_defaulted.append("calibration")
        return config or DeviceConfig(), cal or Calibration.identity(
            self.spec.cell_count, self.spec.ntc_count
        )

    # ------------------------------------------------------------------ public: status

    @_api
    def poll(self) -> None:
        """Let the firmware catch up with the clock (servers call this periodically)."""

    def wait_boot(self, timeout_s: float = 60.0) -> BootStatus:
        """Advance (sleeping on the clock) until the boot sequence has finished."""
        deadline = self.clock.monotonic() + timeout_s
        while True:
            with self._lock:
                self._catch_up()
                if self._seq is None:
                    return self._boot_status()
                wait = max(0.0, self._seq_due - self.clock.monotonic())
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise DeviceNotRunningError(f"BMS still {self._run_state} after {timeout_s:g} s")
            self.clock.sleep(min(wait, remaining) if wait > 0 else min(0.001, remaining))

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of device time pass, handling every event on the way."""
        end = self.clock.monotonic() + seconds
        while True:
            with self._lock:
                self._catch_up()
                nxt = self._next_event_in()
            left = end - self.clock.monotonic()
            if left <= 0:
                return
            step = left if nxt is None else min(left, max(nxt, 1e-6))
            self.clock.sleep(step)

    @property
    def run_state(self) -> RunState:
        return "off" if self._dead else self._run_state

    @_api
    def boot_status(self) -> BootStatus:
        return self._boot_status()

    def _boot_status(self) -> BootStatus:
        record = self._boot_record()
        running = self._running
        image_state: Literal["confirmed", "test", "reverted", "none"]
        if running is None:
            image_state = "none"
        elif running.test:
            image_state = "test"
        elif self._reverted_this_boot:
            image_state = "reverted"
        else:
            image_state = "confirmed"
        return BootStatus(
            run_state=self._run_state,
            active_bank=running.bank if running else "",
            running_version=running.version if running else "",
            image_state=image_state,
            boot_count=record.attempts,
            security_counter=self.otp.security_counter,
            last_revert_reason=record.last_revert_reason,
        )

    @_api
    def boot_record(self) -> BootRecord:
        """The raw bootloader record (active/pending bank, attempts, revert reason)."""
        return self._boot_record()

    def _require_app(self) -> _Running:
        if self._run_state != "application" or self._running is None:
            raise DeviceNotRunningError(f"BMS is {self._run_state}, the application is not running")
        return self._running

    @_api
    def identity(self) -> DeviceIdentity:
        running = self._running
        return DeviceIdentity(
            vendor=self.spec.vendor,
            model=self.spec.model,
            hw_revision=self.spec.hw_revision,
            serial=self.serial,
            bootloader_version=self.spec.bootloader_version,
            app_version=running.version if running else "",
            security_counter=self.otp.security_counter,
            active_bank=running.bank if running else "",
            # the bootloader's one image key, once fused (MCUboot: its KEYHASH)
            image_key_hashes=(self.otp.image_key_hash.hex(),) if self.otp.locked else (),
            flash_layout=FlashLayout(
                self.spec.flash.bank_size, self.spec.flash.region(BANK_A).sector_size, 2
            ),
        )

    @_api
    def telemetry(self) -> Telemetry:
        self._require_app()
        n = self.battery.cells
        cells = tuple(round(self._cell_measured_v(i), 4) for i in range(n))
        temps = tuple(round(self._temperature_measured_c(i), 2) for i in range(self.spec.ntc_count))
        return Telemetry(
            soc_pct=round(self.battery.soc_pct(), 2),
            pack_voltage_v=round(sum(cells), 3),
            # the model counts discharge positive; the BMS reports + = charging
            pack_current_a=-self.battery.effective_current_a(self._contactors_closed),
            cell_voltages_v=cells,
            temperatures_c=temps,
            supply_voltage_v=round(self._supply_v(), 3),
            faults=tuple(sorted(self._active_faults)),
            contactors_closed=self._contactors_closed,
        )

    @_api
    def balancing_state(self) -> tuple[bool, ...]:
        """Which bleed switches the firmware has on."""
        self._require_app()
        return tuple(self.battery.bleeding)

    @property
    def contactors_closed(self) -> bool:
        return self._contactors_closed and not self._dead

    @_api
    def self_test(self) -> SelfTestResult:
        """The structured record of the self-test run after the last boot."""
        if self._self_test is None:
            raise DeviceNotRunningError("no self-test has completed since the last reset")
        return self._self_test

    @_api
    def dtcs(self) -> tuple[DtcRecord, ...]:
        return tuple(read_dtcs(self._journal(fl.DTC)))

    @_api
    def clear_dtcs(self) -> None:
        self._require_app()
        self._journal(fl.DTC).write(b"[]")

    @_api
    def bank_info(self, bank: str) -> BankInfo:
        if bank not in ("A", "B"):
            raise WrongStateError(f"bank {bank!r} is not A or B")
        region = bank_region(bank)
        if self.flash.is_erased(region, 0, 32):
            return BankInfo(bank, False, "", 0, 0, "empty")
        info, _, problem = self._check_bank(bank)
        record = self._boot_record()
        running = self._running
        if info is None:
            return BankInfo(bank, False, "", 0, 0, "invalid", problem)
        if running is not None and running.bank == bank:
            state = "running"
        elif record.pending == bank:
            state = "test"
        elif record.rejected == bank:
            state = "rejected"
        elif record.active == bank:
            state = "confirmed"
        else:
            state = "fallback"
        image = parse_image_stream(*self._bank_reader(bank))
        view = self.flash.view(region)
        desc = find_app_descriptor(view[image.header_size : image.header_size + image.payload_size])
        version = desc.version if desc else str(info.version)
        return BankInfo(bank, True, version, info.security_counter or 0, info.total_size, state)

    @_api
    def bank_image(self, bank: str) -> McubootImage | None:
        """The MCUboot header and TLVs of a bank's image, parsed but not verified.

        What an MCUmgr image list shows (version, SHA256 TLV); None for an erased
        bank or bytes that are no MCUboot image."""
        if bank not in ("A", "B"):
            raise WrongStateError(f"bank {bank!r} is not A or B")
        if self.flash.is_erased(bank_region(bank), 0, 32):
            return None
        try:
            return parse_image_stream(*self._bank_reader(bank))
        except PackageError:
            return None

    # ------------------------------------------------------------------ public: config

    @_api
    def config(self) -> DeviceConfig:
        return self._config

    @_api
    def calibration(self) -> Calibration:
        return self._calibration

    @_api
    def write_config(self, config: DeviceConfig) -> None:
        self._require_app()
        if config != self._config:
            self._journal(fl.CONFIG).write(encode_record("config", config.to_dict()))
            self._config = config
            self.battery.set_capacity(config.capacity_ah)

    @_api
    def write_calibration(self, calibration: Calibration) -> None:
        self._require_app()
        if (
            len(calibration.cell_gain) != self.spec.cell_count
            or len(calibration.ntc_offset_c) != self.spec.ntc_count
        ):
            raise ConfigSchemaError(
                f"calibration must have {self.spec.cell_count} cells and"
                f" {self.spec.ntc_count} NTC offsets"
            )
        if calibration != self._calibration:
            self._journal(fl.CALIBRATION).write(encode_record("calibration", calibration.to_dict()))
            self._calibration = calibration

    @_api
    def config_snapshot(self) -> ConfigSnapshot:
        config = self._config.to_dict()
        calibration = self._calibration.to_dict()
        return ConfigSnapshot(
            schema_version=CONFIG_SCHEMA_VERSION,
            config=config,
            calibration=calibration,
            checksum=snapshot_checksum(config, calibration),
        )

    @_api
    def restore_snapshot(self, snapshot: ConfigSnapshot) -> None:
        """Write back a backup (checksum and schema checked first; nothing written if bad)."""
        config, calibration = check_snapshot(
            snapshot.schema_version, snapshot.config, snapshot.calibration, snapshot.checksum
        )
        self.write_config(config)
        self.write_calibration(calibration)

    # ------------------------------------------------------------------ public: update

    def _inactive_bank(self) -> str:
        if self._running is not None:
            return other_bank(self._running.bank)
        return other_bank(self._boot_record().active)

    def _require_updatable(self) -> None:
        if self._run_state not in ("application", "bootloader"):
            raise DeviceNotRunningError(f"BMS is {self._run_state}")
        if self._running is not None and self._running.test:
            raise UpdateInProgressError(
                f"bank {self._running.bank} runs a test image; confirm or roll back first"
            )

    def _staged(self) -> StagedUpdate | None:
        raw = self._journal(fl.STAGING).read()
        staged = StagedUpdate.decode(raw) if raw else None
        if staged is None or staged.bank != self._inactive_bank():
            return None
        return staged

    def _require_staged(self) -> StagedUpdate:
        self._require_updatable()
        staged = self._staged()
        if staged is None:
            raise NoStagedUpdateError("no release header accepted for the inactive bank")
        return staged

    def device_facts(
        self, channel: Literal["wired", "ota"] = "wired", *, downgrade_authorised: bool = False
    ) -> DeviceFacts:
        return DeviceFacts(
            model=self.spec.model,
            hw_revision=self.spec.hw_revision,
            bootloader_version=self.spec.bootloader_version,
            security_counter=self.otp.security_counter,
            channel=channel,
            running_version=self._running.version if self._running is not None else "",
            downgrade_authorised=downgrade_authorised,
        )

    @_api
    def begin_update(
        self,
        header: bytes,
        *,
        channel: Literal["wired", "ota"] = "wired",
        downgrade_authorised: bool = False,
    ) -> TransferStatus:
        """Verify a release header (root key hash in OTP, device facts) and stage it.

        Trust and policy failures raise the package module's errors unchanged.
        ``downgrade_authorised``: the request said a person authorised a downgrade
        (an OTA header of a lower version is then taken; kept in the staging record).
        Sending the same header again keeps what was already transferred (resume).
        """
        self._require_updatable()
        if channel not in ("wired", "ota"):
            raise WrongStateError(f"unknown channel {channel!r}")
        trust = TrustAnchors.from_key_hashes([self.otp.root_key_hash])
        facts = self.device_facts(channel, downgrade_authorised=downgrade_authorised)
        manifest = verify_header(header, trust, facts, now=self.clock.now())
        component = _app_component(manifest)
        if component.image_size > self.spec.flash.bank_size:
            raise WriteOutOfRangeError(
                f"image of {component.image_size} bytes does not fit the"
                f" {self.spec.flash.bank_size}-byte bank"
            )
        bank = self._inactive_bank()
        staged = self._staged()
        if (
            staged is not None
            and staged.header == header
            and (staged.channel, staged.downgrade_authorised) == (channel, downgrade_authorised)
        ):
            log.info("release %s staged again: resuming", manifest.version)
            return self._transfer_status(staged)
        if downgrade_authorised:
            log.warning(
                "release %s staged over %s with the authorised-downgrade flag (runs %s)",
                manifest.version,
                channel,
                self._running.version if self._running is not None else "no application",
            )
        staged = StagedUpdate(
            bank=bank,
            size=component.image_size,
            sha256=component.image_sha256,
            version=manifest.version,
            security_counter=manifest.security_counter,
            channel=channel,
            erased=False,
            header=bytes(header),
            downgrade_authorised=downgrade_authorised,
        )
        self._journal(fl.STAGING).write(staged.encode())
        self._written = None
        self._verified = None
        log.info("staged release %s for bank %s (%d bytes)", manifest.version, bank, staged.size)
        return self._transfer_status(staged)

    @_api
    def begin_image_upload(self, size: int, sha256: bytes, version: str) -> TransferStatus:
        """Stage a bare MCUboot image upload (MCUmgr SMP: no release header).

        What a stock MCUmgr device knows at the first chunk: the image's length,
        its SHA-256 and the version in its MCUboot header. The image itself is
        checked by :meth:`verify_inactive` (signature against the fused key,
        security counter, hardware) as for a release. Starting the same upload
        again (same size and SHA-256) keeps what was already written (resume).
        """
        self._require_updatable()
        if size > self.spec.flash.bank_size:
            raise WriteOutOfRangeError(
                f"image of {size} bytes does not fit the {self.spec.flash.bank_size}-byte bank"
            )
        staged = self._staged()
        if (
            staged is not None
            and not staged.header
            and (staged.size, staged.sha256)
            == (
                size,
                sha256,
            )
        ):
            return self._transfer_status(staged)
        staged = StagedUpdate(
            bank=self._inactive_bank(),
            size=size,
            sha256=bytes(sha256),
            version=version,
            security_counter=-1,  # the image's own SEC_CNT (no manifest names one)
            channel="wired",
            erased=False,
            header=b"",
        )
        self._journal(fl.STAGING).write(staged.encode())
        self._written = None
        self._verified = None
        log.info("staged a %d-byte image upload for bank %s", size, staged.bank)
        return self._transfer_status(staged)

    @_api
    def erase_unused_bank(self) -> None:
        """MCUmgr image erase: forget any staged update and erase the bank that does not run.

        Refused while that bank waits for its test boot (activated, not yet reset)."""
        self._require_updatable()
        bank = self._inactive_bank()
        if self._boot_record().pending == bank:
            raise WrongStateError(f"bank {bank} is pending a test boot: reset or roll back first")
        if self._journal(fl.STAGING).read() not in (None, StagedUpdate.cleared()):
            self._journal(fl.STAGING).write(StagedUpdate.cleared())
        region = bank_region(bank)
        r = self.spec.flash.region(region)
        for index in range(r.sector_count):
            if not self.flash.is_erased(region, index * r.sector_size, r.sector_size):
                self.flash.erase_sector(region, index)
        self._written = None
        self._verified = None

    @_api
    def abort_update(self) -> None:
        """Forget the staged update (the inactive bank keeps whatever was written)."""
        self._require_updatable()
        if self._journal(fl.STAGING).read() not in (None, StagedUpdate.cleared()):
            self._journal(fl.STAGING).write(StagedUpdate.cleared())
        self._written = None
        self._verified = None

    @_api
    def erase_inactive(self) -> None:
        """Erase the inactive bank (sector by sector; blank sectors are skipped)."""
        staged = self._require_staged()
        region = bank_region(staged.bank)
        r = self.spec.flash.region(region)
        for index in range(r.sector_count):
            if not self.flash.is_erased(region, index * r.sector_size, r.sector_size):
                self.flash.erase_sector(region, index)
        self._written = bytearray(staged.size)
        self._verified = None
        if not staged.erased:
            self._journal(fl.STAGING).write(replace(staged, erased=True).encode())

    def _written_map(self, staged: StagedUpdate) -> bytearray:
        if self._written is None or len(self._written) != staged.size:
            self._written = self._reconstruct_written(staged)
        return self._written

    def _reconstruct_written(self, staged: StagedUpdate) -> bytearray:
        """After a reboot: blocks holding data count as written, except the last one before
        each gap and the image's final block, either of which may be a partially programmed
        block from the interrupted transfer (nothing after them proves they were finished).
        Re-sending such a block is safe: a cut program leaves a correct prefix."""
        written = bytearray(staged.size)
        if not staged.erased:
            return written
        bs = self.spec.transfer_block_size
        blocks = -(-staged.size // bs)
        region = bank_region(staged.bank)
        has_data = [
            not self.flash.is_erased(region, b * bs, min(bs, staged.size - b * bs))
            for b in range(blocks)
        ]
        for b in range(blocks):
            trusted = has_data[b] and b + 1 < blocks and has_data[b + 1]
            if trusted:
                end = min(staged.size, (b + 1) * bs)
                written[b * bs : end] = b"\x01" * (end - b * bs)
        return written

    @_api
    def write_inactive(self, offset: int, data: bytes) -> int:
        """Program ``data`` at ``offset`` of the staged image; any order. Returns the end offset."""
        staged = self._require_staged()
        if not staged.erased:
            raise EraseNeededError("erase the inactive bank before writing (erase_inactive)")
        if offset < 0 or offset + len(data) > staged.size:
            raise WriteOutOfRangeError(
                f"write {offset}+{len(data)} outside the image size {staged.size}"
            )
        written = self._written_map(staged)
        self.flash.program(bank_region(staged.bank), offset, bytes(data))
        written[offset : offset + len(data)] = b"\x01" * len(data)
        self._verified = None
        return offset + len(data)

    @_api
    def staged_size(self) -> int | None:
        """The size of the update staged for the inactive bank, or None (no map scan)."""
        staged = self._staged() if self._run_state in ("application", "bootloader") else None
        return None if staged is None else staged.size

    @_api
    def transfer_status(self) -> TransferStatus:
        staged = self._staged() if self._run_state in ("application", "bootloader") else None
        if staged is None:
            return TransferStatus(
                False, "", 0, False, False, self.spec.transfer_block_size, (), 0, ()
            )
        return self._transfer_status(staged)

    def _transfer_status(self, staged: StagedUpdate) -> TransferStatus:
        written = self._written_map(staged)
        bs = self.spec.transfer_block_size
        blocks = tuple(
            written.find(0, b, min(b + bs, staged.size)) < 0 for b in range(0, staged.size, bs)
        )
        missing: list[tuple[int, int]] = []
        pos = written.find(0)
        contiguous = staged.size if pos < 0 else pos
        while pos >= 0:
            end = written.find(1, pos)
            end = staged.size if end < 0 else end
            missing.append((pos, end - pos))
            pos = written.find(0, end)
        verified = self._verified is not None and self._verified[0] == staged.bank
        return TransferStatus(
            staged=True,
            bank=staged.bank,
            total_size=staged.size,
            erased=staged.erased,
            verified=verified,
            block_size=bs,
            blocks_written=blocks,
            contiguous_bytes=contiguous,
            missing_ranges=tuple(missing),
            version=staged.version,
            security_counter=staged.security_counter,
            sha256=staged.sha256,
        )

    @_api
    def block_crcs(self) -> tuple[int, ...]:
        """CRC-32 of each transfer block as flash holds it (for broadcast repair)."""
        staged = self._require_staged()
        view = self.flash.view(bank_region(staged.bank))
        bs = self.spec.transfer_block_size
        return tuple(
            zlib.crc32(view[b : min(b + bs, staged.size)]) for b in range(0, staged.size, bs)
        )

    @_api
    def verify_inactive(self) -> ImageInfo:
        """Check the written image: SHA-256/size against the manifest, then MCUboot
        signature against the fused image-key hash, security counter and hardware."""
        staged = self._require_staged()
        if not staged.erased:
            raise NotVerifiedError("nothing was written: the bank was not erased for this update")
        region = bank_region(staged.bank)
        self.clock.sleep(staged.size / self.spec.timing.hash_rate_bytes_per_s)
        digest = hashlib.sha256(self.flash.view(region)[: staged.size]).digest()
        if digest != staged.sha256:
            status = self._transfer_status(staged)
            raise VerifyFailedError(
                f"bank {staged.bank} SHA-256 {digest.hex()[:16]}… differs from the manifest's"
                f" {staged.sha256.hex()[:16]}…; missing ranges {list(status.missing_ranges)[:4]}"
            )
        read, _ = self._bank_reader(staged.bank)
        info = verify_image_stream(
            read, staged.size, key_hashes=[self.otp.image_key_hash], public_keys=self._image_keys
        )
        self.clock.sleep(self.spec.timing.signature_verify_s)
        if staged.security_counter >= 0 and info.security_counter != staged.security_counter:
            raise ImageManifestMismatchError(
                f"image security counter {info.security_counter}, manifest says"
                f" {staged.security_counter}"
            )
        if info.security_counter is None or info.security_counter < self.otp.security_counter:
            raise AntiRollbackError(
                f"image security counter {info.security_counter} is below the device's"
                f" {self.otp.security_counter}"
            )
        if info.hardware is not None and not info.hardware.accepts(
            self.spec.model, self.spec.hw_revision
        ):
            raise IncompatibleHardwareError(
                f"image is for {info.hardware.model} rev {'/'.join(info.hardware.revisions)},"
                f" device is {self.spec.model} rev {self.spec.hw_revision}"
            )
        self._verified = (staged.bank, info)
        log.info("bank %s verified: %s", staged.bank, staged.version)
        return info

    @_api
    def activate(self) -> None:
        """Mark the verified inactive bank for a test boot at the next reset."""
        staged = self._require_staged()
        if self._verified is None or self._verified[0] != staged.bank:
            raise NotVerifiedError("verify the inactive bank before activating it")
        record = self._boot_record()
        # a newly verified upgrade request: the only thing that lifts a rejection
        self._write_boot_record(
            replace(record, pending=staged.bank, attempts=0, revert_requested="", rejected=None)
        )
        self._journal(fl.STAGING).write(StagedUpdate.cleared())
        self._verified = None
        self._written = None
        log.info("bank %s activated for a test boot", staged.bank)

    @_api
    def reset(self) -> None:
        """ECU reset: contactors open now; the boot runs as the clock advances."""
        if self._seq is not None:
            raise DeviceNotRunningError("the BMS is already resetting")
        self._save_board()
        self._start_boot("software")
        self._advance()

    @_api
    def confirm(self) -> None:
        """Make the running test image permanent and raise the OTP security counter."""
        if self._run_state == "bootloader":
            raise NotConfirmableError("no application image runs (bootloader recovery mode)")
        running = self._require_app()
        if not running.test:
            record = self._boot_record()
            if record.rejected is not None:
                # the tester means the image it sent: that one was reverted, not confirmed
                raise NotConfirmableError(
                    f"nothing to confirm: the test image on bank {record.rejected} was"
                    f" rejected ({record.last_revert_reason}); bank {running.bank} runs its"
                    f" confirmed {running.version}. Send the update again to retry it"
                )
            return  # already confirmed: a repeated confirm (lost response) is harmless
        if self._self_test is None or not self._self_test.passed:
            raise NotConfirmableError(
                "the running test image has not passed its self-test in this boot"
            )
        if running.behaviour == "never-confirm":
            log.warning("firmware acknowledged confirm but did not write the image-ok flag")
            return
        record = self._boot_record()
        self._write_boot_record(
            replace(record, active=running.bank, pending=None, attempts=0, revert_requested="")
        )
        running.test = False
        if running.info.security_counter is not None:
            self.otp.raise_security_counter(running.info.security_counter)
        log.info("bank %s %s confirmed", running.bank, running.version)

    @_api
    def rollback(self) -> None:
        """Go back to the other bank: a test image reverts; a confirmed one swaps if allowed.

        Then reset (the boot runs as the clock advances)."""
        if self._seq is not None:
            raise DeviceNotRunningError("the BMS is resetting")
        running = self._require_app()
        record = self._boot_record()
        if running.test:
            self._write_boot_record(record.revert("rollback requested"))
            self._dtc("ROLLBACK_REQUESTED", f"test image on bank {running.bank} rolled back")
        else:
            other = other_bank(running.bank)
            if other == record.rejected:
                raise RollbackBlockedError(
                    f"nothing to roll back to: bank {other} holds the image the bootloader"
                    f" rejected ({record.last_revert_reason}); bank {running.bank} keeps"
                    f" running its confirmed {running.version}"
                )
            info, _, problem = self._check_bank(other)
            if info is None:
                raise RollbackBlockedError(f"bank {other} holds no bootable image ({problem})")
            self._write_boot_record(
                replace(
                    record,
                    active=other,
                    pending=None,
                    attempts=0,
                    last_revert_reason=f"rollback requested from bank {running.bank}",
                    reverts=record.reverts + 1,
                )
            )
            self._dtc("ROLLBACK_REQUESTED", f"confirmed bank {running.bank} -> {other}")
        self._save_board()
        self._start_boot("software")
        self._advance()

    # ------------------------------------------------------------------ for protocol servers
    # (the rest of bmsfw.sim.interface.BmsDevice is the API above)

    def responsive(self) -> bool:
        return not self._dead and self._run_state in ("application", "bootloader")

    def now(self) -> dt.datetime:
        return self.clock.now()

    def root_key_hash(self) -> bytes:
        return self.otp.root_key_hash

    def image_digest(self) -> bytes:
        from bmsfw.sim._stream_decode import active_image_digest

        return active_image_digest(self)

    def check_release(self, header: bytes) -> None:
        from bmsfw.sim._stream_decode import check_release

        check_release(self, header)

    def staged_component(self) -> Component | None:
        from bmsfw.sim._stream_decode import staged_component

        return staged_component(self) if self.responsive() else None

    def bank_blank(self) -> bool:
        from bmsfw.sim._stream_decode import staged_bank_blank

        return staged_bank_blank(self)

    def begin_encoded(self) -> EncodedTransfer:
        from bmsfw.sim._stream_decode import EncodedTransfer

        return EncodedTransfer(self)

    @property
    def flash_op_count(self) -> int:
        return self.flash.op_count

    def __repr__(self) -> str:
        return f"VirtualBms({self.serial!r}, {self.state_dir}, {self.run_state})"


def _app_component(manifest: Manifest) -> Any:
    for component in manifest.components:
        if component.name == "app":
            return component
    names = [c.name for c in manifest.components]
    raise InvalidManifestError(f"release has no 'app' component (components: {names})")


class FaultInjector:
    """Knobs for tests and ``bmsfw sim``: every change is saved to board.json at once."""

    def __init__(self, device: VirtualBms) -> None:
        self._device = device

    def _change(self, fn: Callable[[BoardState], None]) -> None:
        dev = self._device
        with dev._lock:
            dev._check_alive()
            dev._advance()
            fn(dev.battery.state)
            dev.flash.slow_factor = dev.battery.state.slow_flash_factor
            dev._save_board()
            if dev._run_state == "application" and dev._seq is None:
                dev._update_protection()

    def set_soc(self, soc_pct: float) -> None:
        self._change(lambda s: self._device.battery.set_soc_pct(soc_pct))

    def set_temperature(self, sensor: int, temperature_c: float) -> None:
        def fn(s: BoardState) -> None:
            s.temperatures_c[sensor] = float(temperature_c)

        self._check_sensor(sensor)
        self._change(fn)

    def set_temperatures(self, temperature_c: float) -> None:
        def fn(s: BoardState) -> None:
            s.temperatures_c = [float(temperature_c)] * len(s.temperatures_c)

        self._change(fn)

    def set_pack_current(self, current_a: float) -> None:
        """The current the pack's load or charger draws: + = charging (as telemetry reports
        it), - = discharging; it flows only while the contactors are closed."""

        def fn(s: BoardState) -> None:
            s.pack_current_a = -float(current_a)  # the model counts discharge positive

        self._change(fn)

    def set_supply(
        self, *, sag_v: float = 0.0, ripple_v: float = 0.0, ripple_hz: float = 100.0
    ) -> None:
        def fn(s: BoardState) -> None:
            s.supply_sag_v, s.supply_ripple_v, s.supply_ripple_hz = sag_v, ripple_v, ripple_hz

        self._change(fn)

    def set_protection_fault(self, name: str, active: bool = True) -> None:
        if name not in PROTECTION_FAULTS:
            raise ValueError(f"unknown protection fault {name!r}; known: {PROTECTION_FAULTS}")

        def fn(s: BoardState) -> None:
            faults = set(s.forced_faults)
            (faults.add if active else faults.discard)(name)
            s.forced_faults = sorted(faults)

        self._change(fn)

    def _check_sensor(self, sensor: int) -> None:
        if not 0 <= sensor < self._device.spec.ntc_count:
            raise ValueError(f"NTC {sensor} does not exist (0..{self._device.spec.ntc_count - 1})")

    def _check_cell(self, cell: int) -> None:
        if not 0 <= cell < self._device.spec.cell_count:
            raise ValueError(f"cell {cell} does not exist (0..{self._device.spec.cell_count - 1})")

    def ntc(self, sensor: int, state: Literal["ok", "open", "short"]) -> None:
        self._check_sensor(sensor)

        def fn(s: BoardState) -> None:
            s.ntc_open = [i for i in s.ntc_open if i != sensor] + (
                [sensor] if state == "open" else []
            )
            s.ntc_short = [i for i in s.ntc_short if i != sensor] + (
                [sensor] if state == "short" else []
            )

        self._change(fn)

    def adc_gain_error(self, cell: int, relative: float) -> None:
        """E.g. ``0.01`` makes cell ``cell`` read 1 % high (calibration no longer matches)."""
        self._check_cell(cell)

        def fn(s: BoardState) -> None:
            if relative:
                s.adc_gain_error[cell] = float(relative)
            else:
                s.adc_gain_error.pop(cell, None)

        self._change(fn)

    def dead_balancing_channel(self, cell: int, dead: bool = True) -> None:
        self._check_cell(cell)

        def fn(s: BoardState) -> None:
            s.dead_balancing = sorted(
                {*s.dead_balancing, cell} if dead else set(s.dead_balancing) - {cell}
            )

        self._change(fn)

    def interface_fault(self, interface: Literal["can", "rs485"], active: bool = True) -> None:
        def fn(s: BoardState) -> None:
            faults = set(s.interface_faults)
            (faults.add if active else faults.discard)(interface)
            s.interface_faults = sorted(faults)

        self._change(fn)

    def slow_flash(self, factor: float) -> None:
        if factor < 1.0:
            raise ValueError("slow flash factor must be >= 1")

        def fn(s: BoardState) -> None:
            s.slow_flash_factor = float(factor)

        self._change(fn)

    def corrupt_bank(self, bank: str, offset: int, xor_mask: int = 0x01) -> None:
        """Bit rot in a bank (not a flash operation)."""
        dev = self._device
        with dev._lock:
            dev._check_alive()
            dev.flash.corrupt(bank_region(bank), offset, xor_mask)

    def power_cut_at(self, n_ops: int, *, seed: int | None = None) -> None:
        """Cut the power during the ``n_ops``-th flash operation from now."""
        self._device.power.arm_at(n_ops, seed=seed)

    def power_cut_random(self, max_ops: int, *, seed: int = 0) -> int:
        """Cut during one of the next ``max_ops`` flash operations; returns which."""
        return self._device.power.arm_random(max_ops, seed=seed)

    def clear(self) -> None:
        """Remove every injected fault (physical state such as SOC stays)."""

        def fn(s: BoardState) -> None:
            s.ntc_open, s.ntc_short, s.dead_balancing = [], [], []
            s.adc_gain_error, s.forced_faults, s.interface_faults = {}, [], []
            s.supply_sag_v = s.supply_ripple_v = 0.0
            s.slow_flash_factor = 1.0

        self._change(fn)
        self._device.power.disarm()
