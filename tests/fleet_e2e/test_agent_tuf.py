"""TUF on the OTA path against the real fleet server: the server publishes signed metadata
(root made offline with a 2-of-3 threshold, online timestamp/snapshot/targets), the agent
verifies it with tuf.ngclient before any offer; root rotation; stateless, deterministic
metadata across server processes."""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, Root

from bmsfw.fleet.agent import Agent
from bmsfw.fleet.errors import FleetConfigError
from bmsfw.fleet.releases import ReleaseFacts
from bmsfw.fleet.tuf_repo import (
    TufRelease,
    TufRepository,
    TufSettings,
    generate_key,
    new_root,
    public_key_of,
)
from bmsfw.sim.fleet import SimFleet

from .conftest import Server, Vendor, one_gateway_fleet

ALL = [{"name": "all", "percent": 100, "soak_s": 0, "success_threshold_pct": 100}]
YEAR = timedelta(days=365)


@dataclasses.dataclass
class Ceremony:
    """The offline root keys (2 of 3) and the server's online key."""

    root_keys: list[bytes]
    online_key: bytes
    roots: list[bytes]

    @classmethod
    def run(cls) -> Ceremony:
        root_keys = [generate_key() for _ in range(3)]
        online = generate_key()
        root = new_root(root_keys[:3], 2, public_key_of(online), datetime.now(UTC) + YEAR)
        return cls(root_keys, online, [root])

    def settings(self) -> TufSettings:
        return TufSettings(tuple(self.roots), self.online_key)


def _fleet_with_tuf(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server: Server,
    bootstrap_root: bytes,
) -> SimFleet:
    fleet = one_gateway_fleet(tmp_path, vendor, releases["1.0.0"], server)
    gateway = fleet.gateways[0]
    config = dataclasses.replace(gateway.agent.config, tuf_root=bootstrap_root)
    gateway.agent = Agent(config, gateway.agent.client, gateway.provider, clock=gateway.clock)
    return fleet


def _campaign(server: Server, data: bytes) -> int:
    with server.client() as c:
        release = int(c.upload_release(data, "r.bmsfw")["id"])
        return int(c.post("campaigns", {"name": "c", "release_id": release, "phases": ALL})["id"])


def _states(server: Server, campaign_id: int) -> set[tuple[str, str]]:
    return {
        (d["state"], d["error_code"])
        for d in server.call("GET", f"campaigns/{campaign_id}/devices")
    }


def test_campaign_through_tuf_and_a_root_rotation(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
) -> None:
    ceremony = Ceremony.run()
    # Rotation to version 2 (new keys, threshold 2), signed by 2 old and 2 new root keys.
    new_keys = [generate_key() for _ in range(3)]
    ceremony.roots.append(
        new_root(
            new_keys[:2],
            2,
            public_key_of(ceremony.online_key),
            datetime.now(UTC) + YEAR,
            previous=ceremony.roots[0],
            previous_keys=ceremony.root_keys[:2],
        )
    )
    server = server_factory(tuf=ceremony.settings())
    context = ssl.create_default_context(cafile=str(server.ca))
    anonymous = httpx.get(f"{server.url}/api/v1/tuf/timestamp.json", verify=context)
    assert anonymous.status_code == 401  # like every route: a token, or nothing
    fleet = _fleet_with_tuf(tmp_path, vendor, releases, server, ceremony.roots[0])
    try:
        agent = fleet.gateways[0].agent
        agent.run_once()  # the inventory; the agent walks root 1 -> 2
        campaign_id = _campaign(server, releases["2.0.0"])
        agent.run_once()
        assert _states(server, campaign_id) == {("succeeded", "")}
        trusted = json.loads((agent.config.state_dir / "tuf" / "root.json").read_bytes())
        assert trusted["signed"]["version"] == 2
        for serial in fleet.serials():
            assert fleet.device(serial).boot_status().running_version == "2.0.0"
    finally:
        fleet.close()


def test_a_rotation_without_the_old_keys_is_refused(
    tmp_path: Path,
    vendor: Vendor,
    releases: dict[str, bytes],
    server_factory: Callable[..., Server],
) -> None:
    """Whoever holds the server cannot replace the root: version 2 signed by new keys only."""
    ceremony = Ceremony.run()
    # Made by hand: our ceremony command refuses to write it.
    new_keys = [generate_key(), generate_key()]
    forged = Metadata[Root].from_bytes(
        new_root(new_keys, 2, public_key_of(ceremony.online_key), datetime.now(UTC) + YEAR)
    )
    forged.signed.version = 2
    forged.signatures.clear()
    for pem in new_keys:
        private = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(private, Ed25519PrivateKey)
        forged.sign(CryptoSigner(private, SSlibKey.from_crypto(private.public_key())), append=True)
    ceremony.roots.append(forged.to_bytes())
    server = server_factory(tuf=ceremony.settings())
    fleet = _fleet_with_tuf(tmp_path, vendor, releases, server, ceremony.roots[0])
    try:
        ops = {s: fleet.device(s).flash_op_count for s in fleet.serials()}
        outcome = fleet.gateways[0].agent.poll()
        assert outcome.error is not None and outcome.error.code == "BMSFW-E682", outcome.error
        assert {s: fleet.device(s).flash_op_count for s in fleet.serials()} == ops
    finally:
        fleet.close()


def _release(release_id: int, *, ota: bool = True) -> TufRelease:
    facts = ReleaseFacts(
        product="p",
        version=f"1.{release_id}.0",
        security_counter=release_id,
        hw_model="BMS-16S",
        hw_revisions=("C",),
        min_bootloader="2.0.0",
        safety_class="standard" if ota else "safety-critical",
        components=(),
        release_notes="",
        sha256=f"{release_id:064x}",
        size_bytes=1000 + release_id,
    )
    return TufRelease(release_id, facts)


def test_metadata_is_deterministic_and_versions_only_grow() -> None:
    """Two server processes (same settings, same clock) serve identical bytes; a new release
    or a new period gives higher versions; a safety-critical release is never a target."""
    ceremony = Ceremony.run()
    now = [1_900_000_000.0]
    one = TufRepository(ceremony.settings(), clock=lambda: now[0])
    two = TufRepository(ceremony.settings(), clock=lambda: now[0])
    known = [_release(1), _release(2, ota=False)]

    def version(repository: TufRepository, name: str) -> int:
        data = repository.file(name, lambda: known)
        assert data is not None
        return int(json.loads(data)["signed"]["version"])

    def meta(name: str) -> dict[str, Any]:
        data = one.file(name, lambda: known)
        assert data is not None and data == two.file(name, lambda: known)
        return dict(json.loads(data)["signed"])

    stamp = meta("timestamp.json")
    snapshot_version = stamp["meta"]["snapshot.json"]["version"]
    targets = meta(f"{snapshot_version}.targets.json")
    assert list(targets["targets"]) == [f"releases/{1:064x}.bmsfw"]  # not the safety one
    assert targets["targets"][f"releases/{1:064x}.bmsfw"]["custom"]["security_counter"] == 1
    first = version(one, "timestamp.json")
    known.append(_release(3))
    second = version(one, "timestamp.json")
    now[0] += 600  # the next timestamp period
    third = version(one, "timestamp.json")
    assert first < second < third
    assert one.file(f"{snapshot_version + 10}.targets.json", lambda: known) is None  # future
    assert one.file("../../etc/passwd", lambda: known) is None
    expires = datetime.fromisoformat(meta("timestamp.json")["expires"].replace("Z", "+00:00"))
    assert expires - datetime.fromtimestamp(now[0], UTC) <= timedelta(hours=1)


def test_the_online_key_must_be_the_roots() -> None:
    ceremony = Ceremony.run()
    with pytest.raises(FleetConfigError, match="online key"):
        TufRepository(TufSettings(tuple(ceremony.roots), generate_key()))


def test_the_root_ceremony_commands(tmp_path: Path) -> None:
    """tuf-keygen and tuf-root as documented in docs/agent.md, then a rotation; the server
    settings load from their output; a rotation without the old keys is refused."""
    from click.testing import CliRunner

    from bmsfw.cli._fleet import fleet_group

    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(fleet_group, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    for name in ("root-1", "root-2", "root-3", "root-4", "online", "online-2"):
        run("tuf-keygen", str(tmp_path / f"{name}.pem"))
    assert (tmp_path / "root-1.pem").stat().st_mode & 0o777 == 0o600
    keys = [str(tmp_path / f"root-{n}.pem") for n in (1, 2, 3)]
    out = str(tmp_path / "tuf")
    run("tuf-root", *(a for k in keys for a in ("--root-key", k)), "--threshold", "2",
        "--online-key", str(tmp_path / "online.pem"), "--out", out)  # fmt: skip
    refused = runner.invoke(
        fleet_group,
        ["tuf-root", "--previous", f"{out}/1.root.json", "--previous-key", keys[0],
         "--root-key", str(tmp_path / "root-4.pem"), "--threshold", "1", "--online-key",
         str(tmp_path / "online-2.pem"), "--out", out],
    )  # fmt: skip
    assert refused.exit_code != 0 and not (tmp_path / "tuf" / "2.root.json").exists()
    run("tuf-root", "--previous", f"{out}/1.root.json", "--previous-key", keys[0],
        "--previous-key", keys[1], "--root-key", keys[1], "--root-key", keys[2],
        "--threshold", "2", "--online-key", str(tmp_path / "online-2.pem"),
        "--out", out)  # fmt: skip
    settings = TufSettings.load(tmp_path / "tuf", tmp_path / "online-2.pem")
    assert len(settings.roots) == 2
    TufRepository(settings)  # the online key is the latest root's
    with pytest.raises(FleetConfigError, match="online key"):
        TufRepository(TufSettings.load(tmp_path / "tuf", tmp_path / "online.pem"))
