"""Power cuts through the CLI at the phases that used to strand a BMS, CAN and RS485:
the same `bmsfw update` again finishes, without sending again what the BMS holds.
(The campaign at random times: ``python -m benchmarks.power_cut_cli``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_support import Kit
from power_cut_support import Link, Site, make_power_cut_kit


@pytest.fixture(scope="module")
def cut_kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return make_power_cut_kit(tmp_path_factory.mktemp("cut-kit"))


def _after_activate(line: str) -> bool:
    return '"StepFinished"' in line and '"step": "activate"' in line


def _mid_transfer(line: str) -> bool:
    if '"TransferProgress"' not in line:
        return False
    return int(json.loads(line.split("bmsfw.cli: ", 1)[1])["offset"]) >= 16 * 1024


@pytest.mark.parametrize("link", ["can", "rs485"])
def test_cut_after_activation_then_the_same_command_confirms(
    cut_kit: Kit, tmp_path: Path, link: Link
) -> None:
    """Issue 12: the first run said E510 'boot loop', the retry E406 'confirm or roll back'."""
    result = Site(cut_kit, tmp_path, link).cut(_after_activate)
    assert result.first_error == "BMSFW-E516", result  # power loss, not a boot loop
    assert not result.bricked and result.after_cut.startswith("2.0.0"), result
    assert result.finished, result
    assert result.retry_start == "continue-test-image", result
    assert result.bytes_sent == 0 and not result.resent_held, result


def test_cut_mid_transfer_on_rs485_resumes(cut_kit: Kit, tmp_path: Path) -> None:
    result = Site(cut_kit, tmp_path, "rs485").cut(_mid_transfer)
    assert not result.bricked and result.after_cut.startswith("1.0.0"), result
    assert result.finished, result
    assert result.resumed_from >= 16 * 1024, result
    assert result.bytes_sent == 40 * 1024 + 1024 - result.resumed_from or result.bytes_sent > 0
