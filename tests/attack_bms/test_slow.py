"""No floor on transfer speed: a BMS asking for ISO-TP block size 1 and STmin 127 ms."""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Attack
from .hostile_can import Behaviour


def test_block_size_1_stmin_127ms_hits_the_rate_floor(attack: Callable[..., Attack]) -> None:
    """~55 B/s for ever before; now E524 once the grace (1 s here) is over, resumable."""
    slow = Behaviour(isotp_block_size=1, isotp_stmin=127, block_length=130, slow_from_download=True)
    result = attack(slow, profile_transfer={"rate_grace_s": 1.0, "min_rate_can_bps": 1000.0})
    assert result.code == "BMSFW-E524", result.report.error
    assert result.report.outcome == "paused"
    assert result.report.failed_step == "transfer"
    assert "below the floor of 1000 B/s" in result.report.error.message
    # stopped after the first block that crossed the grace: well under 10 s
    assert result.seconds < 10
    assert not any(w.startswith("31010202") for w in result.bms.writes)  # never activated
