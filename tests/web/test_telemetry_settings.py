"""Telemetry settings: the sampling interval the server keeps history at is told to the
agents in every check-in answer (the agent checks in at least that often, clamped to the
documented range), and history older than the retention is pruned in bounded batches;
on SQLite and PostgreSQL. The clamping rules on their own."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bmsfw.cli._main import cli
from bmsfw.cli._registry import register_all
from bmsfw.fleet.agent import POLL_INTERVAL_RANGE_S, AgentConfig
from bmsfw.fleet.client import _decode_check_in
from bmsfw.fleet.ranges import TELEMETRY_INTERVAL_RANGE_S, TELEMETRY_KEEP_RANGE_S
from bmsfw.fleet.telemetry import TelemetryHistory, TelemetryPolicy
from fleet import conftest as fleet_fixtures
from fleet.conftest import START, Fleet, bms

fleet = fleet_fixtures.fleet
db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem

INTERVAL_S, KEEP_S = 120, 3600


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"telemetry_interval_s": INTERVAL_S, "telemetry_keep_s": KEEP_S}


def test_the_agent_is_told_the_interval_and_old_history_is_pruned_in_batches(
    fleet: Fleet,
) -> None:
    history: TelemetryHistory = fleet.app.state.telemetry
    assert history.policy == TelemetryPolicy(
        dt.timedelta(seconds=INTERVAL_S), dt.timedelta(seconds=KEEP_S)
    )
    fleet.add_gateway("gw", "site")
    serials = ["SN1", "SN2", "SN3"]
    for soc in (10.0, 20.0, 30.0):  # three intervals, three devices: nine samples
        answer = fleet.check_in("gw", [bms(s, soc_pct=soc) for s in serials])
        assert answer["telemetry_interval_s"] == INTERVAL_S
        assert history.sample(fleet.clock.now()) == 3
        fleet.clock.advance(INTERVAL_S)
    assert history.prune(fleet.clock.now()) == 0  # nothing older than the retention yet

    # The first two rounds expire; a prune deletes at most its batch, oldest first.
    fleet.clock.advance(KEEP_S - 2 * INTERVAL_S + 1)
    now = fleet.clock.now()
    assert history.prune(now, limit=4) == 4
    left = {s: [x.soc_pct for x in history.series(s, START, now)] for s in serials}
    assert sorted(len(v) for v in left.values()) == [1, 2, 2]  # round one gone, one of two
    assert all(v[-1] == 30.0 for v in left.values())
    assert history.prune(now, limit=4) == 2
    assert history.prune(now, limit=4) == 0
    assert {s: [x.soc_pct for x in history.series(s, START, now)] for s in serials} == {
        s: [30.0] for s in serials
    }
    # The server's tick does both: a sample when due, one bounded prune.
    fleet.check_in("gw", [bms(s, soc_pct=40.0) for s in serials])
    fleet.clock.advance(KEEP_S)
    fleet.check_in("gw", [bms(s, soc_pct=50.0) for s in serials])
    assert history.tick(fleet.clock.now()) == (3, 3)  # the 30 % samples expired


@pytest.mark.parametrize(
    ("interval_s", "keep_s", "expected"),
    [
        (600, 3 * 86_400, (600, 3 * 86_400)),  # the defaults
        (1, 10, (TELEMETRY_INTERVAL_RANGE_S[0], TELEMETRY_KEEP_RANGE_S[0])),
        (10**9, 10**12, (TELEMETRY_INTERVAL_RANGE_S[1], TELEMETRY_KEEP_RANGE_S[1])),
        (7200, 7200, (7200, 14_400)),  # keep at least two intervals
        (-5, -5, (TELEMETRY_INTERVAL_RANGE_S[0], TELEMETRY_KEEP_RANGE_S[0])),
    ],
)
def test_server_settings_are_clamped_to_the_documented_ranges(
    interval_s: int, keep_s: int, expected: tuple[int, int]
) -> None:
    policy = TelemetryPolicy.clamped(interval_s, keep_s)
    assert (policy.every.total_seconds(), policy.keep.total_seconds()) == expected


@pytest.mark.parametrize(
    ("poll_s", "telemetry", "expected"),
    [
        (60, None, 60.0),  # an older server names no telemetry interval
        (60, 600, 60.0),  # polling more often than sampling: unchanged
        (900, 300, 300.0),  # at least once per sampling interval
        (900, 1, float(TELEMETRY_INTERVAL_RANGE_S[0])),  # a hostile "1 s" is clamped
        (900, -7, float(TELEMETRY_INTERVAL_RANGE_S[0])),
        (10**9, 10**9, POLL_INTERVAL_RANGE_S[1]),
    ],
)
def test_the_agent_clamps_the_interval_it_is_told(
    tmp_path: Path, poll_s: int, telemetry: Any, expected: float
) -> None:
    answer = _decode_check_in(
        {
            "gateway": "gw",
            "server_time": START.isoformat(),
            "poll_interval_s": poll_s,
            "telemetry_interval_s": telemetry,
            "offers": [],
        },
        "test",
    )
    config = AgentConfig(state_dir=tmp_path, trust_root_pem=b"")
    assert config.poll_interval_s(answer.poll_interval_s, answer.telemetry_interval_s) == expected


def test_serve_refuses_settings_outside_the_ranges(tmp_path: Path) -> None:
    register_all(cli)
    root = tmp_path / "root.pem"
    root.write_bytes(b"")
    for option, value in (("--telemetry-interval-s", "59"), ("--telemetry-keep-days", "401")):
        args = ["fleet", "serve", "--db", "sqlite://", "--trust-root", str(root), option, value]
        refused = CliRunner().invoke(cli, args)
        assert refused.exit_code == 2, refused.output  # usage error: nothing started
        assert option in refused.output and "range" in refused.output
