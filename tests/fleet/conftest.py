"""Fleet test fixtures: a real vendor PKI and signed releases, the app on SQLite
(always) and PostgreSQL (when BMSFW_TEST_POSTGRES_URL is set), a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import create_token, init_database
from bmsfw.fleet.clock import FakeClock
from bmsfw.package import (
    ComponentSource,
    HardwareCompat,
    VendorPki,
    build_release,
    create_pki,
    sign_release,
)
from server_support import serve_process

POSTGRES_URL = os.environ.get("BMSFW_TEST_POSTGRES_URL", "")
START = dt.datetime(2025, 1, 6, 12, 0, tzinfo=dt.UTC)  # a Monday


@pytest.fixture(scope="session")
def pki() -> VendorPki:
    return create_pki("ed25519", now=START - dt.timedelta(days=1))


@pytest.fixture(scope="session")
def root_pem(pki: VendorPki) -> bytes:
    return pki.root_certificate.public_bytes(serialization.Encoding.PEM)


_RELEASE_CACHE: dict[tuple[Any, ...], bytes] = {}


def make_release(
    pki: VendorPki,
    version: str = "1.1.0",
    *,
    security_counter: int = 2,
    safety_class: str = "standard",
    model: str = "BMS-48V",
    revisions: tuple[str, ...] = ("A", "B"),
) -> bytes:
    key = (id(pki), version, security_counter, safety_class, model, revisions)
    if key not in _RELEASE_CACHE:
        firmware = (f"firmware {version} ".encode() * 64)[:2048]
        unsigned = build_release(
            product="bms-app",
            version=version,
            security_counter=security_counter,
            hardware=HardwareCompat(model, revisions),
            min_bootloader_version="1.0.0",
            components=[ComponentSource.firmware("app", firmware)],
            image_signing_key=pki.image_signing_key,
            safety_class=safety_class,  # type: ignore[arg-type]
            release_notes=f"release {version}",
            created_at=START,
        )
        _RELEASE_CACHE[key] = sign_release(unsigned, pki.signer())
    return _RELEASE_CACHE[key]


def _db_params() -> list[Any]:
    params: list[Any] = ["sqlite"]
    params.append(
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not POSTGRES_URL, reason="BMSFW_TEST_POSTGRES_URL not set"),
            ],
        )
    )
    return params


@pytest.fixture(params=_db_params())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    # One schema per test: isolated, and dropped afterwards whatever happened.
    schema = f"bmsfw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class Fleet:
    """A running app (in-process) with tokens for every role."""

    client: TestClient
    clock: FakeClock
    db_url: str
    tokens: dict[str, str]
    gateways: dict[str, str] = field(default_factory=dict)

    @property
    def app(self) -> Any:
        return self.client.app

    @property
    def service(self) -> Any:
        return self.client.app.state.service  # type: ignore[attr-defined]

    def h(self, role: str) -> dict[str, str]:
        token = self.tokens.get(role) or self.gateways[role]
        return {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, role: str = "admin", **kwargs: Any) -> Any:
        response = self.client.request(method, path, headers=self.h(role), **kwargs)
        assert response.status_code < 300, (response.status_code, response.text)
        return response.json()

    def add_gateway(self, name: str, site: str, tags: list[str] | None = None) -> str:
        result = self.call(
            "POST", "/api/v1/gateways", json={"name": name, "site": site, "tags": tags or []}
        )
        self.gateways[name] = result["token"]
        return str(result["token"])

    def check_in(self, gateway: str, devices: list[dict[str, Any]], **extra: Any) -> Any:
        return self.call(
            "POST", "/api/v1/agent/check-in", gateway, json={"devices": devices, **extra}
        )

    def check_in_raw(self, gateway: str, body: dict[str, Any]) -> Any:
        """The check-in's answer as it is (for refusals)."""
        return self.client.post("/api/v1/agent/check-in", headers=self.h(gateway), json=body)

    def report(self, gateway: str, serial: str, campaign_id: int, state: str, **kw: Any) -> Any:
        if state == "succeeded" and "firmware_version" not in kw:
            # An honest agent names the version the BMS runs: the campaign's release.
            release_id = self.call("GET", f"/api/v1/campaigns/{campaign_id}")["release_id"]
            kw["firmware_version"] = self.call("GET", f"/api/v1/releases/{release_id}")["version"]
        return self.call(
            "POST",
            "/api/v1/agent/reports",
            gateway,
            json={"device_serial": serial, "campaign_id": campaign_id, "state": state, **kw},
        )

    def upload(self, data: bytes, role: str = "release_manager") -> Any:
        return self.call(
            "POST", "/api/v1/releases", role, content=data, params={"filename": "r.bmsfw"}
        )


class StreamedBody:
    """A request body sent in chunks straight to the app's ASGI interface (the test
    client would read it whole first), counting how much of it the server pulled: the
    chunks of ``data``, or ``total`` bytes of spaces made one chunk at a time."""

    def __init__(self, total: int, chunk: int = 256 * 1024, data: bytes | None = None) -> None:
        self.total = len(data) if data is not None else total
        self.chunk, self.pulled, self.data = chunk, 0, data

    def post(
        self, app: Any, path: str, headers: dict[str, str], query: bytes = b""
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("testclient", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        answer: dict[str, Any] = {"status": 0, "body": b""}

        async def receive() -> dict[str, Any]:
            start, self.pulled = self.pulled, min(self.total, self.pulled + self.chunk)
            part = (
                b" " * (self.pulled - start)
                if self.data is None
                else self.data[start : self.pulled]
            )
            return {"type": "http.request", "body": part, "more_body": self.pulled < self.total}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        asyncio.run(app(scope, receive, send))
        return answer["status"], answer["body"]


@contextlib.contextmanager
def serve_two_processes(
    db_url: str, tmp_path: Path, root_pem: bytes, *extra_args: str
) -> Iterator[tuple[str, str, str]]:
    """Two `bmsfw fleet serve` processes on one database, each in a working directory of
    its own (``host-a``, ``host-b`` under ``tmp_path``); yields both URLs and an admin
    token."""
    admin = init_database(db_url)
    assert admin is not None
    root = tmp_path / "root.pem"
    root.write_bytes(root_pem)
    args = ["--db", db_url, "--trust-root", str(root), "--access-log", "", *extra_args]
    dir_a, dir_b = tmp_path / "host-a", tmp_path / "host-b"
    dir_a.mkdir()
    dir_b.mkdir()
    with serve_process(args, cwd=dir_a) as a, serve_process(args, cwd=dir_b) as b:
        yield a.url, b.url, admin


def bms(serial: str, version: str = "1.0.0", **kw: Any) -> dict[str, Any]:
    record = {
        "serial": serial,
        "model": "BMS-48V",
        "hw_revision": "A",
        "bootloader_version": "1.0.0",
        "firmware_version": version,
        "security_counter": 1,
        "soc_pct": 55.0,
        "temperature_c": 24.5,
    }
    record.update(kw)
    return record


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """ServerConfig fields a test module overrides (by defining this fixture)."""
    return {}


@pytest.fixture
def fleet(
    db_url: str, tmp_path: Path, root_pem: bytes, config_overrides: dict[str, Any]
) -> Iterator[Fleet]:
    clock = FakeClock(START)
    admin = init_database(db_url, clock=clock)
    assert admin is not None
    tokens = {"admin": admin}
    for role in ("viewer", "operator", "release_manager"):
        tokens[role] = str(
            create_token(db_url, role=role, name=f"test-{role}", clock=clock)["token"]
        )
    config = ServerConfig(
        db_url=db_url,
        trust_root_pem=root_pem,
        tick_interval_s=0,
        db_pool_size=4,
        # Tests poll and fail on purpose far faster than agents: the limits have tests
        # of their own (test_limits.py).
        **{"check_ins_per_s": 0, "auth_failures_per_min": 0, **config_overrides},
    )
    app = create_app(config, clock=clock)
    with TestClient(app) as client:
        yield Fleet(client, clock, db_url, tokens)
