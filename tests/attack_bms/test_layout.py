"""A BMS whose reported bank layout (DID 0x0104) cannot take the image: refused before
anything is written, by the update core (``core.layout_refusal``)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from .conftest import SPEC, Attack
from .hostile_can import Behaviour

BANK = SPEC.flash.bank_size  # 8 KiB; the release image is ~4.6 KiB


def layout(bank: int, sector: int, banks: int) -> bytes:
    return struct.pack(">IIB", bank, sector, banks)


def test_a_layout_that_fits_is_checked_and_said(attack: Callable[..., Attack]) -> None:
    result = attack(Behaviour(flash_layout=layout(BANK, 1024, 2)))
    assert result.report.outcome == "updated", result.report.error
    assert f"fits a {BANK}-byte bank (2 banks)" in result.report.decisions.bank_layout


def test_a_bms_without_the_layout_leaves_the_fit_to_itself(attack: Callable[..., Attack]) -> None:
    result = attack(Behaviour())
    assert result.report.outcome == "updated", result.report.error
    assert "does not report its bank layout" in result.report.decisions.bank_layout


@pytest.mark.parametrize(
    ("reported", "why"),
    [
        (layout(4096, 1024, 2), "does not fit the BMS's 4096-byte bank"),
        (layout(BANK, 1024, 1), "needs two"),
        (layout(BANK, 1000, 2), "not a whole number of sectors"),
    ],
)
def test_a_layout_that_cannot_take_the_image_is_refused_before_anything_is_written(
    attack: Callable[..., Attack], reported: bytes, why: str
) -> None:
    result = attack(Behaviour(flash_layout=reported))
    assert result.code == "BMSFW-E525", result.report.error
    assert why in result.report.error.message
    assert result.report.outcome == "refused"
    assert result.report.decisions.start == "refuse-bank-layout"
    assert result.bms.writes == []  # no header staged, nothing erased or sent
    assert result.bms.s.version == "1.0.0+0"
    assert result.seconds < 10


def test_a_zero_in_the_layout_is_an_invalid_answer(attack: Callable[..., Attack]) -> None:
    result = attack(Behaviour(flash_layout=layout(BANK, 0, 2)))
    assert result.code == "BMSFW-E363", result.report.error
    assert result.report.failed_step == "identify"
    assert result.bms.writes == []


def test_a_layout_that_changes_after_the_first_identify_is_another_bms(
    attack: Callable[..., Attack],
) -> None:
    result = attack(
        Behaviour(flash_layout=layout(BANK, 1024, 2), flash_layout_later=layout(BANK, 2048, 2))
    )
    assert result.code == "BMSFW-E508", result.report.error
    assert "flash_layout" in result.report.error.message
    assert result.bms.writes == []
