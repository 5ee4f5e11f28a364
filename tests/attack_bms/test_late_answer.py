"""A loaded BMS answers one transfer block after the tester's P2: the tester sends the
block again and the BMS answers both copies. The second answer is a late one, not a
wrong block counter: the host reads on to its own answer and the update completes."""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Attack
from .hostile_can import Behaviour


def test_a_block_answered_twice_after_a_time_out_does_not_stop_the_transfer(
    attack: Callable[..., Attack],
) -> None:
    honest = attack(Behaviour(block_length=514))
    result = attack(Behaviour(block_length=514, late_block=2))
    assert result.bms.late_answers == 1  # block 2 was answered late, so it went twice
    assert result.report.error is None, result.report.error
    assert result.report.outcome == "updated"
    # every byte once: the repeated block was acknowledged, not written again
    assert result.bms.s.received == honest.bms.s.received
