"""Tokens can expire (shown in the access review); the operator commands refuse to send a
token over plain HTTP to another host unless told to."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, update

from bmsfw.cli._fleet import loopback_url
from bmsfw.cli._main import cli
from bmsfw.cli._registry import register_all
from bmsfw.errors import UsageError
from bmsfw.fleet.errors import FleetUnreachableError
from bmsfw.fleet.models import Credential, Gateway

from .conftest import Fleet, bms

DAY_S = 86400.0


def test_an_expired_token_is_refused_and_the_access_review_shows_the_expiry(
    fleet: Fleet,
) -> None:
    created = fleet.call(
        "POST", "/api/v1/tokens", json={"name": "temp", "role": "viewer", "expires_in_days": 1}
    )
    assert created["expires_at"]
    temp = {"Authorization": f"Bearer {created['token']}"}
    assert fleet.client.get("/api/v1/whoami", headers=temp).status_code == 200  # now cached
    fleet.clock.advance(DAY_S + 1)
    refused = fleet.client.get("/api/v1/whoami", headers=temp)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "BMSFW-E602"
    review = {r["name"]: r for r in fleet.call("GET", "/api/v1/access-review")}
    assert review["temp"]["expires_at"] == created["expires_at"]
    assert review["temp"]["active"] is False
    assert review["test-viewer"]["expires_at"] is None and review["test-viewer"]["active"]
    too_long = fleet.client.post(
        "/api/v1/tokens",
        headers=fleet.h("admin"),
        json={"name": "x", "role": "viewer", "expires_in_days": 100_000},
    )
    assert too_long.status_code == 422


def test_an_expired_gateway_token_checks_in_nothing(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    engine = create_engine(fleet.db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(Credential)
                .where(Credential.name == "gateway:gw")
                .values(expires_at=fleet.clock.now())
            )
            seen_before = conn.execute(select(Gateway.last_seen_at)).scalar_one()
        fleet.clock.advance(10)  # past the expiry and the credential cache's 5 s
        answer = fleet.check_in_raw("gw", {"devices": [bms("S1")]})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "BMSFW-E602"
        with engine.connect() as conn:
            assert conn.execute(select(Gateway.last_seen_at)).scalar_one() == seen_before
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8443", True),
        ("http://localhost:8443", True),
        ("http://[::1]:8443", True),
        ("http://127.0.0.2", True),
        ("http://127.0.0.1.example.com", False),
        ("http://localhost@fleet.example.com", False),
        ("http://localhost.example.com", False),
        ("http://fleet.example.com", False),
    ],
)
def test_loopback_is_decided_on_the_parsed_host(url: str, loopback: bool) -> None:
    assert loopback_url(url) is loopback


def _bmsfw(*args: str) -> Any:
    register_all(cli)
    return CliRunner().invoke(cli, list(args))


def test_operator_commands_refuse_plain_http_to_another_host() -> None:
    # The entry point turns these errors into its message and exit code (docs/cli.md).
    for url in ("http://fleet.invalid:8443", "http://127.0.0.1.invalid", "HTTP://fleet.invalid"):
        result = _bmsfw("fleet", "campaign", "1", "--server", url, "--token", "bmsfw_op_secret")
        assert isinstance(result.exception, UsageError), result.exception
        assert "refusing to send the operator token" in str(result.exception)
    # Told otherwise, it tries (and fails to reach the host, with its own error).
    told = _bmsfw(
        "fleet", "campaign", "1", "--server", "http://fleet.invalid:8443",
        "--token", "bmsfw_op_secret", "--insecure-http",
    )  # fmt: skip
    assert isinstance(told.exception, FleetUnreachableError), told.exception
