"""Suite-wide pytest plugin: requirement markers and the recorded results.

A test names the requirements it proves (ids from requirements/requirements.toml)::

    @pytest.mark.req("SEED-SOC-RANGE", "R156-7.2.2.1.2")
    def test_...

``pytest --req-results FILE`` (``make test`` passes it) writes every test's
outcome with its requirement ids to FILE; ``make compliance`` reads that file,
so the suite runs once. See docs/evidence.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.evidence.compliance import (
    TestOutcome,
    TestResult,
    TestRun,
    current_commit,
    write_results,
)

pytest_plugins = ["pytester"]

_ROOT = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--req-results",
        metavar="FILE",
        default=None,
        help="Record each test's outcome and requirement ids (pytest.mark.req) to FILE (JSON).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "req(*ids): the requirements (requirements/requirements.toml) this test proves",
    )
    path = config.getoption("--req-results")
    if path:
        config.pluginmanager.register(_Recorder(Path(path)), "bmsfw-requirement-recorder")


class _Recorder:
    """Collects requirement ids at collection and one outcome per test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requirements: dict[str, tuple[str, ...]] = {}
        self.outcomes: dict[str, TestOutcome] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            ids = [str(i) for mark in item.iter_markers("req") for i in mark.args]
            self.requirements[item.nodeid] = tuple(dict.fromkeys(ids))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # A failure in setup, call or teardown fails the test; a skip counts only
        # when nothing failed; "passed" needs the call phase to pass.
        previous = self.outcomes.get(report.nodeid)
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif previous == "failed":
            return
        elif report.skipped:
            self.outcomes[report.nodeid] = "skipped"
        elif report.when == "call":
            self.outcomes[report.nodeid] = "passed"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        commit, dirty = current_commit(_ROOT)
        tests = tuple(
            TestResult(nodeid, outcome, self.requirements.get(nodeid, ()))
            for nodeid, outcome in self.outcomes.items()
        )
        write_results(self.path, TestRun(commit, dirty, tests))
