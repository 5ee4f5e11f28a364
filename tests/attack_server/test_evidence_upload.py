"""A server that answers the evidence upload without taking the bundle (one from before
the evidence store answers 404 without an error code; a broken proxy) does not hold up
the agent's state reports: they all arrive in the same poll, each bundle is tried once
a poll, and after three such answers it leaves the outbox but stays on the gateway."""

from __future__ import annotations

from collections.abc import Callable

from bmsfw.evidence.bundle import verify_bundle

from .conftest import Site, reported
from .hostile import API, HostileServer, Reply, Seen


def _evidence(server: HostileServer) -> list[Seen]:
    return [s for s in server.requests("other") if s.path.startswith(f"{API}/agent/evidence")]


def test_an_evidence_upload_the_server_does_not_take_holds_up_no_report(
    server: HostileServer, site_factory: Callable[..., Site], releases: dict[str, bytes]
) -> None:
    not_found = Reply(404, b'{"detail":"Not Found"}', {"Content-Type": "application/json"})
    server.script["other"] = lambda seen: not_found
    site = site_factory()
    site.poll_offer(server, releases["2.0.0"], "2.0.0", 2)
    # Both BMS were updated and every report of the second one went out behind the first
    # one's bundle, in this very poll.
    for path in site.paths:
        assert ("succeeded", "") in reported(server)[path.name], reported(server)
    assert len(_evidence(server)) == 2  # each bundle tried once
    outbox = site.agent.state.outbox
    assert [m["kind"] for m in outbox] == ["evidence", "evidence"]
    server.offers = []
    for _ in range(2):  # tried once more per poll; the third refusal drops it
        assert site.agent.poll().error is None
    assert len(_evidence(server)) == 6 and not site.agent.state.outbox
    kept = sorted((site.state_dir / "evidence").glob("*.zip"))
    assert len(kept) == 2  # the record stays on the gateway, intact
    for path in kept:
        assert verify_bundle(path.read_bytes()).manifest["outcome"] == "updated"
    site.agent.poll()  # the problem goes to the server with the next check-in
    codes = {p["code"] for body in server.check_ins() for p in body.get("problems", [])}
    assert "BMSFW-E622" in codes
