"""Suite-wide pytest plugin: requirement markers and the recorded results.

A test names the requirements it proves (ids from requirements/requirements.toml)::

    @pytest.mark.req("SEED-SOC-RANGE", "R156-7.2.2.1.2")
    def test_...

``pytest --req-results FILE`` (``make test`` passes it) writes every test's
outcome with its requirement ids to FILE; ``make compliance`` reads that file,
so the suite runs once. See docs/evidence.md.

Under pytest-xdist (``-n``) the tests are collected and run in worker processes
and only the controller sees every outcome: each item carries its requirement
ids in ``user_properties``, which travel with its reports to the controller, and
the controller alone writes FILE.
"""

from __future__ import annotations

import os
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


def _undo_readline_terminal_size() -> None:
    """Child processes inherit the environment this process was started with.

    pytest imports readline (its capture plugin, before any conftest), and GNU
    readline writes the terminal size it assumes into the C environment (COLUMNS=80,
    LINES=24 when there is no terminal). os.environ does not see it, but every child
    process inherits it: pytest-xdist's workers then start with COLUMNS=80 in
    os.environ, the CLI's module-level rich consoles fix their width to it at import,
    and output that a serial run leaves on one line wraps under ``-n``.
    """
    for name in ("COLUMNS", "LINES"):
        if name in os.environ:
            os.putenv(name, os.environ[name])
        else:
            os.unsetenv(name)


_undo_readline_terminal_size()  # in the controller and in every xdist worker


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
        config.pluginmanager.register(_Tagger(), "bmsfw-requirement-tagger")
        if not hasattr(config, "workerinput"):  # not an xdist worker: this process writes
            config.pluginmanager.register(_Recorder(Path(path)), "bmsfw-requirement-recorder")


_REQ_PROPERTY = "bmsfw-req"


class _Tagger:
    """Puts each collected test's requirement ids in its reports (user_properties)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            ids = [str(i) for mark in item.iter_markers("req") for i in mark.args]
            item.user_properties.append((_REQ_PROPERTY, tuple(dict.fromkeys(ids))))


class _Recorder:
    """One outcome per test, with the requirement ids its reports carry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requirements: dict[str, tuple[str, ...]] = {}
        self.outcomes: dict[str, TestOutcome] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == _REQ_PROPERTY:
                self.requirements[report.nodeid] = tuple(str(i) for i in value)
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
