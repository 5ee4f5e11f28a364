"""A loaded BMS answers one transfer block after the tester's P2: the tester sends the
block again and the BMS answers both copies. The second answer is a late one, not a
wrong block counter: the host reads on to its own answer and the update completes."""

from __future__ import annotations

from collections.abc import Callable

import can

from bmsfw.protocol.uds import Session, open_uds_session

from .conftest import CLIENT, Attack
from .hostile_can import Behaviour, HostileUdsBms


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


def test_a_late_answer_to_a_repeated_read_is_not_taken_for_the_next_request() -> None:
    """The read's repeat is answered after the tester sent its next request (a session
    change): a positive answer of another service is that late answer, read past."""
    channel = "late-answer-read"
    with HostileUdsBms(channel, Behaviour(late_did=0xF18C)) as bms:
        bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        session = open_uds_session(f"virtual:{channel}", 1, config=CLIENT, bus=bus)
        try:
            assert session.read_did(0xF18C) == b"SN-0001"
            session.change_session(Session.PROGRAMMING)
            assert session.read_did(0xF18C) == b"SN-0001"
        finally:
            session.close()
            bus.shutdown()
    assert bms.late_reads == 3  # first read, its repeat (answered late), the last read
