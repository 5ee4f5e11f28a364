"""A fuzzer we did not write (schemathesis) against the server's own OpenAPI document, on
SQLite and PostgreSQL: no server error, no answer outside its schema, no status the
document does not declare. Bounded (a few examples per operation) to stay in seconds."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import Fleet, bms, make_release

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def fuzzed(fleet: Fleet, pki: Any) -> Any:
    """The app with something in it (a gateway with a device, a release, a campaign), its
    OpenAPI document served to a viewer, loaded by schemathesis."""
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1"), bms("S2")])
    release = fleet.upload(make_release(pki))
    fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "c",
            "release_id": release["id"],
            "phases": [{"name": "all", "percent": 100}],
        },
    )
    fleet.check_in("gw", [bms("S1"), bms("S2")])
    schema = schemathesis.openapi.from_asgi(
        "/api/v1/openapi.json", fleet.app, headers=fleet.h("viewer")
    )
    return fleet, schema


def test_fuzzed_requests_get_declared_answers(fuzzed: Any) -> None:
    fleet, schema = fuzzed
    failures: list[str] = []
    operations = 0
    calls: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        roles = operation.definition.raw.get("x-bmsfw-roles", [])
        who = "gw" if roles == ["gateway"] else "admin"
        headers = fleet.h(who) if roles else {}

        try:
            _fuzz(operation, headers, calls)()
        except Exception as exc:  # collect every operation's first failure, then report
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert operations >= 30
    assert len(calls) >= 5 * operations  # the fuzzer really ran (statuses seen below)
    assert not failures, "\n\n".join(failures)
    print(
        f"{len(calls)} fuzzed requests over {operations} operations; statuses:", sorted(set(calls))
    )


def _fuzz(operation: Any, headers: dict[str, str], calls: list[int]) -> Any:
    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        calls.append(response.status_code)

    return run
