"""Signed freshness and targets (TUF): with ``tuf_root`` the agent trusts no offer before
python-tuf verified the server's metadata. Freeze, replay, rollback, forged metadata,
mix-and-match, endless and slow metadata each fail with their own code; an offer that
the signed targets do not list, or list otherwise, is refused (E684); the BMS stay
untouched and the agent polls on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from .conftest import Site, reported
from .hostile import HostileServer, Reply, Seen, drip, endless
from .tuf_sim import Published, TufSim


def _target(data: bytes, version: str, counter: int) -> dict[str, tuple[bytes, dict[str, Any]]]:
    sha = hashlib.sha256(data).hexdigest()
    custom = {
        "release_id": 7,
        "product": "BMS-16S firmware",
        "version": version,
        "security_counter": counter,
        "hardware": {"model": "BMS-16S", "revisions": ["C"]},
    }
    return {f"releases/{sha}.bmsfw": (data, custom)}


@pytest.fixture
def repo() -> TufSim:
    return TufSim()


@pytest.fixture
def tuf_site(site_factory: Callable[..., Site], repo: TufSim) -> Site:
    return site_factory(tuf_root=repo.root, tuf_refresh_s=0.0)


def _fails_with(site: Site, server: HostileServer, code: str) -> None:
    """This poll fails with ``code``, nothing is touched, and after the server mends its
    metadata the next poll succeeds and carries the refusal to the server."""
    outcome = site.agent.poll()
    assert outcome.error is not None and outcome.error.code == code, outcome.error
    site.assert_bms_untouched()
    assert not server.requests("artifact")


def _mended_and_reported(site: Site, server: HostileServer, repo: TufSim, code: str) -> None:
    TufSim.serve(server, repo.state(100, {}))
    server.offers = []
    assert site.agent.poll().error is None
    assert code in [p["code"] for p in server.check_ins()[-1].get("problems", [])]


def test_signed_offer_installs(
    server: HostileServer, tuf_site: Site, repo: TufSim, releases: dict[str, bytes]
) -> None:
    data = releases["2.0.0"]
    TufSim.serve(server, repo.state(1, _target(data, "2.0.0", 2)))
    tuf_site.poll_offer(server, data, "2.0.0", 2)
    for path in tuf_site.paths:
        assert tuf_site.provider.bms(path).boot_status().running_version == "2.0.0"
    assert server.requests("tuf")  # the metadata was fetched before the artifact
    first_tuf = server.seen.index(server.requests("tuf")[0])
    assert first_tuf < server.seen.index(server.requests("artifact")[0])


@pytest.mark.parametrize(
    "age", [timedelta(hours=-1), timedelta(days=-7 * 365)], ids=["frozen", "replay-2019"]
)
def test_expired_timestamp_is_a_freeze(
    age: timedelta,
    server: HostileServer,
    tuf_site: Site,
    repo: TufSim,
    releases: dict[str, bytes],
) -> None:
    """The server's last signed view is stale: no offer is trusted, even offers: []."""
    data = releases["2.0.0"]
    TufSim.serve(server, repo.state(1, _target(data, "2.0.0", 2), expires_in=age))
    server.artifacts[7] = data
    server.offers = tuf_site.offers_for(7, data, "2.0.0", 2)
    _fails_with(tuf_site, server, "BMSFW-E680")
    server.offers = []  # a frozen server that offers nothing is noticed too
    _fails_with(tuf_site, server, "BMSFW-E680")
    _mended_and_reported(tuf_site, server, repo, "BMSFW-E680")


def test_rollback_to_an_older_repository_state(
    server: HostileServer, tuf_site: Site, repo: TufSim, releases: dict[str, bytes]
) -> None:
    current, old = repo.state(5, {}), repo.state(3, _target(releases["2.0.0"], "2.0.0", 2))
    TufSim.serve(server, current)
    assert tuf_site.agent.poll().error is None  # the agent now trusts version 5
    TufSim.serve(server, old)  # a replay of an older, still valid state
    server.artifacts[7] = releases["2.0.0"]
    server.offers = tuf_site.offers_for(7, releases["2.0.0"], "2.0.0", 2)
    _fails_with(tuf_site, server, "BMSFW-E681")
    _mended_and_reported(tuf_site, server, repo, "BMSFW-E681")


def test_metadata_signed_by_another_key(
    server: HostileServer, tuf_site: Site, repo: TufSim, releases: dict[str, bytes]
) -> None:
    forged = repo.state(
        1, _target(releases["2.0.0"], "2.0.0", 2), signer=CryptoSigner.generate_ed25519()
    )
    TufSim.serve(server, forged)
    server.offers = tuf_site.offers_for(7, releases["2.0.0"], "2.0.0", 2)
    _fails_with(tuf_site, server, "BMSFW-E682")
    _mended_and_reported(tuf_site, server, repo, "BMSFW-E682")


def test_mix_and_match_of_repository_states(
    server: HostileServer, tuf_site: Site, repo: TufSim, releases: dict[str, bytes]
) -> None:
    """The timestamp of state 2 with the snapshot of state 1 served under its name."""
    one, two = repo.state(1, {}), repo.state(2, _target(releases["2.0.0"], "2.0.0", 2))
    mixed = Published(files={**two.files, "2.snapshot.json": one.files["1.snapshot.json"]})
    TufSim.serve(server, mixed)
    server.offers = tuf_site.offers_for(7, releases["2.0.0"], "2.0.0", 2)
    _fails_with(tuf_site, server, "BMSFW-E683")
    _mended_and_reported(tuf_site, server, repo, "BMSFW-E683")


@pytest.mark.parametrize("kind", ["endless", "slow"])
def test_endless_and_slow_metadata(
    kind: str, server: HostileServer, tuf_site: Site, repo: TufSim
) -> None:
    TufSim.serve(server, repo.state(1, {}))
    timestamp = server.tuf_files["timestamp.json"]

    def hostile(seen: Seen) -> Reply | None:
        if not seen.path.endswith("/timestamp.json"):
            return None
        if kind == "endless":
            return Reply(200, endless(b" " * 4096))
        return Reply(200, drip(timestamp), chunk_delay_s=0.05)

    server.script["tuf"] = hostile
    _fails_with(tuf_site, server, "BMSFW-E676" if kind == "endless" else "BMSFW-E677")
    del server.script["tuf"]
    _mended_and_reported(
        tuf_site, server, repo, "BMSFW-E676" if kind == "endless" else "BMSFW-E677"
    )


@pytest.mark.req("IEC62443-CR3.4")
@pytest.mark.parametrize(
    ("signed_as", "offered_as"),
    [
        (None, ("2.0.0", 2)),  # not in the signed targets at all
        (("2.0.0", 2), ("2.0.0", 3)),  # counter differs from the signed one
        (("1.9.0", 2), ("2.0.0", 2)),  # version differs from the signed one
    ],
    ids=["not-listed", "counter-differs", "version-differs"],
)
def test_offer_must_match_the_signed_target(
    *,
    signed_as: tuple[str, int] | None,
    offered_as: tuple[str, int],
    server: HostileServer,
    tuf_site: Site,
    repo: TufSim,
    releases: dict[str, bytes],
) -> None:
    data = releases["2.0.0"]
    targets = _target(data, *signed_as) if signed_as else _target(releases["2.1.0"], "2.1.0", 3)
    TufSim.serve(server, repo.state(1, targets))
    tuf_site.poll_offer(server, data, *offered_as)
    tuf_site.assert_refused(server, "rejected", "BMSFW-E684")
    assert not server.requests("artifact")
    assert all(state != "succeeded" for states in reported(server).values() for state, _ in states)


def test_no_metadata_no_offer(
    server: HostileServer, tuf_site: Site, releases: dict[str, bytes]
) -> None:
    """A server that publishes no TUF metadata (or a captive portal) gets nothing trusted."""
    server.offers = tuf_site.offers_for(7, releases["2.0.0"], "2.0.0", 2)
    _fails_with(tuf_site, server, "BMSFW-E685")
