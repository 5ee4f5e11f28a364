"""A BMS that answers slowly for ever: every step ends within its bound, with a code.

Each step of a session has a deadline (``StepBudgets``; 2 s here, documented defaults
in docs/uds.md) that holds however the BMS stretches its answers: 'response pending'
(NRC 0x78) for ever on the step's request, or every request of the step answered
just inside P2*. A flood of 0x78 is cut off by count (``max_response_pending``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest

from bmsfw.protocol.deadline import StepBudgets

from .conftest import CLIENT, Attack
from .hostile_can import Behaviour

BUDGET_S = 2.0
FAST = dataclasses.replace(
    CLIENT,
    budgets=StepBudgets(**{f.name: BUDGET_S for f in dataclasses.fields(StepBudgets)}),
)
ACTIVATE, RESET = "31010202", "1101"


def stalled(attack: Callable[..., Attack], prefix: str, *, after_reset: bool = False) -> Attack:
    """Update against a BMS that answers requests starting with ``prefix`` 0x78 for ever."""
    bms = Behaviour(
        stall_prefix=bytes.fromhex(prefix), stall_s=math.inf, stall_after_reset=after_reset
    )
    return attack(bms, client=FAST)


def programmed(writes: list[str]) -> bool:
    """Did the fake receive image data (RequestDownload / TransferData)?"""
    return any(w.startswith(("34", "36")) for w in writes)


# step, the request the BMS stalls (hex prefix), the failed step in the report
BEFORE_TRANSFER = [
    ("identify", "22f18a", "identify"),
    ("configuration read", "220150", "backup"),
    ("certificate chain", "2901", "authenticate"),
    ("release header", "31010201", "transfer"),
]
AFTER_TRANSFER = [
    ("verify", "3101ff01", "device-verify"),
    ("activate", "31010202", "activate"),
    ("reset", "1101", "activate"),
]


@pytest.mark.parametrize(("step", "prefix", "failed"), BEFORE_TRANSFER)
def test_pending_for_ever_before_the_transfer(
    attack: Callable[..., Attack], step: str, prefix: str, failed: str
) -> None:
    """0x78 every 0.3 s for ever: E366 after the step's 2 s, and nothing written."""
    result = stalled(attack, prefix)
    # a BMS that keeps answering too slowly is E366 at every step (staging included): the
    # pipeline keeps E501 "interrupted" for a BMS that stopped answering
    assert result.code == "BMSFW-E366", (step, result.report.error)
    assert result.report.failed_step == failed
    assert not result.report.ok
    assert result.bms.stalled >= 1
    assert BUDGET_S <= result.seconds < BUDGET_S + 4
    assert not programmed(result.bms.writes) and ACTIVATE not in result.bms.writes
    assert result.bms.s.version == "1.0.0+0" and result.bms.s.image_state == "confirmed"


@pytest.mark.parametrize(("step", "prefix", "failed"), AFTER_TRANSFER)
def test_pending_for_ever_before_the_reset(
    attack: Callable[..., Attack], step: str, prefix: str, failed: str
) -> None:
    """verify, activate, reset: E366 within the bound; the old image still runs, confirmed."""
    result = stalled(attack, prefix)
    assert result.code == "BMSFW-E366", (step, result.report.error)
    assert result.report.failed_step == failed
    assert result.report.outcome == "failed"
    assert BUDGET_S <= result.seconds < BUDGET_S + 4
    # nothing after the stalled request reached the BMS (it is never answered, so the
    # fake's log ends with the request before it)
    assert (
        result.bms.writes[-1] == {"verify": "37", "activate": "3101ff01", "reset": ACTIVATE}[step]
    )
    assert result.bms.resets == 0
    assert result.bms.s.version == "1.0.0+0" and result.bms.s.image_state == "confirmed"
    assert result.report.running_version == "1.0.0+0"


def test_pending_for_ever_on_the_self_test_record_rolls_back(
    attack: Callable[..., Attack],
) -> None:
    """The self-test record never comes: a self-test that cannot be read is not a pass."""
    result = stalled(attack, "220130", after_reset=True)
    assert result.code == "BMSFW-E512", result.report.error
    assert result.report.outcome == "rolled-back"
    assert result.seconds < BUDGET_S + 4
    assert result.bms.writes[-1] == "31010204"  # the rollback, nothing after it
    assert result.bms.s.version == "1.0.0+0" and result.bms.s.image_state == "confirmed"


def test_pending_for_ever_on_the_confirm_is_never_updated(attack: Callable[..., Attack]) -> None:
    """The confirm never finishes: E366 within its bound, 'failed', and the report says
    the truth: the new image still runs in test (the BMS's watchdog reverts it)."""
    result = stalled(attack, "31010203", after_reset=True)
    assert result.code == "BMSFW-E366", result.report.error
    assert "confirm" in result.report.error.message
    assert result.report.outcome == "failed" and not result.report.ok
    assert BUDGET_S <= result.seconds < BUDGET_S + 4
    assert result.bms.writes[-1] == RESET  # the confirm was never answered; nothing after it
    assert result.report.running_version == result.bms.s.version == "2.0.0+0"


def test_boot_status_pending_for_ever_ends_with_the_boot_bound(
    attack: Callable[..., Attack],
) -> None:
    """After the reset the boot status never comes: the boot wait's own bound (E516)."""
    result = stalled(attack, "220120", after_reset=True)
    assert result.code == "BMSFW-E516", result.report.error
    assert not result.report.ok
    assert result.seconds < 10
    assert result.bms.writes[-1] == RESET  # nothing written after the reset
    # activated and reset: the BMS may run the new image; the report must not claim the old
    assert result.report.running_version == "unknown (BMS not answering)"


def test_every_answer_just_inside_p2_star_still_ends_the_step(
    attack: Callable[..., Attack],
) -> None:
    """Each identity DID answered after 0.6 s of 0x78 (inside P2* and the request's
    budget): the nine reads would take ~5 s; the step's 2 s bound ends identify."""
    bms = Behaviour(stall_prefix=b"\x22\xf1", stall_s=0.6)
    result = attack(bms, client=FAST)
    assert result.code == "BMSFW-E366", result.report.error
    assert result.report.failed_step == "identify"
    assert 2 <= result.bms.stalled <= 4
    assert BUDGET_S <= result.seconds < BUDGET_S + 4
    assert result.bms.writes == []


def test_response_pending_flood_is_cut_off_by_count(attack: Callable[..., Attack]) -> None:
    """0x78 every 5 ms for ever: cut off after max_response_pending (100) answers, E367,
    long before any time bound; the host sends nothing more."""
    bms = Behaviour(
        stall_prefix=bytes.fromhex("22f18a"), stall_s=math.inf, pending_interval_s=0.005
    )
    result = attack(bms, client=CLIENT)
    assert result.code == "BMSFW-E367", result.report.error
    assert "101 times" in result.report.error.message
    assert result.report.failed_step == "identify"
    assert result.seconds < BUDGET_S
    assert result.bms.writes == []
