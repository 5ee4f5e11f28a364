"""`--unit 1-8`, `--unit 1,3,5-7`: parsing of the unit list (pure)."""

from __future__ import annotations

import click
import pytest

from bmsfw.cli._field import _ranges
from bmsfw.cli._link import UNIT_IDS, flatten_units


@pytest.mark.parametrize(
    ("text", "units"),
    [("5", (5,)), ("1-4", (1, 2, 3, 4)), ("1,3,5-7", (1, 3, 5, 6, 7)), (" 2 - 3 ", (2, 3))],
)
def test_unit_ids_parse(text: str, units: tuple[int, ...]) -> None:
    assert UNIT_IDS.convert(text, None, None) == units


@pytest.mark.parametrize("text", ["", "a", "4-2", "1-", "1,,2"])
def test_unit_ids_refuse_bad_text(text: str) -> None:
    with pytest.raises(click.BadParameter):
        UNIT_IDS.convert(text, None, None)


def test_repeated_options_flatten_in_order_and_ranges_render_back() -> None:
    assert flatten_units(((1, 2, 3), (7,))) == (1, 2, 3, 7)
    assert _ranges((1, 2, 3, 5, 7, 8)) == "1-3,5,7-8"
    assert _ranges(()) == ""
