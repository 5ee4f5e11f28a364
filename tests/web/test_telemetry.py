"""Telemetry history: the tick's sampler (one sample per device per interval, old ones
dropped, nothing for a device that did not check in) and the device page's SVG charts
(a gap where the device was offline); the chart maths on its own."""

from __future__ import annotations

import datetime as dt
import re

from hypothesis import given
from hypothesis import strategies as st

from bmsfw.fleet.telemetry import TelemetryHistory
from bmsfw.fleet.web.chart import HEIGHT, LEFT, TOP, WIDTH, line_chart
from fleet import conftest as fleet_fixtures
from fleet.conftest import START, Fleet, bms

from .test_routes import _sign_in, https_fleet

fleet = fleet_fixtures.fleet
db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
config_overrides = fleet_fixtures.config_overrides
__all__ = ["https_fleet"]

MIN = dt.timedelta(minutes=1)


def test_the_sampler_takes_one_sample_per_interval_and_drops_old_ones(
    https_fleet: Fleet,
) -> None:
    fleet = https_fleet
    history: TelemetryHistory = fleet.app.state.telemetry
    every = history.policy.every
    fleet.add_gateway("gw", "site")
    fleet.add_gateway("quiet", "site")
    fleet.check_in("quiet", [bms("SN-QUIET", soc_pct=50.0)])
    fleet.clock.advance(every.total_seconds() + 1)  # SN-QUIET's check-in is now too old
    fleet.check_in("gw", [bms("SN1", soc_pct=40.0, temperature_c=20.0), bms("SN2")])
    assert history.sample(fleet.clock.now()) == 2  # SN1 and SN2, not SN-QUIET
    fleet.clock.advance(60)
    fleet.check_in("gw", [bms("SN1", soc_pct=41.0, temperature_c=21.0), bms("SN2")])
    assert history.sample(fleet.clock.now()) == 0  # both have one in this interval
    assert history.sample_if_due(fleet.clock.now()) == 0
    samples = history.series("SN1", START, fleet.clock.now())
    assert [(s.soc_pct, s.temperature_c) for s in samples] == [(40.0, 20.0)]
    fleet.clock.advance(every.total_seconds())
    fleet.check_in("gw", [bms("SN1", soc_pct=42.0, temperature_c=22.0)])
    assert history.sample(fleet.clock.now()) == 1
    assert [s.soc_pct for s in history.series("SN1", START, fleet.clock.now())] == [40.0, 42.0]
    assert history.series("SN-QUIET", START, fleet.clock.now()) == []
    # After `keep`, the old samples are gone.
    fleet.clock.advance(history.policy.keep.total_seconds() + 1)
    fleet.check_in("gw", [bms("SN1", soc_pct=43.0)])
    assert history.tick(fleet.clock.now()) == (1, 3)  # SN1's two, SN2's one deleted
    assert [s.soc_pct for s in history.series("SN1", START, fleet.clock.now())] == [43.0]


def test_the_device_page_draws_the_history_with_a_gap_when_offline(https_fleet: Fleet) -> None:
    fleet = https_fleet
    history: TelemetryHistory = fleet.app.state.telemetry
    fleet.add_gateway("gw", "site")
    every_s = history.policy.every.total_seconds()
    for step in range(12):
        if step == 6:
            fleet.clock.advance(6 * every_s)  # an hour offline
        fleet.clock.advance(every_s)
        fleet.check_in("gw", [bms("SN1", soc_pct=30.0 + step, temperature_c=15.0 + step / 2)])
        history.sample(fleet.clock.now())
    _sign_in(fleet, "viewer")
    page = fleet.client.get("/ui/devices/SN1")
    assert page.status_code == 200
    soc = page.text.split('data-testid="chart-soc"')[1].split("</figure>")[0]
    assert "12 sample(s), latest 41.0 %, lowest 30.0, highest 41.0 %" in soc
    lines = re.findall(r'<polyline class="series" points="([^"]+)"', soc)
    assert [len(p.split()) for p in lines] == [6, 6]  # broken where the device was away
    temperature = page.text.split('data-testid="chart-temperature"')[1].split("</figure>")[0]
    assert "latest 20.5 °C" in temperature
    longer = fleet.client.get("/ui/devices/SN1?hours=72")
    assert "<strong>72 h</strong>" in longer.text
    odd = fleet.client.get("/ui/devices/SN1?hours=100000")  # not offered: the default
    assert "<strong>24 h</strong>" in odd.text
    empty = fleet.client.get("/ui/devices/SN1?hours=24")
    assert empty.status_code == 200


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_a_chart_maps_samples_into_the_plot_and_breaks_at_gaps() -> None:
    points = [(T0 + i * 10 * MIN, float(v)) for i, v in enumerate([20, 40, 60])]
    points += [(T0 + 120 * MIN, 80.0), (T0 + 200 * MIN, None), (T0 + 240 * MIN, 100.0)]
    chart = line_chart(
        points, T0, T0 + 240 * MIN, title="SoC", unit="%", gap=25 * MIN, bounds=(0, 100)
    )
    assert chart.samples == 5 and chart.latest == 100.0 and (chart.low, chart.high) == (20, 100)
    # 0, 10, 20 min together; 120 min alone; 240 min alone (the None is no sample).
    assert len(chart.lines) == 1 and len(chart.lines[0].split()) == 3
    assert len(chart.dots) == 2
    first = chart.lines[0].split()[0]
    assert first == f"{LEFT}.0,{float(TOP + chart.plot_height)}"  # 20: the axis's low end
    assert chart.dots[-1] == (float(WIDTH - 8), float(TOP))  # 100 at the top right
    assert [t.label for t in chart.y_ticks] == ["20", "40", "60", "80", "100"]
    empty = line_chart([], T0, T0 + MIN, title="t", unit="°C", gap=MIN, bounds=(-80, 200))
    assert empty.lines == () and empty.dots == () and empty.latest is None


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=-100, max_value=2000),
            st.floats(allow_nan=True, allow_infinity=True, width=32),
        ),
        max_size=60,
    )
)
def test_no_sample_is_drawn_outside_the_svg(raw: list[tuple[int, float]]) -> None:
    points = sorted((T0 + m * MIN, v) for m, v in raw)
    chart = line_chart(
        points, T0, T0 + 1440 * MIN, title="t", unit="°C", gap=30 * MIN, bounds=(-80, 200)
    )
    coords = [tuple(map(float, p.split(","))) for line in chart.lines for p in line.split()]
    for x, y in [*coords, *chart.dots]:
        assert LEFT <= x <= WIDTH and TOP <= y <= HEIGHT
