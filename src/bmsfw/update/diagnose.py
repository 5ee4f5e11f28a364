"""``bmsfw diagnose``: what a technician checks when an update is stuck.

Follows the field guide's troubleshooting questions: is it the link (echo test,
error counters, bitrate/baud rate, a rate scan), the binary (certificate chain
against the trusted root, compatibility with this BMS), or the supply
(stability over a sampling window)? Nothing here writes to the BMS.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bmsfw.errors import BmsfwError, PackageError
from bmsfw.package import DeviceFacts, TrustAnchors, verify_release
from bmsfw.protocol.session import BmsSession
from bmsfw.update.connect import (
    CAN_BITRATES_BPS,
    SERIAL_BAUDS,
    CanLink,
    LinkSpec,
    SerialLink,
    open_sessions,
)
from bmsfw.update.preflight import check_supply
from bmsfw.update.profile import PreflightLimits

__all__ = ["DiagnoseItem", "DiagnoseResult", "diagnose", "scan_rates"]


@dataclass(frozen=True)
class DiagnoseItem:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DiagnoseResult:
    node: str
    items: tuple[DiagnoseItem, ...]

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ok": self.ok,
            "items": [dataclasses.asdict(i) for i in self.items],
        }


def diagnose(
    session: BmsSession,
    *,
    package: bytes | None = None,
    trust: TrustAnchors | None = None,
    samples: int = 10,
    window_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> DiagnoseResult:
    identity = session.identify()
    items: list[DiagnoseItem] = []
    link = session.link_check()
    items.append(
        DiagnoseItem(
            "link",
            link.echo_ok and link.errors == 0,
            f"echo {'ok' if link.echo_ok else 'FAILED'}, {link.errors} errors in "
            f"{link.round_trips} round trips, {link.round_trip_ms:.1f} ms per round trip",
            dataclasses.asdict(link),
        )
    )
    items.append(
        DiagnoseItem(
            "rate",
            link.rate_matches,
            f"{link.rate}: {'matches' if link.rate_matches else 'MISMATCH with the BMS setting'}",
        )
    )
    boot = session.read_boot_status()
    items.append(
        DiagnoseItem(
            "boot",
            boot.run_state == "application" and boot.image_state != "test",
            f"{boot.run_state}, runs {boot.running_version} from bank {boot.active_bank} "
            f"({boot.image_state}), {boot.boot_count} boots"
            + (f", last revert: {boot.last_revert_reason}" if boot.last_revert_reason else ""),
            dataclasses.asdict(boot),
        )
    )
    telemetry = session.read_telemetry()
    items.append(
        DiagnoseItem(
            "faults",
            not telemetry.faults,
            ", ".join(telemetry.faults) or "no active protection faults",
        )
    )
    # Supply stability: the same evaluation as preflight, over a longer window.
    limits = PreflightLimits(supply_samples=max(2, samples), supply_window_s=window_s)
    interval = window_s / (limits.supply_samples - 1)
    volts: list[float] = []
    for index in range(limits.supply_samples):
        if index:
            sleep(interval)
        volts.append(session.read_telemetry().supply_voltage_v)
    supply = check_supply(tuple(volts), limits)
    items.append(DiagnoseItem("supply", supply.passed, f"{supply.measured} (limit {supply.limit})"))
    if package is not None and trust is not None:
        try:
            release = verify_release(package, trust, None)
            chain = " <- ".join(c.subject for c in release.chain)
            items.append(DiagnoseItem("certificate-chain", True, f"trusted: {chain}"))
        except PackageError as exc:
            items.append(DiagnoseItem("certificate-chain", False, str(exc)))
        else:
            facts = DeviceFacts(
                identity.model,
                identity.hw_revision,
                identity.bootloader_version,
                identity.security_counter,
            )
            try:
                verify_release(package, trust, facts)
                m = release.manifest
                items.append(
                    DiagnoseItem(
                        "compatibility",
                        True,
                        f"{m.version} fits {identity.model} rev {identity.hw_revision}, "
                        f"bootloader {identity.bootloader_version}",
                    )
                )
            except PackageError as exc:
                items.append(DiagnoseItem("compatibility", False, str(exc)))
    return DiagnoseResult(identity.address or identity.serial, tuple(items))


def scan_rates(link: LinkSpec, rates: Sequence[int] | None = None) -> list[tuple[int, bool]]:
    """Which bitrates (CAN) or baud rates (serial) get an answer from this BMS."""
    out: list[tuple[int, bool]] = []
    if isinstance(link, CanLink):
        candidates = list(rates or CAN_BITRATES_BPS)
    else:
        candidates = list(rates or SERIAL_BAUDS)
    for rate in candidates:
        probe: LinkSpec = (
            dataclasses.replace(link, bitrate_bps=rate, timeout_s=0.3)
            if isinstance(link, CanLink)
            else dataclasses.replace(link, baud=rate, timeout_s=0.3)
        )
        assert isinstance(probe, CanLink | SerialLink)
        try:
            with open_sessions([probe]) as conn:
                conn.sessions[0].identify()
            out.append((rate, True))
        except BmsfwError:
            out.append((rate, False))
    return out
