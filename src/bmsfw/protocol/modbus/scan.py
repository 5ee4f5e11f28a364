"""Serial line diagnosis: which baud rate / parity answers, and which unit ids are present.

For each setting the scan sends one short request (read input register 0, the
map version) to each candidate unit id with a short time-out; at a setting where
units answer, the ones that did not get a second request (a late answer on a busy
line must not hide a unit). Replies identify
the units; bytes that arrive without a valid frame mean "something talks, but
not at this setting" (a near-miss baud rate or parity), and silence means
nothing answered. ``bmsfw diagnose`` prints the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bmsfw.errors import BmsfwError
from bmsfw.protocol.modbus.client import COMMON_BAUDS, ModbusBus, SerialSettings
from bmsfw.protocol.modbus.errors import ModbusFrameError, ModbusNoReplyError
from bmsfw.protocol.modbus.registers import INPUT, MAP_VERSION

__all__ = ["ScanHit", "ScanReport", "SettingResult", "scan_serial"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanHit:
    unit: int
    baud_bps: int
    parity: str
    stopbits: int
    vendor: str = ""
    model: str = ""
    serial: str = ""
    app_version: str = ""
    map_version: int = 0


@dataclass(frozen=True)
class SettingResult:
    baud_bps: int
    parity: str
    stopbits: int
    units: tuple[int, ...]
    garbled: int  # requests answered with bytes that were not a valid frame
    silent: int  # requests with no reply at all

    @property
    def rate(self) -> str:
        return f"{self.baud_bps} 8{self.parity}{self.stopbits}"


@dataclass(frozen=True)
class ScanReport:
    port: str
    settings: tuple[SettingResult, ...]
    hits: tuple[ScanHit, ...]
    expected_baud_bps: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def found_rates(self) -> tuple[str, ...]:
        return tuple(s.rate for s in self.settings if s.units)

    @property
    def baud_mismatch(self) -> bool:
        """The BMS answers, but not at the baud rate the user expected."""
        if self.expected_baud_bps is None or not self.hits:
            return False
        return all(h.baud_bps != self.expected_baud_bps for h in self.hits)

    def summary(self) -> str:
        lines = [f"serial scan of {self.port}:"]
        for s in self.settings:
            state = (
                f"units {', '.join(map(str, s.units))}"
                if s.units
                else ("garbage (wrong setting)" if s.garbled else "silent")
            )
            lines.append(f"  {s.rate:>14}: {state}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def scan_serial(
    port: str,
    *,
    bauds: Sequence[int] = COMMON_BAUDS,
    parities: Sequence[str] = ("E", "N"),
    stopbits: int = 1,
    units: Sequence[int] = tuple(range(1, 17)),
    timeout_s: float = 0.05,
    expected_baud_bps: int | None = None,
    identify: bool = True,
) -> ScanReport:
    """Probe ``units`` at every baud rate and parity; report what answers where."""
    results: list[SettingResult] = []
    hits: list[ScanHit] = []
    for parity in parities:
        for baud in bauds:
            settings = SerialSettings(
                port=port,
                baud_bps=baud,
                parity=parity,
                stopbits=stopbits,
                timeout_s=timeout_s,
                retries=0,
            )
            with ModbusBus(settings) as bus:
                heard = {unit: _probe(bus, unit) for unit in units}
                if any(isinstance(v, int) for v in heard.values()):
                    # Units answer at this setting: one that missed its probe (a late
                    # answer on a busy line or a slow host) gets a second one.
                    for unit in [u for u, v in heard.items() if not isinstance(v, int)]:
                        heard[unit] = _probe(bus, unit)
                found = {u: v for u, v in heard.items() if isinstance(v, int)}
                hits.extend(_identify(bus, u, settings, v, identify) for u, v in found.items())
            garbled = sum(1 for v in heard.values() if v == "garbled")
            silent = sum(1 for v in heard.values() if v == "silent")
            results.append(SettingResult(baud, parity, stopbits, tuple(found), garbled, silent))
            log.info("scan %s %s: units %s", port, settings.rate, found)
    notes: list[str] = []
    report = ScanReport(port, tuple(results), tuple(hits), expected_baud_bps)
    if expected_baud_bps is not None and report.baud_mismatch:
        rates = sorted({f"{h.baud_bps} 8{h.parity}{h.stopbits}" for h in hits})
        notes.append(
            f"no unit answers at the expected {expected_baud_bps} baud; "
            f"found at {', '.join(rates)}: set the adapter (or the BMS) to match"
        )
    if not hits:
        notes.append("no unit answered at any setting: check wiring (A/B), power, termination")
    return ScanReport(port, tuple(results), tuple(hits), expected_baud_bps, tuple(notes))


def _probe(bus: ModbusBus, unit: int) -> int | Literal["garbled", "silent"]:
    """One short request to ``unit``: the map version it answers, or what came instead."""
    try:
        return bus.read_input(unit, INPUT.MAP_VERSION, 1)[0]
    except ModbusFrameError:
        return "garbled"
    except ModbusNoReplyError:
        return "silent"
    except BmsfwError:
        return "garbled"  # an exception reply: someone is there, not our map


def _identify(
    bus: ModbusBus, unit: int, settings: SerialSettings, version: int, identify: bool
) -> ScanHit:
    hit = ScanHit(unit, settings.baud_bps, settings.parity, settings.stopbits, map_version=version)
    if not identify or version != MAP_VERSION:
        return hit
    for attempt in (1, 2):  # a unit that answered is asked twice before it goes unnamed
        try:
            ident = bus.session(unit).identify()
            break
        except BmsfwError as exc:
            log.info(
                "scan %s: unit %d did not identify (try %d): %s", settings.rate, unit, attempt, exc
            )
    else:
        return hit
    return ScanHit(
        unit,
        settings.baud_bps,
        settings.parity,
        settings.stopbits,
        vendor=ident.vendor,
        model=ident.model,
        serial=ident.serial,
        app_version=ident.app_version,
        map_version=version,
    )
