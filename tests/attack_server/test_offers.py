"""Hostile offers and artifacts: the server picks no file path and no host, the artifact
is read at its announced size within its deadline, and what the vendor did not sign for
this BMS is refused before a BMS is touched; every refusal reaches the server with its
code."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_support import foreign_release

from .conftest import LIMITS, Site, reported
from .hostile import HostileServer, Reply, Seen, drip, endless


def _problems(server: HostileServer) -> list[str]:
    return [p["code"] for body in server.check_ins() for p in body.get("problems", [])]


HOSTILE_FIELDS: dict[str, dict[str, Any]] = {
    "size-zero": {"size_bytes": 0},
    "size-negative": {"size_bytes": -1},
    "size-fraction": {"size_bytes": 3072.5},
    "sha256-with-nul": {"sha256": "a" * 31 + "\x00" + "a" * 32},
    "sha256-path": {"sha256": "../../../victim"},
    "sha256-upper-case": {"sha256": "A" * 64},
    "campaign-null": {"campaign_id": None},
    "serial-empty": {"device_serial": ""},
    "time-zone-path": {
        "policy": {"bandwidth_floor_bps": 0, "maintenance_timezone": "../../etc/passwd"}
    },
    "counter-negative": {"security_counter": -1},
    "state-unknown": {"state": "installed-trust-me"},
}


@pytest.mark.req("IEC62443-CR3.5")
@pytest.mark.parametrize("name", sorted(HOSTILE_FIELDS))
def test_hostile_offer_fields_are_refused(
    name: str,
    server: HostileServer,
    site_factory: Callable[..., Site],
    releases: dict[str, bytes],
    tmp_path: Path,
) -> None:
    site = site_factory()
    victim = tmp_path / "victim.bmsfw"  # what a crafted sha256 deleted before
    victim.write_bytes(b"keep me")
    # The poll succeeds: the answer's other parts are usable, this offer is refused.
    site.poll_offer(server, releases["2.0.0"], "2.0.0", 2, **HOSTILE_FIELDS[name])
    assert victim.read_bytes() == b"keep me"
    assert not server.requests("artifact")
    assert not list((site.state_dir / "artifacts").iterdir())
    site.assert_bms_untouched()
    server.offers = []
    assert site.agent.poll().error is None
    assert _problems(server) == ["BMSFW-E675", "BMSFW-E675"]  # one per refused offer
    details = [p["detail"] for p in server.check_ins()[-1]["problems"]]
    assert all("offers." in d for d in details), details


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{other}/steal",  # another host, in clear text
        "https://127.0.0.1:{other}/steal",  # another host over HTTPS
        "http://127.0.0.1:{own}/api/v1/releases/7/artifact",  # own host, downgraded to http
        "https://user:pw@127.0.0.1:{own}/api/v1/releases/7/artifact",  # credentials in it
    ],
    ids=["other-host-http", "other-host-https", "own-host-http", "userinfo"],
)
def test_artifact_only_from_the_servers_origin_and_no_token_elsewhere(
    url: str,
    server: HostileServer,
    site_factory: Callable[..., Site],
    releases: dict[str, bytes],
    other: HostileServer,
) -> None:
    site = site_factory()
    other.artifacts[7] = releases["2.0.0"]
    target = url.format(other=other.port, own=server.port)
    site.poll_offer(server, releases["2.0.0"], "2.0.0", 2, artifact_url=target)
    assert other.seen == []  # not one request: no token, no connection
    assert all(s.headers.get("authorization") == "Bearer gateway-token" for s in server.seen)
    site.assert_refused(server, "rejected", "BMSFW-E678")


def test_scheme_relative_url_stays_on_the_server(
    server: HostileServer,
    site_factory: Callable[..., Site],
    releases: dict[str, bytes],
    other: HostileServer,
) -> None:
    """``//other-host/...`` is a path on the server's own origin, never another host."""
    site = site_factory()
    url = f"//127.0.0.1:{other.port}/x"
    site.poll_offer(server, releases["2.0.0"], "2.0.0", 2, artifact_url=url)
    assert other.seen == []
    (request,) = server.requests("other")  # the server's own 404
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    site.assert_refused(server, "downloading", "BMSFW-E604")


def test_configured_artifact_origin_gets_no_token(
    server: HostileServer,
    site_factory: Callable[..., Site],
    releases: dict[str, bytes],
    other: HostileServer,
) -> None:
    """A CDN named by the site (``--artifact-origin``) is used, without the credential."""
    site = site_factory()
    client = site.agent.client
    client.config = dataclasses.replace(client.config, artifact_origins=(other.url,))
    other.artifacts[7] = releases["2.0.0"]
    url = f"{other.url}/api/v1/releases/7/artifact"
    site.poll_offer(server, releases["2.0.0"], "2.0.0", 2, artifact_url=url)
    assert other.requests("artifact")
    assert all("authorization" not in s.headers for s in other.seen)
    for path in site.paths:
        assert site.provider.bms(path).boot_status().running_version == "2.0.0"


def test_endless_artifact_is_cut_at_its_announced_size(
    server: HostileServer, site_factory: Callable[..., Site], releases: dict[str, bytes]
) -> None:
    site = site_factory()
    data = releases["2.0.0"]
    server.script["artifact"] = lambda _s: Reply(200, endless(data[:1024]))
    site.poll_offer(server, data, "2.0.0", 2)
    site.assert_refused(server, "rejected", "BMSFW-E620")


def test_dripped_artifact_hits_its_deadline_and_resumes_later(
    server: HostileServer, site_factory: Callable[..., Site], releases: dict[str, bytes]
) -> None:
    """1 byte per 10 ms (800 bit/s) against an average of 80 kbit/s after 1.5 s grace."""
    site = site_factory(limits=dataclasses.replace(LIMITS, min_download_rate_bps=80_000.0))
    data = releases["2.0.0"]
    dripped: list[bool] = []

    def slow(_seen: Seen) -> Reply | None:
        if dripped:
            return None  # then the server behaves: the agent resumes with Range
        dripped.append(True)
        return Reply(200, drip(data), chunk_delay_s=0.01)

    server.script["artifact"] = slow
    site.poll_offer(server, data, "2.0.0", 2)
    site.assert_refused(server, "waiting", "BMSFW-E677")
    (part,) = (site.state_dir / "artifacts").glob("*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    assert site.agent.poll().error is None  # resumes from what it kept
    assert server.requests("artifact")[-1].headers["range"] == f"bytes={kept}-"
    for path in site.paths:
        assert site.provider.bms(path).boot_status().running_version == "2.0.0"


def test_artifact_redirect_is_not_followed(
    server: HostileServer,
    site_factory: Callable[..., Site],
    releases: dict[str, bytes],
    other: HostileServer,
) -> None:
    site = site_factory()
    server.script["artifact"] = lambda _s: Reply(
        302, b"", {"Location": f"{other.url}/api/v1/releases/7/artifact"}
    )
    site.poll_offer(server, releases["2.0.0"], "2.0.0", 2)
    assert other.seen == []
    site.assert_refused(server, "rejected", "BMSFW-E675")


@pytest.mark.req("IEC62443-CR3.4")
def test_mix_and_match_offer_names_one_release_and_serves_another(
    server: HostileServer, site_factory: Callable[..., Site], releases: dict[str, bytes]
) -> None:
    """Validly signed 2.1.0 bytes under an offer for 2.0.0 (digest and size of the bytes)."""
    site = site_factory()
    site.poll_offer(server, releases["2.1.0"], "2.0.0", 2)
    site.assert_refused(server, "rejected", "BMSFW-E672")


@pytest.mark.req("IEC62443-CR3.4", "SEED-SIGNATURE")
def test_arbitrary_package_signed_by_another_key(
    server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    site = site_factory()
    forged = foreign_release("2.0.0", 2)
    site.poll_offer(server, forged, "2.0.0", 2)
    for path in site.paths:
        ((state, code),) = reported(server)[path.name] - {("downloading", "")}
        assert state == "rejected" and code.startswith("BMSFW-E1"), (state, code)
    site.assert_bms_untouched()
    assert not list((site.state_dir / "artifacts").iterdir())
    assert hashlib.sha256(forged).hexdigest() not in site.agent.state.verified_artifacts


APPROVED = {"reason": "cells drain in storage", "requested_by": "operator:mallory"}


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_a_downgrade_approval_the_server_claims_moves_no_gateway_that_does_not_accept_them(
    server: HostileServer, site_factory: Callable[..., Site], releases: dict[str, bytes]
) -> None:
    """A compromised server marks 0.9.0 (counter 1, the running 1.0.0's) as an approved
    downgrade: a gateway started without --accept-approved-downgrades (the default)
    refuses it like any downgrade, and says what the server claimed."""
    site = site_factory()
    site.poll_offer(server, releases["0.9.0"], "0.9.0", 1, downgrade=APPROVED)
    site.assert_refused(server, "rejected", "BMSFW-E414", valid_package=True)
    details = [r["detail"] for r in server.reports() if r["error_code"] == "BMSFW-E414"]
    assert details and all("--accept-approved-downgrades" in d for d in details), details


@pytest.mark.parametrize(
    "downgrade",
    [
        {"reason": "fine\x1b]0;UPDATED OK\x07", "requested_by": "x"},  # terminal escape
        {"reason": "two\nlines", "requested_by": "x"},
        {"reason": "   ", "requested_by": "x"},  # says nothing
        {"reason": "x" * 501, "requested_by": "x"},
    ],
    ids=["escape", "newline", "blank", "too-long"],
)
def test_a_malformed_downgrade_approval_is_a_malformed_answer(
    downgrade: dict[str, str],
    server: HostileServer,
    site_factory: Callable[..., Site],
    releases: dict[str, bytes],
) -> None:
    """Even on a gateway that accepts approved downgrades, the reason is one line of text
    (it goes into reports and the audit log as it is): anything else is a malformed offer,
    refused (E675, told to the server on the next poll) before anything is fetched."""
    site = site_factory(accept_approved_downgrades=True)
    server.artifacts[7] = releases["0.9.0"]
    server.offers = site.offers_for(7, releases["0.9.0"], "0.9.0", 1, downgrade=downgrade)
    outcome = site.agent.poll()
    assert outcome.error is None and outcome.result is not None, outcome
    assert outcome.result.offers == 0
    assert site.agent.poll().error is None
    problems = server.check_ins()[-1].get("problems", [])
    assert problems and {p["code"] for p in problems} == {"BMSFW-E675"}, problems
    site.assert_bms_untouched()
    assert not server.requests("artifact")


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_downgrade_at_equal_security_counter_is_refused(
    server: HostileServer, site_factory: Callable[..., Site], releases: dict[str, bytes]
) -> None:
    """0.9.0 with counter 1 while the BMS run 1.0.0 with counter 1, validly signed: the
    update core's version rule refuses it (no person asked for this downgrade)."""
    site = site_factory()
    site.poll_offer(server, releases["0.9.0"], "0.9.0", 1)
    site.assert_refused(server, "rejected", "BMSFW-E414", valid_package=True)
    for path in site.paths:
        assert "succeeded" not in {state for state, _ in reported(server)[path.name]}
