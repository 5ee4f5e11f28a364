"""A BMS that lies about who it is, what it runs and whether its counter moved."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from .conftest import NEW_VERSION, Attack
from .hostile_can import Behaviour


def test_identity_drift_stops_before_anything_is_written(attack: Callable[..., Attack]) -> None:
    """SN-0001 at identify, SN-0002 from the preflight on: E508, nothing written."""
    result = attack(Behaviour(serial="SN-0001", serial_later="SN-0002"))
    assert result.code == "BMSFW-E508", result.report.error
    assert "SN-0002" in result.report.error.message
    assert result.report.outcome == "refused"
    assert result.bms.writes == []
    assert result.seconds < 10


def test_already_installed_needs_the_digest(attack: Callable[..., Attack]) -> None:
    """It claims to run the release but its active image digest is another image's."""
    result = attack(Behaviour(version=f"{NEW_VERSION}+0", counter=2))
    assert result.report.outcome != "already-installed"
    assert result.report.decisions.start == "start"


def test_already_installed_with_no_digest_is_sent_again(attack: Callable[..., Attack]) -> None:
    result = attack(Behaviour(version=f"{NEW_VERSION}+0", counter=2, nrc_dids=frozenset({0x0102})))
    assert result.report.outcome != "already-installed"
    assert result.report.decisions.start == "start"


def test_updated_needs_the_release_digest(attack: Callable[..., Attack]) -> None:
    """After the confirm the BMS reports a digest that is not the release image's: E509."""
    result = attack(Behaviour())
    assert result.report.outcome == "updated"  # the honest run, for comparison
    liar = attack(Behaviour(did_override={0x0102: hashlib.sha256(b"other").digest()}))
    assert liar.code == "BMSFW-E509", liar.report.error
    assert liar.report.outcome == "failed"
    assert liar.report.decisions.installed == "digest mismatch"


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_counter_that_did_not_move_is_an_error(attack: Callable[..., Attack]) -> None:
    """The release carries counter 2; the BMS still reports 1 after the confirm: E523."""
    result = attack(Behaviour(counter_frozen=True))
    assert result.code == "BMSFW-E523", result.report.error
    assert result.report.decisions.security_counter == "1 -> 1"
    assert result.report.outcome == "failed"


def test_report_states_the_counter_before_and_after(attack: Callable[..., Attack]) -> None:
    result = attack(Behaviour())
    assert result.report.outcome == "updated"
    assert result.report.decisions.security_counter == "1 -> 2"
