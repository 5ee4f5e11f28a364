"""Fixtures of the hostile-server suite: a vendor PKI and releases, the hostile HTTPS
server, and a real :class:`~bmsfw.fleet.agent.Agent` with two virtual BMS behind it
(in process, on a simulated clock), with short bounds so every attack ends in seconds."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent_support import Vendor
from bmsfw.fleet.agent import Agent, AgentConfig
from bmsfw.fleet.client import ClientConfig, ClientLimits, FleetClient
from bmsfw.fleet.testing import TestTlsFiles, write_test_ca_and_server
from bmsfw.sim import SimClock
from bmsfw.sim.fleet import SimBmsProvider, provision_sim_bms
from bmsfw.update.profile import UpdateProfile

from .hostile import API, HostileServer

SERIALS = ["HOST0001", "HOST0002"]
# Short bounds for the suite (the defaults are minutes, see docs/agent.md "Bounds").
LIMITS = ClientLimits(
    max_answer_bytes=256 * 1024,
    answer_deadline_s=1.5,
    min_download_rate_bps=8_000.0,
    download_grace_s=1.5,
)


@pytest.fixture(scope="session")
def vendor() -> Vendor:
    return Vendor.lab()


@pytest.fixture(scope="session")
def releases(vendor: Vendor) -> dict[str, bytes]:
    return {
        "1.0.0": vendor.release("1.0.0", 1),
        "0.9.0": vendor.release("0.9.0", 1),  # lower version, same counter as 1.0.0
        "2.0.0": vendor.release("2.0.0", 2),
        "2.1.0": vendor.release("2.1.0", 3),
    }


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TestTlsFiles:
    return write_test_ca_and_server(tmp_path_factory.mktemp("tls"), ca_name="hostile test CA")


@pytest.fixture
def server(tls: TestTlsFiles) -> Iterator[HostileServer]:
    hostile = HostileServer(tls.cert, tls.key)
    yield hostile
    hostile.close()


@pytest.fixture
def other(tls: TestTlsFiles) -> Iterator[HostileServer]:
    """A second host (the attacker's, or a CDN): it must see only what the test allows."""
    hostile = HostileServer(tls.cert, tls.key)
    yield hostile
    hostile.close()


def offer_for(
    release_id: int,
    data: bytes,
    version: str,
    counter: int,
    serial: str,
    *,
    campaign_id: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """A well-formed offer (docs/fleet.md) for ``data``; ``overrides`` make it hostile."""
    offer: dict[str, Any] = {
        "campaign_id": campaign_id,
        "release_id": release_id,
        "device_serial": serial,
        "state": "offered",
        "product": "BMS-16S firmware",
        "version": version,
        "security_counter": counter,
        "artifact_url": f"{API}/releases/{release_id}/artifact",
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "policy": {
            "bandwidth_floor_bps": 0,
            "maintenance_timezone": "UTC",
            "maintenance_windows": [],
            "install_allowed_now": True,
        },
    }
    offer.update(overrides)
    return offer


@dataclass
class Site:
    """One gateway: the agent, its virtual BMS, and the snapshot of their flash."""

    agent: Agent
    provider: SimBmsProvider
    paths: list[Path]
    state_dir: Path
    flash: dict[str, str] = field(default_factory=dict)

    def snapshot(self) -> dict[str, str]:
        """SHA-256 of every BMS's flash file (banks, trailers, staged transfer)."""
        return {
            path.name: hashlib.sha256((path / "flash.bin").read_bytes()).hexdigest()
            for path in self.paths
        }

    def assert_bms_untouched(self) -> None:
        assert self.snapshot() == self.flash, "a BMS flash file changed"
        for path in self.paths:
            bms = self.provider.bms(path)
            assert bms.boot_status().running_version == "1.0.0"
            assert not bms.transfer_status().staged

    def offers_for(
        self, release_id: int, data: bytes, version: str, counter: int, **kw: Any
    ) -> list[dict[str, Any]]:
        return [
            offer_for(release_id, data, version, counter, path.name, **kw) for path in self.paths
        ]

    def poll_offer(
        self, server: HostileServer, data: bytes, version: str, counter: int, **kw: Any
    ) -> None:
        """Serve ``data`` as release 7, offer it to every BMS (``kw`` makes the offer
        hostile), and poll once: the poll itself must succeed."""
        server.artifacts[7] = data
        server.offers = self.offers_for(7, data, version, counter, **kw)
        outcome = self.agent.poll()
        assert outcome.error is None, outcome.error

    def assert_refused(
        self, server: HostileServer, state: str, code: str, *, valid_package: bool = False
    ) -> None:
        """Every BMS was reported in ``state`` with ``code``, and none was touched; a
        rejected artifact is not kept (unless it is a valid package refused for these BMS)."""
        for path in self.paths:
            assert (state, code) in reported(server)[path.name], reported(server)
        self.assert_bms_untouched()
        if state == "rejected" and not valid_package:
            assert not list((self.state_dir / "artifacts").iterdir())


def reported(server: HostileServer) -> dict[str, set[tuple[str, str]]]:
    """Per device: the (state, error code) pairs the agent reported."""
    found: dict[str, set[tuple[str, str]]] = {}
    for report in server.reports():
        found.setdefault(report["device_serial"], set()).add(
            (report["state"], report["error_code"])
        )
    return found


@pytest.fixture
def site_factory(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    tls: TestTlsFiles,
    server: HostileServer,
) -> Iterator[Callable[..., Site]]:
    made: list[Site] = []

    def make(*, limits: ClientLimits = LIMITS, **config: Any) -> Site:
        state_dir = tmp_path / f"agent{len(made)}"
        paths = provision_sim_bms(
            tmp_path / f"bms{len(made)}", SERIALS, releases["1.0.0"], vendor.root_pem
        )
        provider = SimBmsProvider(paths, SimClock())
        client = FleetClient(
            ClientConfig(server.url, "gateway-token", ca_file=tls.ca, timeout_s=2.0, limits=limits)
        )
        settings: dict[str, Any] = {
            "confirmed": frozenset(c.id for c in UpdateProfile().confirmations),
            "max_poll_interval_s": 0.5,
            "error_retry_interval_s": 0.1,
            "max_backoff_s": 0.5,
            **config,
        }
        agent_config = AgentConfig(state_dir=state_dir, trust_root_pem=vendor.root_pem, **settings)
        agent = Agent(agent_config, client, provider, clock=provider.clock)
        site = Site(agent, provider, paths, state_dir)
        provider.open().close()  # boot the BMS once, then take the reference snapshot
        site.flash = site.snapshot()
        made.append(site)
        return site

    yield make
    for site in made:
        site.agent.client.close()
        site.provider.close()
