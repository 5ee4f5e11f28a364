# Two entry points that work on a fresh machine with Python 3.11+:
#   make demo   - the main job on the embedded default (virtual BMS, SQLite)
#   make test   - the whole test suite, plus lint and type checks
#   make compliance - docs/compliance.md from the results `make test` recorded
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# every test's outcome and requirement ids, written by `make test` (tests/conftest.py)
TEST_RESULTS := build/test-results.json

.PHONY: demo test lint typecheck bench compliance clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bmsfw demo

# TEST_WORKERS=3 runs the suite in 3 pytest-xdist processes, a test file to one worker
# (its module fixtures are made once); 0 (the default, CI) runs it in this process.
TEST_WORKERS ?= 0

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --req-results=$(TEST_RESULTS)

# Reads the results of the last `make test` (runs it when there are none): the
# suite runs once in CI. Fails when a requirement lacks a passing test.
compliance: $(STAMP)
	@test -f $(TEST_RESULTS) || $(MAKE) test
	$(BIN)/python -m bmsfw.evidence.compliance --results $(TEST_RESULTS) --out docs/compliance.md

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
