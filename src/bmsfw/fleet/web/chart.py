"""Line charts drawn by the server as SVG (no chart library, no script, nothing fetched).

:func:`line_chart` is pure: it maps timed values onto a plot box and returns the
numbers the template ``_chart.html`` writes into an ``<svg>``. A pause in the samples
longer than ``gap`` (the device was offline) breaks the line instead of bridging it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bmsfw.fleet.telemetry import TelemetryHistory

__all__ = ["CHART_HOURS", "Chart", "Tick", "device_charts", "line_chart"]

WIDTH = 640
HEIGHT = 180
LEFT = 44  # room for the value labels
RIGHT = 8
TOP = 8
BOTTOM = 22  # room for the time labels


@dataclass(frozen=True)
class Tick:
    position: float  # x or y in the SVG's coordinates
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    lines: tuple[str, ...]  # each an SVG ``points`` attribute: "x,y x,y ..."
    dots: tuple[tuple[float, float], ...]  # lone samples (a line of one point is invisible)
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    samples: int
    latest: float | None
    low: float | None
    high: float | None


def _nice_range(lo: float, hi: float, floor: float, ceil: float) -> tuple[float, float]:
    """The value range shown: the data's, widened to whole multiples of 5 and at least
    10 wide, and never beyond ``[floor, ceil]``."""
    lo, hi = (min(max(v, floor), ceil) for v in (lo, hi))
    lo, hi = math.floor(lo / 5) * 5, math.ceil(hi / 5) * 5
    if hi - lo < 10:
        mid = (hi + lo) / 2
        lo, hi = mid - 5, mid + 5
    lo, hi = max(floor, lo), min(ceil, hi)
    return (lo, hi) if hi - lo >= 10 else (floor, ceil)


def line_chart(
    points: Sequence[tuple[datetime, float | None]],
    start: datetime,
    end: datetime,
    *,
    title: str,
    unit: str,
    gap: timedelta,
    bounds: tuple[float, float],
) -> Chart:
    """``points`` (oldest first; None values skipped) drawn over ``[start, end]``.

    ``bounds``: the physical range (0..100 for a state of charge); the axis fits the
    data inside it.
    """
    values = [(at, v) for at, v in points if v is not None and math.isfinite(v)]
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max((end - start).total_seconds(), 1.0)
    if values:
        lo, hi = _nice_range(min(v for _, v in values), max(v for _, v in values), *bounds)
    else:
        lo, hi = bounds
    height = max(hi - lo, 1e-9)

    def xy(at: datetime, v: float) -> tuple[float, float]:
        x = LEFT + pw * min(max((at - start).total_seconds() / span, 0.0), 1.0)
        y = TOP + ph * (1 - (min(max(v, lo), hi) - lo) / height)
        return round(x, 1), round(y, 1)

    runs: list[list[tuple[float, float]]] = []
    previous: datetime | None = None
    for at, v in values:
        if previous is None or at - previous > gap:
            runs.append([])
        runs[-1].append(xy(at, v))
        previous = at
    lines = tuple(" ".join(f"{x},{y}" for x, y in run) for run in runs if len(run) > 1)
    dots = tuple(run[0] for run in runs if len(run) == 1)
    y_ticks = tuple(
        Tick(round(TOP + ph * (1 - i / 4), 1), f"{lo + (hi - lo) * i / 4:g}") for i in range(5)
    )
    x_ticks = tuple(
        Tick(
            round(LEFT + pw * i / 4, 1),
            (start + (end - start) * i / 4).strftime("%m-%d %H:%M"),
        )
        for i in range(5)
    )
    only = [v for _, v in values]
    return Chart(
        title=title,
        unit=unit,
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        top=TOP,
        plot_width=pw,
        plot_height=ph,
        lines=lines,
        dots=dots,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        samples=len(values),
        latest=only[-1] if only else None,
        low=min(only) if only else None,
        high=max(only) if only else None,
    )


CHART_HOURS = (24, 72)  # the periods a device page offers (the history keeps 3 days)


def device_charts(
    history: TelemetryHistory, serial: str, now: datetime, hours: int
) -> tuple[Chart, Chart]:
    """State of charge and temperature of one device over the last ``hours``."""
    start = now - timedelta(hours=hours)
    samples = history.series(serial, start, now)
    gap = 2.5 * history.policy.every  # two missed samples: the device was offline
    soc = line_chart(
        [(s.at, s.soc_pct) for s in samples],
        start,
        now,
        title="State of charge",
        unit="%",
        gap=gap,
        bounds=(0.0, 100.0),
    )
    temperature = line_chart(
        [(s.at, s.temperature_c) for s in samples],
        start,
        now,
        title="Temperature",
        unit="°C",
        gap=gap,
        bounds=(-80.0, 200.0),
    )
    return soc, temperature
