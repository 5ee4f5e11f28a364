"""The traceability check itself: the recorder plugin, the catalogue and the CI rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.evidence.compliance import (
    Catalogue,
    Gap,
    Requirement,
    TestResult,
    TestRun,
    evaluate,
    load_catalogue,
    load_results,
    main,
    parse_catalogue,
    render_markdown,
    write_results,
)
from bmsfw.evidence.errors import CatalogueInvalidError, TestResultsUnreadableError

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "requirements" / "requirements.toml"

A = Requirement("SEED-A", "field guide", "section 1", "a")
B = Requirement("SEED-B", "field guide", "section 2", "b")
G = Requirement("SEED-G", "field guide", "section 3", "g", Gap(14, "needs the server side"))


def _run(*tests: TestResult) -> TestRun:
    return TestRun("abc", False, tests)


def test_every_requirement_proven_by_a_passing_test_is_clean() -> None:
    matrix = evaluate(
        Catalogue((A, B, G)),
        _run(
            TestResult("t.py::a", "passed", ("SEED-A",)),
            TestResult("t.py::ab", "passed", ("SEED-A", "SEED-B")),
            TestResult("t.py::plain", "passed"),
        ),
    )
    assert matrix.ok, matrix.problems
    assert [r.status for r in matrix.rows] == ["pass", "pass", "gap"]
    assert [t.nodeid for t in matrix.rows[0].tests] == ["t.py::a", "t.py::ab"]


def test_a_requirement_that_loses_its_test_fails_the_check() -> None:
    before = evaluate(
        Catalogue((A, B)), _run(TestResult("t.py::a", "passed", ("SEED-A", "SEED-B")))
    )
    assert before.ok
    # the marker lost SEED-B (or the test was deleted): B has nothing left
    after = evaluate(Catalogue((A, B)), _run(TestResult("t.py::a", "passed", ("SEED-A",))))
    assert not after.ok
    assert after.problems == (
        "SEED-B: no passing test (no test names it) and not listed as a known gap",
    )
    assert after.rows[1].status == "missing"


@pytest.mark.parametrize("outcome", ["skipped", "failed"])
def test_a_requirement_whose_only_test_did_not_pass_fails_the_check(outcome: str) -> None:
    matrix = evaluate(Catalogue((A,)), _run(TestResult("t.py::a", outcome, ("SEED-A",))))  # type: ignore[arg-type]
    assert not matrix.ok
    assert matrix.rows[0].status == ("fail" if outcome == "failed" else "missing")


def test_one_failing_test_fails_the_requirement_even_when_another_passes() -> None:
    matrix = evaluate(
        Catalogue((A,)),
        _run(
            TestResult("t.py::a1", "passed", ("SEED-A",)),
            TestResult("t.py::a2", "failed", ("SEED-A",)),
        ),
    )
    assert matrix.rows[0].status == "fail"
    assert matrix.problems == ("SEED-A: 1 test(s) fail, e.g. t.py::a2",)


def test_a_test_naming_an_unknown_requirement_fails_the_check() -> None:
    matrix = evaluate(
        Catalogue((A,)), _run(TestResult("t.py::a", "passed", ("SEED-A", "SEED-TYPO")))
    )
    assert not matrix.ok
    assert matrix.unknown == {"SEED-TYPO": ("t.py::a",)}
    assert "SEED-TYPO" in matrix.problems[0] and "not in the catalogue" in matrix.problems[0]


def test_a_gap_that_a_passing_test_closed_must_be_removed() -> None:
    matrix = evaluate(Catalogue((G,)), _run(TestResult("t.py::g", "passed", ("SEED-G",))))
    assert matrix.rows[0].status == "pass"
    assert matrix.problems == (
        "SEED-G: listed as a gap (issue 14) but t.py::g passes: remove the gap entry",
    )


def test_markdown_lists_gaps_first_then_every_requirement() -> None:
    matrix = evaluate(Catalogue((A, G)), _run(TestResult("t.py::a", "passed", ("SEED-A",))))
    text = render_markdown(matrix, head="abc")
    assert text.index("## Known gaps") < text.index("## Every requirement")
    assert "| `SEED-G` g | field guide | section 3 | needs the server side | #14 |" in text
    assert "| `SEED-A` a | field guide | section 1 | pass | `t.py::a` |" in text
    assert "Problems" not in text


@pytest.mark.parametrize(
    ("toml_entry", "message"),
    [
        ('id = "SEED-A"\nsource = "s"\nclause = "c"', "`summary`"),
        ('id = "seed a"\nsource = "s"\nclause = "c"\nsummary = "x"', "upper case"),
        ('id = "SEED-A"\nsource = "s"\nclause = "c"\nsummary = "x"\nverified = true', "unknown"),
        ('id = "SEED-A"\nsource = "s"\nclause = "c"\nsummary = "x"\ngap = { note = "n" }', "issue"),
    ],
)
def test_catalogue_entries_are_validated(tmp_path: Path, toml_entry: str, message: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(f"[[requirement]]\n{toml_entry}\n", encoding="utf-8")
    with pytest.raises(CatalogueInvalidError, match=message):
        load_catalogue(path)


def test_repeated_ids_are_refused() -> None:
    entry = {"id": "SEED-A", "source": "s", "clause": "c", "summary": "x"}
    with pytest.raises(CatalogueInvalidError, match="used twice"):
        parse_catalogue({"requirement": [entry, entry]})


def test_the_repository_catalogue_is_valid_and_every_gap_names_an_open_issue() -> None:
    catalogue = load_catalogue(CATALOGUE)
    assert len(catalogue.requirements) >= 40
    sources = {r.source for r in catalogue.requirements}
    for expected in ("field guide", "IEC 62443-4-2", "UN R156", "NIST SP 800-193", "IEC 61508"):
        assert any(s.startswith(expected) for s in sources), expected
    for req in catalogue.requirements:
        if req.gap is not None:
            assert 12 <= req.gap.issue <= 18, req.id  # the issues open this session


def test_results_file_round_trip_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    run = _run(TestResult("t.py::a", "passed", ("SEED-A",)), TestResult("t.py::b", "skipped"))
    write_results(path, run)
    assert load_results(path) == run
    path.write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(TestResultsUnreadableError, match="not a bmsfw-test-results/1"):
        load_results(path)
    with pytest.raises(TestResultsUnreadableError, match="no recorded test results"):
        load_results(tmp_path / "absent.json")


def test_main_writes_the_matrix_and_exits_1_on_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue = tmp_path / "r.toml"
    catalogue.write_text(
        '[[requirement]]\nid = "SEED-A"\nsource = "field guide"\nclause = "c"\nsummary = "a"\n',
        encoding="utf-8",
    )
    results, out = tmp_path / "results.json", tmp_path / "docs" / "compliance.md"
    args = ["--catalogue", str(catalogue), "--results", str(results), "--out", str(out)]
    assert main(args) == 2  # no results yet: a clear error, nothing written
    assert "make test" in capsys.readouterr().err and not out.exists()
    write_results(results, _run(TestResult("t.py::a", "passed", ("SEED-A",))))
    assert main(args) == 0 and "| pass |" in out.read_text(encoding="utf-8")
    write_results(results, _run(TestResult("t.py::a", "passed", ())))
    assert main(args) == 1
    assert "SEED-A: no passing test" in capsys.readouterr().err
    assert "**NO TEST**" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "xdist"])
def test_the_plugin_records_outcomes_with_requirement_ids(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    # With xdist (as `make test` runs) the workers collect and run the tests and the
    # controller alone writes the file. Only xdist is loaded there: every other
    # plugin would start three times (seconds each on a loaded CI machine).
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_sample="""
        import pytest

        @pytest.mark.req("SEED-A", "SEED-B")
        def test_ok():
            pass

        @pytest.mark.req("SEED-A")
        def test_bad():
            assert False

        @pytest.mark.req("SEED-C")
        @pytest.mark.skip(reason="no hardware")
        def test_skipped():
            pass

        @pytest.fixture
        def broken():
            yield
            raise RuntimeError("teardown")

        @pytest.mark.req("SEED-D")
        def test_teardown_fails(broken):
            pass

        class TestGroup:
            @pytest.mark.req("SEED-E")
            def test_method(self):
                pass

        def test_unmarked():
            pass

        def test_deselected():
            pass
        """
    )
    out = pytester.path / "results.json"
    args = ["--strict-markers", "--req-results", str(out), "-k", "not deselected"]
    if workers:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        result = pytester.runpytest_subprocess(*args, "-p", "xdist", "-n", str(workers))
    else:
        result = pytester.runpytest(*args)
    result.assert_outcomes(passed=4, failed=1, skipped=1, errors=1)
    recorded = {t.nodeid.split("::", 1)[1]: t for t in load_results(out).tests}
    assert {k: (v.outcome, v.requirements) for k, v in recorded.items()} == {
        "test_ok": ("passed", ("SEED-A", "SEED-B")),
        "test_bad": ("failed", ("SEED-A",)),
        "test_skipped": ("skipped", ("SEED-C",)),
        "test_teardown_fails": ("failed", ("SEED-D",)),
        "TestGroup::test_method": ("passed", ("SEED-E",)),
        "test_unmarked": ("passed", ()),
    }


def test_without_the_option_nothing_is_recorded(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile('import pytest\n\n@pytest.mark.req("SEED-A")\ndef test_ok():\n    pass\n')
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)
    assert not list(pytester.path.rglob("*.json"))
