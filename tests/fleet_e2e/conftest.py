"""End-to-end fleet fixtures: a vendor PKI, tiny signed releases, a test CA, and the real
fleet server under uvicorn (HTTPS, in a thread, on a free port) with an admin token."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_support import Vendor
from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.fleet.testing import TestTlsFiles, write_test_ca_and_server
from bmsfw.fleet.tuf_repo import TufSettings
from bmsfw.sim.fleet import SimFleet, SimFleetConfig
from server_support import serve_https


@pytest.fixture(scope="session")
def vendor() -> Vendor:
    return Vendor.lab()


@pytest.fixture(scope="session")
def releases(vendor: Vendor) -> dict[str, bytes]:
    return {
        "1.0.0": vendor.release("1.0.0", 1),
        "2.0.0": vendor.release("2.0.0", 2),
        "2.1.0": vendor.release("2.1.0", 3),
        "3.0.0-safety": vendor.release("3.0.0", 4, safety_class="safety-critical"),
    }


Tls = TestTlsFiles


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return write_test_ca_and_server(tmp_path_factory.mktemp("tls"), ca_name="bmsfw e2e test CA")


@dataclass
class Server:
    url: str
    db_url: str
    admin_token: str
    ca: Path

    def client(self, token: str | None = None) -> FleetClient:
        return FleetClient(ClientConfig(self.url, token or self.admin_token, ca_file=self.ca))

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self.client() as c:
            if method == "GET":
                return c.get(path)
            return c.post(path, body)


@pytest.fixture
def server_factory(tmp_path: Path, vendor: Vendor, tls: Tls) -> Iterator[Callable[..., Server]]:
    """Start fleet servers (real uvicorn, HTTPS; SQLite unless ``db_url`` names another
    database); all stopped at the end."""
    with contextlib.ExitStack() as running:

        def start(
            name: str = "fleet",
            *,
            poll_interval_s: int = 1,
            tuf: TufSettings | None = None,
            db_url: str | None = None,
        ) -> Server:
            db_url = db_url or f"sqlite:///{tmp_path / (name + '.db')}"
            admin = init_database(db_url)
            assert admin is not None
            config = ServerConfig(
                db_url=db_url,
                trust_root_pem=vendor.root_pem,
                poll_interval_s=poll_interval_s,
                tick_interval_s=0.2,
                migrate=False,
                tuf=tuf,
            )
            url = running.enter_context(serve_https(create_app(config), tls, name))
            return Server(url, db_url, admin, tls.ca)

        yield start


def wait_for(
    what: str, condition: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")


def one_gateway_fleet(tmp_path: Path, vendor: Vendor, initial: bytes, server: Server) -> SimFleet:
    """One registered gateway with two virtual BMS running ``initial`` (close it after)."""
    fleet = SimFleet(
        SimFleetConfig(
            server_url=server.url,
            state_dir=tmp_path / "sim",
            trust_root_pem=vendor.root_pem,
            initial_release=initial,
            gateways=1,
            bms_per_gateway=2,
            ca_file=server.ca,
        )
    )
    with server.client() as admin:
        fleet.build(fleet.register(admin))
    return fleet


@pytest.fixture
def one_gateway(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
) -> Iterator[tuple[Server, SimFleet]]:
    """A server and :func:`one_gateway_fleet` on 1.0.0, after its first check-in (the
    inventory); the fleet is closed after the test."""
    server = server_factory()
    fleet = one_gateway_fleet(tmp_path, vendor, releases["1.0.0"], server)
    fleet.gateways[0].agent.run_once()
    try:
        yield server, fleet
    finally:
        fleet.close()
