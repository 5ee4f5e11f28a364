"""Malformed, unbounded and slow answers: each one fails one poll with its own code, is
reported to the server with the next good check-in, leaves every BMS untouched, and
the agent polls on (with backoff)."""

from __future__ import annotations

import gzip
import random
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bmsfw.fleet.agent import POLL_INTERVAL_RANGE_S, AgentConfig, PollOutcome
from bmsfw.fleet.agent_errors import MalformedAnswerError

from .conftest import Site
from .hostile import HostileServer, Reply, Seen, drip, endless


def _once(reply: Reply) -> Callable[[Seen], Reply | None]:
    """Answer ``reply`` to the first request of the route, then behave."""
    used: list[bool] = []

    def handler(_seen: Seen) -> Reply | None:
        if used:
            return None
        used.append(True)
        return reply

    return handler


def _answer(server: HostileServer, **changes: Any) -> Reply:
    data = server.check_in_answer()
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    return Reply.json(data)


_DROP = object()

MALFORMED: dict[str, Callable[[HostileServer], Reply]] = {
    "html-page-200": lambda s: Reply(
        200, b"<html><body>Please log in to the hotel Wi-Fi</body></html>", {"X": "portal"}
    ),
    "null": lambda s: Reply.json(None),
    "json-list": lambda s: Reply.json([]),
    "truncated-json": lambda s: Reply(200, b'{"gateway": "gw", "offers": ['),
    "missing-poll-interval": lambda s: _answer(s, poll_interval_s=_DROP),
    "missing-offers": lambda s: _answer(s, offers=_DROP),
    "offers-null": lambda s: _answer(s, offers=None),
    "poll-interval-text": lambda s: _answer(s, poll_interval_s="soon"),
    "poll-interval-nan": lambda s: Reply(
        200, _answer(s).body.replace(b'"poll_interval_s": 1', b'"poll_interval_s": NaN')
    ),
    "server-time-garbage": lambda s: _answer(s, server_time="yesterday"),
    "redirect-302": lambda s: Reply(302, b"", {"Location": "https://portal.example/login"}),
    "redirect-to-http": lambda s: Reply(307, b"", {"Location": "http://127.0.0.1:1/x"}),
}


def _good_poll_carries(site: Site, server: HostileServer, code: str) -> None:
    """The next poll succeeds and tells the server; the one after no longer repeats it."""
    outcome = site.agent.poll()
    assert outcome.error is None, outcome.error
    problems = server.check_ins()[-1].get("problems", [])
    assert [p["code"] for p in problems] == [code], problems
    assert problems[0]["count"] >= 1 and problems[0]["detail"]
    assert site.agent.poll().error is None
    assert "problems" not in server.check_ins()[-1]


@pytest.mark.req("IEC62443-CR3.5")
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_check_in_answer(
    name: str, server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    site = site_factory()
    server.script["check-in"] = _once(MALFORMED[name](server))
    outcome = site.agent.poll()
    assert outcome.error is not None and outcome.error.code == "BMSFW-E675", outcome.error
    assert 0 < outcome.wait_s <= 0.5  # backoff, within the configured cap
    site.assert_bms_untouched()
    _good_poll_carries(site, server, "BMSFW-E675")
    assert not server.requests("artifact")


def test_new_fields_of_a_future_server_are_ignored(
    server: HostileServer, site_factory: Callable[..., Site], releases: dict[str, bytes]
) -> None:
    """Extra fields everywhere (answer, offer, policy, window): the update still happens."""
    site = site_factory()
    data = releases["2.0.0"]
    server.artifacts[7] = data
    offers = site.offers_for(7, data, "2.0.0", 2, delta_base="abc", priority=3)
    for offer in offers:
        offer["policy"]["maintenance_windows"] = [
            {"days": [0, 1, 2, 3, 4, 5, 6], "start": "00:00", "end": "24:00", "note": "new"}
        ]
        offer["policy"]["cellular_only"] = False
    server.offers = offers
    server.script["check-in"] = lambda _s: _answer(
        server, protocol_version=2, director_targets={"future": True}, maintenance="soon"
    )
    outcome = site.agent.poll()
    assert outcome.error is None, outcome.error
    states = {(r["device_serial"], r["state"]) for r in server.reports()}
    assert {(serial, "succeeded") for serial in (p.name for p in site.paths)} <= states
    for path in site.paths:
        assert site.provider.bms(path).boot_status().running_version == "2.0.0"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1e30, 3600.0), (10**12, 3600.0), (0, 5.0), (-1, 5.0), (60, 60.0)],
)
def test_poll_interval_is_clamped_whatever_the_server_says(value: float, expected: float) -> None:
    config = AgentConfig(state_dir=None, trust_root_pem=b"")  # type: ignore[arg-type]
    assert POLL_INTERVAL_RANGE_S == (5.0, 3600.0)
    assert config.poll_interval_s(value) == expected
    capped = AgentConfig(state_dir=None, trust_root_pem=b"", max_poll_interval_s=0.5)  # type: ignore[arg-type]
    assert capped.poll_interval_s(value) == 0.5


def test_ten_years_poll_interval_over_the_wire(
    server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    site = site_factory()
    server.poll_interval_s = 10 * 365 * 86400
    assert site.agent.poll().wait_s == 0.5  # the local cap of this suite
    server.poll_interval_s = 1e30
    assert site.agent.poll().wait_s == 0.5


def test_backoff_doubles_with_jitter_and_resets() -> None:
    config = AgentConfig(state_dir=None, trust_root_pem=b"")  # type: ignore[arg-type]
    rng = random.Random(1)
    waits = [config.backoff_s(n, rng) for n in range(1, 9)]
    for n, wait in enumerate(waits, start=1):
        base = min(1800.0, 30.0 * 2 ** (n - 1))
        assert base * 0.5 <= wait <= base, (n, wait)
    assert len({round(w, 6) for w in waits}) == len(waits)  # jittered, not a fixed schedule
    assert config.backoff_s(40, rng) <= 1800.0


def test_the_daemon_backs_off_and_recovers(
    server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    site = site_factory(error_retry_interval_s=0.1, max_backoff_s=0.4)
    server.script["check-in"] = lambda _s: Reply(200, b"<html>down</html>")
    outcomes: list[PollOutcome] = [site.agent.poll() for _ in range(4)]
    assert all(o.error is not None and o.error.code == "BMSFW-E675" for o in outcomes)
    assert outcomes[0].wait_s <= 0.1 and outcomes[3].wait_s >= 0.2  # 0.1, 0.2, 0.4, 0.4 x jitter
    del server.script["check-in"]
    recovered = site.agent.poll()
    assert recovered.error is None and recovered.wait_s == 0.5
    (problem,) = server.check_ins()[-1]["problems"]
    assert (problem["code"], problem["count"]) == ("BMSFW-E675", 4)


def _peak_during(action: Callable[[], PollOutcome]) -> tuple[PollOutcome, int]:
    tracemalloc.start()
    try:
        outcome = action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "streamed"])
def test_endless_check_in_answer_is_cut_off(
    announced: bool, server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    site = site_factory()
    headers = {"Content-Length": str(128 * 1024 * 1024)} if announced else {}
    server.script["check-in"] = _once(Reply(200, endless(limit_bytes=128 * 1024 * 1024), headers))
    outcome, peak = _peak_during(site.agent.poll)
    assert outcome.error is not None and outcome.error.code == "BMSFW-E676", outcome.error
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for a 128 MiB answer"
    site.assert_bms_untouched()
    _good_poll_carries(site, server, "BMSFW-E676")


def test_endless_error_body_is_cut_off(
    server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    site = site_factory()
    server.script["check-in"] = _once(Reply(500, endless(limit_bytes=128 * 1024 * 1024)))
    outcome, peak = _peak_during(site.agent.poll)
    assert outcome.error is not None and outcome.error.code == "BMSFW-E622", outcome.error
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for a 128 MiB error body"
    assert len(outcome.error.message) < 1000
    _good_poll_carries(site, server, "BMSFW-E622")


def test_dripped_check_in_answer_hits_its_deadline(
    server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    site = site_factory()
    body = _answer(server).body
    assert isinstance(body, bytes)
    server.script["check-in"] = _once(Reply(200, drip(body), chunk_delay_s=0.05))
    started = time.monotonic()
    outcome = site.agent.poll()
    elapsed = time.monotonic() - started
    assert outcome.error is not None and outcome.error.code == "BMSFW-E677", outcome.error
    # answer_deadline_s 1.5 of the suite, plus at most one read timeout (2 s) of slack.
    assert elapsed < 1.5 + 2.0, elapsed
    _good_poll_carries(site, server, "BMSFW-E677")


def test_silent_server_hits_the_read_timeout(
    server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    site = site_factory()

    def silent() -> Iterator[bytes]:
        time.sleep(4)  # headers sent, then nothing
        yield b"{}"

    server.script["check-in"] = _once(Reply(200, silent()))
    started = time.monotonic()
    outcome = site.agent.poll()
    assert outcome.error is not None and outcome.error.code == "BMSFW-E618", outcome.error
    assert time.monotonic() - started < 2.0 + 1.0  # the read timeout of the suite


@pytest.mark.parametrize(
    "refusal",
    [
        Reply.json({"detail": [{"loc": ["body", "problems"], "msg": "extra"}]}, 422),
        Reply.json({"error": {"code": "BMSFW-E630", "message": "problems: extra"}}, 422),
    ],
    ids=["fastapi-422", "bmsfw-E630"],
)
def test_a_server_from_before_problems_still_gets_check_ins(
    refusal: Reply, server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    """An older server refuses the unknown ``problems`` field: the agent checks in without
    it (and drops them) instead of failing every poll from then on."""
    site = site_factory()
    server.script["check-in"] = lambda seen: refusal if "problems" in (seen.body or {}) else None
    site.agent.note_problem(MalformedAnswerError("an earlier captive portal"))
    outcome = site.agent.poll()
    assert outcome.error is None, outcome.error
    assert ["problems" in body for body in server.check_ins()] == [True, False]
    assert site.agent.state.problems == []


def test_compressed_answer_is_refused_unread(
    server: HostileServer, site_factory: Callable[..., Site]
) -> None:
    """A 100 KiB gzip body that inflates to 100 MiB: the agent asked for identity and
    refuses it without inflating a byte."""
    site = site_factory()
    bomb = gzip.compress(b"\0" * (100 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 200 * 1024
    server.script["check-in"] = _once(Reply(200, bomb, {"Content-Encoding": "gzip"}))
    outcome, peak = _peak_during(site.agent.poll)
    assert outcome.error is not None and outcome.error.code == "BMSFW-E675", outcome.error
    assert "identity" in outcome.error.message
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"
    assert server.check_ins()[0]["devices"]  # the request itself went out normally
    assert server.requests("check-in")[0].headers["accept-encoding"] == "identity"
    _good_poll_carries(site, server, "BMSFW-E675")


def test_an_unexpected_error_does_not_end_the_daemon(
    server: HostileServer, site_factory: Callable[..., Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (here: the BMS link layer raising a plain RuntimeError) fails one poll, is
    logged and reported like a refused answer, and the next poll runs."""
    site = site_factory()
    real_open = site.provider.open
    calls: list[int] = []

    def broken_once() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("driver bug")
        return real_open()

    monkeypatch.setattr(site.provider, "open", broken_once)
    outcome = site.agent.poll()
    assert outcome.error is not None and "RuntimeError: driver bug" in outcome.error.message
    assert site.agent.poll().error is None
    (problem,) = server.check_ins()[-1]["problems"]
    assert problem["code"] == "BMSFW-E000"
