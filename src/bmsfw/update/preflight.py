"""Preflight: is it safe to update this BMS now? Every check reports value, limit, verdict.

The evaluators (``check_*``) are pure functions of what was measured and the
profile's limits, so they are tested table-driven. :func:`run_preflight` does
the measuring through a ``BmsSession``: one telemetry read for state of
charge, temperatures, faults and cell spread, a sampling window for supply
stability, a link test, the boot status for the free bank, and the release's
facts for compatibility and anti-rollback. Nothing here writes to the BMS.

Safety checks cannot be overridden. Non-safety checks (link quality, cell
spread) may be, only with a reason, which the report and the audit log keep.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from bmsfw.errors import PreflightError
from bmsfw.protocol.session import BmsSession, BootStatus, LinkQuality, Telemetry
from bmsfw.update.core import compare_versions, judge_ble_link, judge_ota_bandwidth
from bmsfw.update.errors import (
    ActiveFaultsError,
    BleLinkLimitsError,
    CellSpreadHighError,
    DeviceInBootloaderError,
    DowngradeError,
    InactiveBankBusyError,
    IncompatibleDeviceError,
    LinkQualityPoorError,
    OtaBandwidthTooLowError,
    OverrideRefusedError,
    SocOutOfRangeError,
    SupplyUnstableError,
    TemperatureOutOfRangeError,
)
from bmsfw.update.events import CheckEvaluated, EventSink
from bmsfw.update.profile import PreflightLimits

__all__ = [
    "CHECK_ERRORS",
    "OVERRIDABLE_CHECKS",
    "SAFETY_CHECKS",
    "CheckResult",
    "PreflightReport",
    "ReleaseFacts",
    "check_anti_rollback",
    "check_bank",
    "check_ble_link",
    "check_cell_spread",
    "check_compatibility",
    "check_faults",
    "check_link",
    "check_soc",
    "check_supply",
    "check_temperature",
    "run_preflight",
    "sample_supply",
    "validate_overrides",
]

logger = logging.getLogger(__name__)

CHECK_ERRORS: dict[str, type[PreflightError]] = {
    "state-of-charge": SocOutOfRangeError,
    "temperature": TemperatureOutOfRangeError,
    "supply-stability": SupplyUnstableError,
    "active-faults": ActiveFaultsError,
    "compatibility": IncompatibleDeviceError,
    "anti-rollback": DowngradeError,
    "free-bank": InactiveBankBusyError,
    "link-quality": LinkQualityPoorError,
    "cell-spread": CellSpreadHighError,
    "ble-link": BleLinkLimitsError,
    "ota-bandwidth": OtaBandwidthTooLowError,
}
SAFETY_CHECKS = frozenset(
    {
        "state-of-charge",
        "temperature",
        "supply-stability",
        "active-faults",
        "compatibility",
        "anti-rollback",
        "free-bank",
    }
)
OVERRIDABLE_CHECKS = frozenset(CHECK_ERRORS) - SAFETY_CHECKS


@dataclass(frozen=True)
class CheckResult:
    name: str
    measured: str
    limit: str
    passed: bool
    safety: bool
    detail: str = ""
    overridden: bool = False
    override_reason: str = ""

    @property
    def ok(self) -> bool:
        """Passed, or failed but overridden with a recorded reason."""
        return self.passed or self.overridden

    @property
    def error_code(self) -> str:
        return CHECK_ERRORS[self.name].code if self.name in CHECK_ERRORS else ""


@dataclass(frozen=True)
class ReleaseFacts:
    """What the compatibility and anti-rollback checks need from a verified release."""

    version: str
    model: str
    hw_revisions: tuple[str, ...]
    min_bootloader_version: str
    security_counter: int


@dataclass(frozen=True)
class PreflightReport:
    checks: tuple[CheckResult, ...]
    supply_samples_v: tuple[float, ...] = ()
    measured_at: float = field(default_factory=time.time)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def raise_if_failed(self) -> None:
        failed = self.failures()
        if not failed:
            return
        first = failed[0]
        listed = "; ".join(f"{c.name} {c.measured} (limit {c.limit})" for c in failed)
        raise CHECK_ERRORS[first.name](f"preflight failed, nothing written: {listed}")


def _pct(value: float) -> str:
    return f"{value:.1f} %"


def check_soc(telemetry: Telemetry, limits: PreflightLimits) -> CheckResult:
    soc = telemetry.soc_pct
    return CheckResult(
        "state-of-charge",
        _pct(soc),
        f"{limits.soc_min_pct:g}–{limits.soc_max_pct:g} %",
        limits.soc_min_pct <= soc <= limits.soc_max_pct,
        safety=True,
    )


def check_temperature(telemetry: Telemetry, limits: PreflightLimits) -> CheckResult:
    limit = f"{limits.temp_min_c:g}–{limits.temp_max_c:g} °C"
    if not telemetry.temperatures_c:
        return CheckResult("temperature", "no sensor", limit, False, True, "no temperature read")
    lo, hi = min(telemetry.temperatures_c), max(telemetry.temperatures_c)
    measured = f"{lo:.1f} °C" if lo == hi else f"{lo:.1f}…{hi:.1f} °C"
    return CheckResult(
        "temperature",
        measured,
        limit,
        limits.temp_min_c <= lo and hi <= limits.temp_max_c,
        safety=True,
        detail=f"{len(telemetry.temperatures_c)} sensors",
    )


def check_supply(samples_v: tuple[float, ...], limits: PreflightLimits) -> CheckResult:
    limit = (
        f"{limits.supply_min_v:g}–{limits.supply_max_v:g} V, "
        f"ripple ≤ {limits.supply_max_ripple_pct:g} %"
    )
    if len(samples_v) < 2:
        return CheckResult("supply-stability", "too few samples", limit, False, True)
    lo, hi, mean = min(samples_v), max(samples_v), statistics.fmean(samples_v)
    ripple_pct = (hi - lo) / mean * 100.0 if mean > 0 else float("inf")
    in_range = limits.supply_min_v <= lo and hi <= limits.supply_max_v
    return CheckResult(
        "supply-stability",
        f"{mean:.2f} V (min {lo:.2f}, max {hi:.2f}, ripple {ripple_pct:.1f} %)",
        limit,
        in_range and ripple_pct <= limits.supply_max_ripple_pct,
        safety=True,
        detail=f"{len(samples_v)} samples",
    )


def check_faults(telemetry: Telemetry) -> CheckResult:
    faults = telemetry.faults
    return CheckResult(
        "active-faults",
        ", ".join(faults) if faults else "none",
        "none",
        not faults,
        safety=True,
    )


def check_cell_spread(telemetry: Telemetry, limits: PreflightLimits) -> CheckResult:
    limit = f"≤ {limits.cell_spread_max_mv:g} mV"
    cells = telemetry.cell_voltages_v
    if not cells:
        return CheckResult("cell-spread", "no cells reported", limit, False, False)
    spread_mv = (max(cells) - min(cells)) * 1000.0
    return CheckResult(
        "cell-spread",
        f"{spread_mv:.0f} mV",
        limit,
        spread_mv <= limits.cell_spread_max_mv,
        safety=False,
        detail=f"{len(cells)} cells",
    )


def check_link(link: LinkQuality, limits: PreflightLimits) -> CheckResult:
    passed = link.echo_ok and link.errors <= limits.link_max_errors and link.rate_matches
    return CheckResult(
        "link-quality",
        f"echo {'ok' if link.echo_ok else 'FAILED'}, {link.errors} errors in "
        f"{link.round_trips} round trips, {link.rate}"
        f"{'' if link.rate_matches else ' (MISMATCH)'}",
        f"echo ok, ≤ {limits.link_max_errors} errors, rate matches",
        passed,
        safety=False,
        detail=f"round trip {link.round_trip_ms:.1f} ms",
    )


def check_ble_link(link: LinkQuality, limits: PreflightLimits) -> list[CheckResult]:
    """A Bluetooth link's limits and the OTA bandwidth rule (the decisions are the core's);
    nothing on a wired link."""
    if link.ble is None:
        return []
    ble = judge_ble_link(link.ble, limits)
    ota = judge_ota_bandwidth(ble.expected_bps, limits)
    return [
        CheckResult(
            "ble-link", ble.measured, ble.limit, ble.passed, False, "; ".join(ble.problems)
        ),
        CheckResult("ota-bandwidth", ota.measured, ota.limit, ota.passed, False, ota.reason),
    ]


def check_bank(boot: BootStatus, *, recovery: bool = False) -> CheckResult:
    measured = f"{boot.run_state}, bank {boot.active_bank} {boot.image_state}"
    if boot.run_state == "bootloader":
        # A BMS stuck in its bootloader has nothing to protect in the other bank; only
        # an explicit recovery flash may proceed.
        return CheckResult(
            "free-bank", measured, "application running (or --recovery)", recovery, True
        )
    return CheckResult(
        "free-bank",
        measured,
        "active image confirmed, no image pending",
        boot.run_state == "application" and boot.image_state != "test",
        safety=True,
    )


def check_compatibility(
    model: str, hw_revision: str, bootloader_version: str, release: ReleaseFacts
) -> CheckResult:
    hw_ok = model == release.model and hw_revision in release.hw_revisions
    boot_ok = compare_versions(bootloader_version, release.min_bootloader_version) >= 0
    return CheckResult(
        "compatibility",
        f"{model} rev {hw_revision}, bootloader {bootloader_version}",
        f"{release.model} rev {'/'.join(release.hw_revisions)}, "
        f"bootloader ≥ {release.min_bootloader_version}",
        hw_ok and boot_ok,
        safety=True,
        detail="" if hw_ok else "hardware not in the release's compatibility list",
    )


def check_anti_rollback(device_counter: int, release: ReleaseFacts) -> CheckResult:
    return CheckResult(
        "anti-rollback",
        f"package counter {release.security_counter}",
        f"≥ device counter {device_counter}",
        release.security_counter >= device_counter,
        safety=True,
    )


_TELEMETRY_FIELD = {
    "state-of-charge": "soc_pct",
    "temperature": "temperatures_c",
    "supply-stability": "supply_voltage_v",
    "active-faults": "faults",
    "cell-spread": "cell_voltages_v",
}


def _with_sources(checks: list[CheckResult], telemetry: Telemetry) -> list[CheckResult]:
    """Name the source of each telemetry value in its check's detail (when the session says)."""
    out = []
    for check in checks:
        source = telemetry.sources.get(_TELEMETRY_FIELD.get(check.name, ""), "")
        detail = "; ".join(p for p in (check.detail, f"source {source}" if source else "") if p)
        out.append(replace(check, detail=detail) if source else check)
    return out


def _apply_overrides(checks: list[CheckResult], overrides: Mapping[str, str]) -> list[CheckResult]:
    out: list[CheckResult] = []
    for check in checks:
        reason = overrides.get(check.name)
        if reason is not None and not check.passed:
            out.append(replace(check, overridden=True, override_reason=reason))
        else:
            out.append(check)
    return out


def validate_overrides(overrides: Mapping[str, str]) -> None:
    """Refuse overrides of safety checks, unknown names and overrides without a reason."""
    for name, reason in overrides.items():
        if name in SAFETY_CHECKS:
            raise OverrideRefusedError(f"{name} is a safety check and cannot be overridden")
        if name not in OVERRIDABLE_CHECKS:
            raise OverrideRefusedError(
                f"unknown check {name!r}; overridable: {', '.join(sorted(OVERRIDABLE_CHECKS))}"
            )
        if not reason.strip():
            raise OverrideRefusedError(f"override of {name} needs a reason (--override-reason)")


def sample_supply(
    session: BmsSession, limits: PreflightLimits, sleep: Callable[[float], None]
) -> tuple[float, ...]:
    interval = limits.supply_window_s / (limits.supply_samples - 1)
    samples: list[float] = []
    for index in range(limits.supply_samples):
        if index:
            sleep(interval)
        samples.append(session.read_telemetry().supply_voltage_v)
    return tuple(samples)


def run_preflight(
    session: BmsSession,
    limits: PreflightLimits,
    release: ReleaseFacts | None,
    *,
    overrides: Mapping[str, str] | None = None,
    recovery: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    node: str = "",
    sink: EventSink | None = None,
) -> PreflightReport:
    """Measure and evaluate every check; never raises for a failed check (see the report)."""
    overrides = dict(overrides or {})
    validate_overrides(overrides)
    identity = session.identify()
    boot = session.read_boot_status()
    if boot.run_state == "bootloader" and not recovery:
        raise DeviceInBootloaderError(
            f"{identity.serial} runs its bootloader (bank {boot.active_bank} {boot.image_state})"
        )
    telemetry = session.read_telemetry()
    supply = sample_supply(session, limits, sleep)
    link = session.link_check()
    checks = [
        check_soc(telemetry, limits),
        check_temperature(telemetry, limits),
        check_supply(supply, limits),
        check_faults(telemetry),
        check_bank(boot, recovery=recovery),
    ]
    if release is not None:
        checks.append(
            check_compatibility(
                identity.model, identity.hw_revision, identity.bootloader_version, release
            )
        )
        checks.append(check_anti_rollback(identity.security_counter, release))
    checks.append(check_link(link, limits))
    checks.extend(check_ble_link(link, limits))
    checks.append(check_cell_spread(telemetry, limits))
    checks = _apply_overrides(_with_sources(checks, telemetry), overrides)
    for check in checks:
        logger.info(
            "%s preflight %s: %s (limit %s) %s",
            node,
            check.name,
            check.measured,
            check.limit,
            "ok" if check.passed else ("OVERRIDDEN" if check.overridden else "FAILED"),
        )
        if sink is not None:
            sink(
                CheckEvaluated(
                    node, check.name, check.measured, check.limit, check.passed, check.overridden
                )
            )
    return PreflightReport(tuple(checks), supply)
