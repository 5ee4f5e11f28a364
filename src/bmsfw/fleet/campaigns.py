"""Campaign rules that need no database: phase sizes, ordering, progression, windows.

:func:`decide` is the whole progression policy as a pure function of a
campaign snapshot, the device counts and the time, so it can be tested
table-driven; :mod:`bmsfw.fleet.service` loads the snapshot under a row lock,
calls it and writes the decision back.

Progression of a running campaign, evaluated after every terminal device report
and by the periodic tick:

1. Failures (failed, rolled back, rejected) not yet acknowledged by a resume,
   as a share of the devices released so far, at or above
   ``error_threshold_pct`` -> **pause** (automatic, with the reason recorded).
2. Success share of released devices (acknowledged failures left out) reaches the phase's
   ``success_threshold_pct`` -> start the soak clock (once).
3. Soak time elapsed -> **advance** to the next phase; in the last phase,
   once every released device is terminal -> **complete**.
4. Every released device terminal but the success threshold not met ->
   **pause** (the operator decides).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from bmsfw.fleet.errors import InvalidCampaignSpecError
from bmsfw.fleet.protocol import MaintenanceWindow
from bmsfw.fleet.schemas import PhaseSpec

__all__ = [
    "CampaignCounts",
    "CampaignSnapshot",
    "Decision",
    "assign_phases",
    "cumulative_sizes",
    "decide",
    "rollout_order",
    "window_open",
]


def cumulative_sizes(phases: Sequence[PhaseSpec], total: int) -> list[int]:
    """How many devices are released once each phase starts (cumulative, capped at total)."""
    sizes: list[int] = []
    previous = 0
    for phase in phases:
        if phase.devices is not None:
            size = min(total, phase.devices)
        else:
            size = min(total, math.ceil(total * (phase.percent or 0) / 100))
        # Phases are cumulative: "canary 5 -> 10 %" on 30 devices releases 5 then still 5
        # (10 % is 3), never fewer than already released.
        size = max(size, previous)
        sizes.append(size)
        previous = size
    if sizes and sizes[-1] < total:
        raise InvalidCampaignSpecError(
            f"the last phase {phases[-1].name!r} covers {sizes[-1]} of {total} target devices; "
            "end with a phase of percent 100"
        )
    return sizes


def rollout_order(campaign_key: str, serials: Sequence[str]) -> list[str]:
    """A stable pseudo-random order, so a canary is spread across sites, not the first site."""
    return sorted(serials, key=lambda s: hashlib.sha256(f"{campaign_key}:{s}".encode()).digest())


def assign_phases(ordered_serials: Sequence[str], sizes: Sequence[int]) -> dict[str, int]:
    """Phase index of every device: the first phase whose cumulative size covers its position."""
    result: dict[str, int] = {}
    phase = 0
    for position, serial in enumerate(ordered_serials):
        while position >= sizes[phase]:
            phase += 1
        result[serial] = phase
    return result


@dataclass(frozen=True)
class CampaignSnapshot:
    status: str
    current_phase: int
    phases: tuple[PhaseSpec, ...]
    error_threshold_pct: float
    phase_threshold_met_at: datetime | None
    acknowledged_failures: int


@dataclass(frozen=True)
class CampaignCounts:
    """Counts over the devices released so far (phase index <= current phase)."""

    released: int
    succeeded: int
    failed: int
    terminal: int


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "pause" | "advance" | "complete" | "threshold_met"
    reason: str = ""


def decide(snap: CampaignSnapshot, counts: CampaignCounts, now: datetime) -> Decision:
    if snap.status != "running" or counts.released == 0:
        return Decision("none")
    new_failures = counts.failed - snap.acknowledged_failures
    failure_pct = 100.0 * new_failures / counts.released
    if new_failures > 0 and failure_pct >= snap.error_threshold_pct:
        return Decision(
            "pause",
            f"error threshold reached: {new_failures} of {counts.released} released devices "
            f"failed ({failure_pct:.1f} % >= {snap.error_threshold_pct:g} %)",
        )
    phase = snap.phases[snap.current_phase]
    last = snap.current_phase == len(snap.phases) - 1
    # Failures acknowledged by a resume leave the denominator: the operator accepted them.
    considered = counts.released - snap.acknowledged_failures
    success_pct = 100.0 * counts.succeeded / considered if considered > 0 else 100.0
    if success_pct + 1e-9 < phase.success_threshold_pct:
        if counts.terminal == counts.released:
            return Decision(
                "pause",
                f"phase {phase.name!r} finished with {success_pct:.1f} % succeeded, below its "
                f"success threshold of {phase.success_threshold_pct:g} %",
            )
        return Decision("none")
    if last:
        if counts.terminal == counts.released:
            return Decision("complete", f"all {counts.released} devices finished")
        return Decision("none")
    if snap.phase_threshold_met_at is None:
        return Decision("threshold_met")
    if now - snap.phase_threshold_met_at >= timedelta(seconds=phase.soak_s):
        return Decision(
            "advance",
            f"phase {phase.name!r}: {success_pct:.1f} % succeeded, soaked {phase.soak_s:g} s",
        )
    return Decision("none")


def _parse_hhmm(text: str) -> time | None:
    hours, minutes = (int(part) for part in text.split(":"))
    return None if hours == 24 else time(hours, minutes)


def window_open(windows: Sequence[MaintenanceWindow], timezone: str, now: datetime) -> bool:
    """True when ``now`` falls in one of the site's windows (no windows: always open)."""
    if not windows:
        return True
    local = now.astimezone(ZoneInfo(timezone))
    today, clock = local.weekday(), local.time()
    yesterday = (today - 1) % 7
    for window in windows:
        start = _parse_hhmm(window.start) or time(0, 0)
        end = _parse_hhmm(window.end)  # None: until midnight
        if end is None or start < end:
            if today in window.days and clock >= start and (end is None or clock < end):
                return True
        elif (today in window.days and clock >= start) or (
            yesterday in window.days and clock < end
        ):
            return True
    return False
