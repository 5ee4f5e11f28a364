"""Campaign rules that need no database: who is a target, who joins a dynamic campaign,
phase sizes, ordering, progression, windows.

:func:`refusal` is the one target rule: why a device is not a target of a campaign
(compatibility, selector, version rule, retired, busy elsewhere); campaign creation
applies it to the fleet, :func:`joins` to the devices that register or change while
a dynamic campaign is open.

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

A **dynamic** campaign never completes (as hawkBit's dynamic rollouts): in its last
phase with every device finished it stays *running*, and devices that come to match
its selector later join that last phase (:func:`joins`) until it is cancelled.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from bmsfw.fleet.errors import InvalidCampaignSpecError
from bmsfw.fleet.protocol import MaintenanceWindow
from bmsfw.fleet.schemas import PhaseSpec, Selector
from bmsfw.package.version import VersionRange, device_runs
from bmsfw.update.core import is_downgrade

__all__ = [
    "JOINABLE_STATUSES",
    "CampaignCounts",
    "CampaignSnapshot",
    "Decision",
    "DeviceFacts",
    "DynamicCampaign",
    "Join",
    "TargetRule",
    "assign_phases",
    "cumulative_sizes",
    "decide",
    "joins",
    "paused_by_failures",
    "refusal",
    "rollout_order",
    "window_open",
]

# Campaigns that hold their devices (no other campaign takes them) and that a device may
# join when dynamic: running, paused (joiners wait for the resume) and waiting for a
# second person's approval (joiners wait for it). Completed and cancelled ones take none.
JOINABLE_STATUSES = ("running", "paused", "needs_approval")


@dataclass(frozen=True)
class TargetRule:
    """What a campaign asks of a device: its release's compatibility and its selector."""

    hw_model: str
    hw_revisions: frozenset[str]  # the release's revisions, narrowed by the selector's
    release_version: str
    release_security_counter: int
    release_active: bool  # not deactivated
    sites: frozenset[str]  # empty: any
    serials: frozenset[str]  # empty: any
    tags: frozenset[str]  # all required
    version_range: VersionRange | None
    downgrade: bool = False  # an explicit downgrade campaign (selector.downgrade_reason)

    @staticmethod
    def build(
        selector: Selector,
        *,
        hw_model: str,
        hw_revisions: Collection[str],
        version: str,
        security_counter: int,
        active: bool,
        release_id: int,
    ) -> TargetRule:
        """The rule of a campaign of that release and selector; E609 for a selector that
        cannot match the release (other model, unreadable version range)."""
        if selector.models and hw_model not in selector.models:
            raise InvalidCampaignSpecError(
                f"release {release_id} is for {hw_model}, not {', '.join(selector.models)}"
            )
        revisions = frozenset(hw_revisions)
        if selector.hw_revisions:
            revisions &= frozenset(selector.hw_revisions)
        range_ = None
        if selector.version_range:
            try:
                range_ = VersionRange.parse(selector.version_range)
            except ValueError as exc:
                raise InvalidCampaignSpecError(f"selector.version_range: {exc}") from exc
        return TargetRule(
            hw_model=hw_model,
            hw_revisions=revisions,
            release_version=version,
            release_security_counter=security_counter,
            release_active=active,
            sites=frozenset(selector.sites),
            serials=frozenset(selector.serials),
            tags=frozenset(selector.tags),
            version_range=range_,
            downgrade=bool(selector.downgrade_reason.strip()),
        )


@dataclass(frozen=True)
class DeviceFacts:
    """What the target rule reads of a device."""

    serial: str
    model: str
    hw_revision: str
    firmware_version: str
    security_counter: int
    site: str
    tags: frozenset[str]
    decommissioned: bool
    busy: bool  # open (not finished) work in a campaign that holds its devices


def refusal(rule: TargetRule, device: DeviceFacts) -> str | None:
    """Why ``device`` is not a target of a campaign with ``rule``; None: it is one."""
    if not rule.release_active:
        return "the release was deactivated"
    if device.decommissioned:
        return "decommissioned"
    if device.model != rule.hw_model or device.hw_revision not in rule.hw_revisions:
        return f"{device.model} rev {device.hw_revision} is not compatible with the release"
    if rule.sites and device.site not in rule.sites:
        return f"site {device.site!r} is not selected"
    if rule.serials and device.serial not in rule.serials:
        return "serial not selected"
    if device.busy:
        return "busy in another open campaign"
    if device_runs(rule.release_version, device.firmware_version):
        return f"already runs {rule.release_version}"
    if not rule.downgrade and is_downgrade(rule.release_version, device.firmware_version):
        # The version rule (update.core): the device would refuse it without a reason.
        return (
            f"runs {device.firmware_version}, above the release's {rule.release_version} "
            "(a downgrade campaign must say so)"
        )
    if device.security_counter > rule.release_security_counter:
        # Anti-rollback would reject it on the device anyway.
        return (
            f"security counter {device.security_counter} is above the release's "
            f"{rule.release_security_counter}"
        )
    if not rule.tags <= device.tags:
        return f"lacks tag(s) {', '.join(sorted(rule.tags - device.tags))}"
    if rule.version_range is not None:
        try:
            if not rule.version_range.contains(device.firmware_version):
                return f"firmware {device.firmware_version} is outside the version range"
        except ValueError:
            return f"firmware version {device.firmware_version!r} is not comparable"
    return None


@dataclass(frozen=True)
class DynamicCampaign:
    """An open campaign as :func:`joins` sees it."""

    id: int
    dynamic: bool
    status: str
    phases: int
    rule: TargetRule


@dataclass(frozen=True)
class Join:
    campaign_id: int
    serial: str
    phase_index: int  # always the campaign's last phase


def joins(
    campaigns: Sequence[DynamicCampaign],
    devices: Sequence[DeviceFacts],
    members: Collection[tuple[int, str]],
) -> list[Join]:
    """Which of ``devices`` (registered or changed just now) join which dynamic campaign.

    A device joins a dynamic, open campaign (:data:`JOINABLE_STATUSES`) whose target rule
    it meets now, in that campaign's last phase. ``members`` are the ``(campaign id,
    serial)`` pairs already in a campaign, in any state: a device never joins a campaign
    twice (one that failed there is not retried by joining). A device joins at most one
    campaign: the oldest that takes it (after that it is busy for the others, as it is
    for a campaign created later).
    """
    result: list[Join] = []
    taken: set[str] = set()
    for campaign in sorted(campaigns, key=lambda c: c.id):
        if not campaign.dynamic or campaign.status not in JOINABLE_STATUSES:
            continue
        for device in devices:
            if (campaign.id, device.serial) in members:
                continue
            facts = replace(device, busy=True) if device.serial in taken else device
            if refusal(campaign.rule, facts) is None:
                result.append(Join(campaign.id, device.serial, campaign.phases - 1))
                taken.add(device.serial)
    return result


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
    dynamic: bool = False  # never completes: devices may still join its last phase


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


_ERROR_THRESHOLD_REACHED = "error threshold reached"


def paused_by_failures(pause_reason: str) -> bool:
    """Whether a campaign's pause reason is :func:`decide`'s error-threshold pause."""
    return pause_reason.startswith(_ERROR_THRESHOLD_REACHED)


def decide(snap: CampaignSnapshot, counts: CampaignCounts, now: datetime) -> Decision:
    if snap.status != "running" or counts.released == 0:
        return Decision("none")
    new_failures = counts.failed - snap.acknowledged_failures
    failure_pct = 100.0 * new_failures / counts.released
    if new_failures > 0 and failure_pct >= snap.error_threshold_pct:
        return Decision(
            "pause",
            f"{_ERROR_THRESHOLD_REACHED}: {new_failures} of {counts.released} released devices "
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
        if counts.terminal == counts.released and not snap.dynamic:
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
