"""False success: a BMS that refuses the confirm, or pretends to roll back."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .conftest import Attack
from .hostile_can import Behaviour


def test_honest_fake_updates(attack: Callable[..., Attack]) -> None:
    """The fake itself is good enough for a whole update (so the attacks below are real)."""
    result = attack(Behaviour())
    assert result.report.outcome == "updated", result.report.error
    assert result.report.exception is None


def test_refused_confirm_is_e210_and_never_updated(attack: Callable[..., Attack]) -> None:
    """Confirm answers status 01 (E210) yet the boot status says confirmed: E210, failed."""
    refused = b"\x01" + b"\x0aBMSFW-E210" + b"\x07refused"
    result = attack(Behaviour(confirm_status=refused, confirm_makes_confirmed=True))
    assert result.code == "BMSFW-E210"
    assert result.report.outcome == "failed"
    assert not result.report.ok
    # nothing written after the refused confirm (no rollback of an image said confirmed)
    assert result.bms.writes[-1] == "31010203"  # RoutineControl start CONFIRM
    assert result.seconds < 10


@pytest.mark.req("SEED-APPROVED-OR-FALLBACK")
def test_refused_confirm_left_in_test_is_rolled_back_for_real(
    attack: Callable[..., Attack],
) -> None:
    refused = b"\x01" + b"\x0aBMSFW-E210" + b"\x07refused"
    result = attack(Behaviour(confirm_status=refused, confirm_makes_confirmed=False))
    assert result.code == "BMSFW-E210"
    assert result.report.outcome == "rolled-back"
    assert result.report.running_version.startswith("1.0.0")
    assert result.bms.s.version.startswith("1.0.0")


def test_refused_confirm_and_fake_rollback_is_not_rolled_back(
    attack: Callable[..., Attack],
) -> None:
    """The BMS acknowledges the rollback but still runs the new image: E513, not rolled-back."""
    refused = b"\x01" + b"\x0aBMSFW-E210" + b"\x07refused"
    result = attack(
        Behaviour(confirm_status=refused, confirm_makes_confirmed=False, rollback_works=False)
    )
    assert result.code == "BMSFW-E513"
    assert result.report.outcome == "failed"
    assert result.report.running_version.startswith("2.0.0")
    assert result.bms.s.version.startswith("2.0.0")


def test_confirm_answered_without_its_status_is_no_success(attack: Callable[..., Attack]) -> None:
    """The confirm routine answers with no status record at all: an invalid answer (E363),
    never "updated", and nothing written after it."""
    result = attack(Behaviour(confirm_status=b""))
    assert result.code == "BMSFW-E363", result.report.error
    assert result.report.outcome != "updated"
    assert not result.report.ok
    assert result.bms.writes[-1] == "31010203"  # RoutineControl start CONFIRM, the last
    assert result.seconds < 10
