"""Rate limits are shared by every server process: two real `bmsfw fleet serve`
processes on one database (SQLite and PostgreSQL) give a client the rate once, not
twice (the buckets are rows of the database, see bmsfw.fleet.rate_limits)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import bms, serve_two_processes

BURST = 4


@pytest.fixture
def two_processes(db_url: str, tmp_path: Path, root_pem: bytes) -> Iterator[tuple[str, str, str]]:
    limits = ["--check-ins-per-s", "0.02", "--check-in-burst", str(BURST)]
    limits += ["--auth-failures-per-min", str(BURST)]
    with serve_two_processes(db_url, tmp_path, root_pem, *limits) as urls:
        yield urls


def test_check_ins_through_two_processes_share_one_rate(
    two_processes: tuple[str, str, str],
) -> None:
    url_a, url_b, admin = two_processes
    created = httpx.post(
        f"{url_a}/api/v1/gateways",
        headers={"Authorization": f"Bearer {admin}"},
        json={"name": "gw", "site": "s"},
    )
    auth = {"Authorization": f"Bearer {created.json()['token']}"}
    statuses = []
    for i in range(2 * BURST + 2):  # alternating between the two processes
        answer = httpx.post(
            f"{(url_a, url_b)[i % 2]}/api/v1/agent/check-in",
            headers=auth,
            json={"devices": [bms("S1")]},
            timeout=30,
        )
        assert answer.status_code in (200, 429), answer.text
        if answer.status_code == 429:
            assert answer.json()["error"]["code"] == "BMSFW-E632"
            assert int(answer.headers["retry-after"]) >= 1
        statuses.append(answer.status_code)
    # The burst once for both processes (each process's own bucket would admit 2 x 4).
    assert statuses == [200] * BURST + [429] * (BURST + 2), statuses


def test_failed_authentications_through_two_processes_add_up(
    two_processes: tuple[str, str, str],
) -> None:
    url_a, url_b, admin = two_processes
    guess = {"Authorization": "Bearer bmsfw_op_guessed"}
    for url in (url_a, url_a, url_b, url_b):  # half the limit through each process
        assert httpx.get(f"{url}/api/v1/whoami", headers=guess).status_code == 401
    # Within a flush interval (5 s) both processes refuse this address whatever it
    # presents, though neither saw the limit's worth of failures itself.
    valid = {"Authorization": f"Bearer {admin}"}
    deadline = time.monotonic() + 20
    refused: dict[str, int] = {}
    while len(refused) < 2:
        assert time.monotonic() < deadline, f"only {sorted(refused)} refused"
        for url in (url_a, url_b):
            answer = httpx.get(f"{url}/api/v1/whoami", headers=valid)
            if answer.status_code == 429:
                assert answer.json()["error"]["code"] == "BMSFW-E632"
                refused[url] = answer.status_code
            else:
                assert answer.status_code == 200, answer.text
        time.sleep(0.5)
