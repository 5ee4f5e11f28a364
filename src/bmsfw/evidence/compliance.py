"""Requirements traceability: catalogue + recorded test results -> a compliance matrix.

The catalogue (``requirements/requirements.toml``) lists every requirement bmsfw
claims to meet: an id, the source and clause it comes from, one line in our own
words, and — when no test proves it yet — a known gap naming the issue that
will close it. Tests name what they prove with ``@pytest.mark.req("ID", ...)``;
the pytest plugin in ``tests/conftest.py`` records each test's outcome with its
requirement ids (``pytest --req-results FILE``, which ``make test`` passes).

:func:`evaluate` joins the two (pure, no I/O) and lists the problems CI fails on:

* a requirement without a passing test that is not listed as a known gap;
* a requirement with a failing test;
* a test that names a requirement the catalogue does not know;
* a known gap that a passing test now proves (remove the gap entry).

``python -m bmsfw.evidence.compliance`` (``make compliance``) writes
``docs/compliance.md`` and exits 1 when there is a problem.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bmsfw.evidence.errors import CatalogueInvalidError, TestResultsUnreadableError

__all__ = [
    "RESULTS_FORMAT",
    "Catalogue",
    "Gap",
    "Matrix",
    "Requirement",
    "RequirementStatus",
    "TestOutcome",
    "TestResult",
    "TestRun",
    "evaluate",
    "load_catalogue",
    "load_results",
    "main",
    "render_markdown",
    "write_results",
]

RESULTS_FORMAT = "bmsfw-test-results/1"
TestOutcome = Literal["passed", "failed", "skipped"]
Status = Literal["pass", "fail", "gap", "missing"]

_ID_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:[-.][A-Z0-9]+)+$")


@dataclass(frozen=True)
class Gap:
    """A requirement no test proves yet, and the issue that will."""

    issue: int
    note: str


@dataclass(frozen=True)
class Requirement:
    id: str
    source: str  # the document: "field guide", "IEC 62443-4-2", "UN R156", ...
    clause: str  # where in it: "CR 3.4", "§7.2.2.1.1", "section 1 (preparation)"
    summary: str  # one line in our own words
    gap: Gap | None = None


@dataclass(frozen=True)
class Catalogue:
    requirements: tuple[Requirement, ...]

    def ids(self) -> frozenset[str]:
        return frozenset(r.id for r in self.requirements)


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # a record, not a pytest test class

    nodeid: str
    outcome: TestOutcome
    requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class TestRun:
    __test__ = False

    commit: str
    dirty: bool
    tests: tuple[TestResult, ...]


@dataclass(frozen=True)
class RequirementStatus:
    requirement: Requirement
    status: Status
    tests: tuple[TestResult, ...]


@dataclass(frozen=True)
class Matrix:
    run: TestRun
    rows: tuple[RequirementStatus, ...]
    unknown: Mapping[str, tuple[str, ...]]  # requirement id -> tests naming it
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


# --- the catalogue -----------------------------------------------------------------


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogueInvalidError(f"{where}: `{key}` must be a non-empty string")
    return value.strip()


def parse_catalogue(data: Mapping[str, Any], origin: str = "catalogue") -> Catalogue:
    """The catalogue from parsed TOML (``[[requirement]]`` tables); validated."""
    entries = data.get("requirement")
    if not isinstance(entries, list) or not entries:
        raise CatalogueInvalidError(f"{origin}: no [[requirement]] entries")
    seen: set[str] = set()
    requirements = []
    for index, entry in enumerate(entries, 1):
        where = f"{origin}: requirement #{index}"
        if not isinstance(entry, dict):
            raise CatalogueInvalidError(f"{where} is not a table")
        rid = _text(entry, "id", where)
        where = f"{origin}: requirement {rid}"
        if not _ID_RE.match(rid):
            raise CatalogueInvalidError(
                f"{where}: id must be upper case words joined by - or . (e.g. SEED-SOC-RANGE)"
            )
        if rid in seen:
            raise CatalogueInvalidError(f"{where}: id used twice")
        seen.add(rid)
        unknown_keys = set(entry) - {"id", "source", "clause", "summary", "gap"}
        if unknown_keys:
            raise CatalogueInvalidError(f"{where}: unknown key(s) {sorted(unknown_keys)}")
        gap = None
        if "gap" in entry:
            raw = entry["gap"]
            if not isinstance(raw, dict):
                raise CatalogueInvalidError(f"{where}: gap must be {{ issue = N, note = '...' }}")
            issue = raw.get("issue")
            if not isinstance(issue, int) or isinstance(issue, bool) or issue <= 0:
                raise CatalogueInvalidError(f"{where}: gap.issue must be an issue number")
            gap = Gap(issue, _text(raw, "note", f"{where} gap"))
        requirements.append(
            Requirement(
                rid,
                _text(entry, "source", where),
                _text(entry, "clause", where),
                _text(entry, "summary", where),
                gap,
            )
        )
    return Catalogue(tuple(requirements))


def load_catalogue(path: str | Path) -> Catalogue:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogueInvalidError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueInvalidError(f"{path} is not valid TOML: {exc}") from exc
    return parse_catalogue(data, str(path))


# --- recorded test results ---------------------------------------------------------


def results_to_dict(run: TestRun) -> dict[str, Any]:
    return {
        "format": RESULTS_FORMAT,
        "commit": run.commit,
        "dirty": run.dirty,
        "tests": [
            {"nodeid": t.nodeid, "outcome": t.outcome, "requirements": list(t.requirements)}
            for t in run.tests
        ],
    }


def write_results(path: str | Path, run: TestRun) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(results_to_dict(run), indent=1) + "\n", encoding="utf-8")
    tmp.replace(target)


def load_results(path: str | Path) -> TestRun:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TestResultsUnreadableError(f"no recorded test results at {path}") from None
    except OSError as exc:
        raise TestResultsUnreadableError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise TestResultsUnreadableError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise TestResultsUnreadableError(f"{path} is not a {RESULTS_FORMAT} file")
    try:
        tests = tuple(
            TestResult(str(t["nodeid"]), t["outcome"], tuple(str(r) for r in t["requirements"]))
            for t in data["tests"]
        )
    except (KeyError, TypeError) as exc:
        raise TestResultsUnreadableError(f"{path}: a test record lacks {exc}") from exc
    bad = [t.nodeid for t in tests if t.outcome not in ("passed", "failed", "skipped")]
    if bad:
        raise TestResultsUnreadableError(f"{path}: unknown outcome for {bad[0]}")
    return TestRun(str(data.get("commit", "")), bool(data.get("dirty")), tests)


def current_commit(root: str | Path = ".") -> tuple[str, bool]:
    """(HEAD, tree has changes) of the checkout at ``root``; ("", False) outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "", False
    return head, bool(status.strip())


# --- the pure join -----------------------------------------------------------------


def evaluate(catalogue: Catalogue, run: TestRun) -> Matrix:
    """Requirement -> tests -> status, and every problem CI fails on (see the module doc)."""
    by_requirement: dict[str, list[TestResult]] = {}
    for test in run.tests:
        for rid in dict.fromkeys(test.requirements):
            by_requirement.setdefault(rid, []).append(test)
    known = catalogue.ids()
    unknown = {
        rid: tuple(t.nodeid for t in tests)
        for rid, tests in sorted(by_requirement.items())
        if rid not in known
    }
    problems = [
        f"{rid}: named by {len(nodeids)} test(s) (e.g. {nodeids[0]}) but not in the catalogue"
        for rid, nodeids in unknown.items()
    ]
    rows = []
    for req in catalogue.requirements:
        tests = tuple(by_requirement.get(req.id, ()))
        passed = [t for t in tests if t.outcome == "passed"]
        failed = [t for t in tests if t.outcome == "failed"]
        status: Status
        if failed:
            status = "fail"
            problems.append(f"{req.id}: {len(failed)} test(s) fail, e.g. {failed[0].nodeid}")
        elif passed:
            status = "pass"
            if req.gap is not None:
                problems.append(
                    f"{req.id}: listed as a gap (issue {req.gap.issue}) but "
                    f"{passed[0].nodeid} passes: remove the gap entry"
                )
        elif req.gap is not None:
            status = "gap"
        else:
            status = "missing"
            why = f"its {len(tests)} test(s) did not pass" if tests else "no test names it"
            problems.append(f"{req.id}: no passing test ({why}) and not listed as a known gap")
        rows.append(RequirementStatus(req, status, tests))
    return Matrix(run, tuple(rows), unknown, tuple(problems))


# --- the report --------------------------------------------------------------------

_BADGE = {"pass": "pass", "fail": "**FAIL**", "gap": "gap", "missing": "**NO TEST**"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _test_list(tests: Iterable[TestResult]) -> str:
    items = [f"`{t.nodeid}`" + ("" if t.outcome == "passed" else f" ({t.outcome})") for t in tests]
    return "<br>".join(items) if items else "—"


def render_markdown(matrix: Matrix, *, head: str = "") -> str:
    """docs/compliance.md: summary, problems, gaps first, then every requirement."""
    run = matrix.run
    counts = {s: sum(r.status == s for r in matrix.rows) for s in _BADGE}
    named = sum(bool(t.requirements) for t in run.tests)
    commit = run.commit[:12] or "unknown"
    lines = [
        "# Compliance matrix: requirement → tests → result",
        "",
        "Generated by `make compliance` from the requirements catalogue",
        "(`requirements/requirements.toml`) and the results `make test` recorded.",
        "Do not edit by hand. How it works and how to add a requirement:",
        "[evidence.md](evidence.md).",
        "",
        f"- test run on commit `{commit}`"
        + (" with uncommitted changes" if run.dirty else "")
        + (f" (checkout now at `{head[:12]}`)" if head and head != run.commit else ""),
        f"- {len(matrix.rows)} requirements: {counts['pass']} proven by passing tests, "
        f"{counts['gap']} known gaps, {counts['fail']} failing, "
        f"{counts['missing']} without a test",
        f"- {len(run.tests)} tests ran, {named} of them name the requirements they prove",
        "",
    ]
    if matrix.problems:
        lines += ["## Problems (CI fails on these)", ""]
        lines += [f"- {_cell(p)}" for p in matrix.problems]
        lines.append("")
    gaps = [r for r in matrix.rows if r.status == "gap"]
    lines += ["## Known gaps", ""]
    if gaps:
        lines += [
            "| requirement | source | clause | what is missing | issue |",
            "|---|---|---|---|---|",
        ]
        for row in gaps:
            req = row.requirement
            assert req.gap is not None
            lines.append(
                f"| `{req.id}` {_cell(req.summary)} | {_cell(req.source)} | {_cell(req.clause)} "
                f"| {_cell(req.gap.note)} | #{req.gap.issue} |"
            )
    else:
        lines.append("None.")
    lines += ["", "## Every requirement", ""]
    lines += ["| requirement | source | clause | result | tests |", "|---|---|---|---|---|"]
    for row in matrix.rows:
        req = row.requirement
        lines.append(
            f"| `{req.id}` {_cell(req.summary)} | {_cell(req.source)} | {_cell(req.clause)} "
            f"| {_BADGE[row.status]} | {_test_list(row.tests)} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bmsfw.evidence.compliance",
        description="Write the compliance matrix; exit 1 when a requirement lacks a passing test.",
    )
    parser.add_argument("--catalogue", type=Path, default=Path("requirements/requirements.toml"))
    parser.add_argument("--results", type=Path, default=Path("build/test-results.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/compliance.md"))
    args = parser.parse_args(argv)
    try:
        catalogue = load_catalogue(args.catalogue)
        run = load_results(args.results)
    except (CatalogueInvalidError, TestResultsUnreadableError) as exc:
        print(f"{exc}\n  remedy: {exc.remedy}", file=sys.stderr)
        return 2
    matrix = evaluate(catalogue, run)
    head, _ = current_commit(args.catalogue.resolve().parent)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_markdown(matrix, head=head), encoding="utf-8")
    counts = {s: sum(r.status == s for r in matrix.rows) for s in _BADGE}
    print(
        f"{args.out}: {len(matrix.rows)} requirements, {counts['pass']} pass, "
        f"{counts['gap']} known gaps, {counts['fail']} fail, {counts['missing']} without a test"
    )
    for problem in matrix.problems:
        print(f"compliance problem: {problem}", file=sys.stderr)
    return 1 if matrix.problems else 0


if __name__ == "__main__":
    sys.exit(main())
