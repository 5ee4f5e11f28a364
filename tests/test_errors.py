"""The error catalogue: unique codes, every class has a diagnosis and a remedy."""

import importlib
import pkgutil

import pytest

import bmsfw
from bmsfw.errors import BmsfwError, all_error_classes


def _import_everything() -> None:
    for info in pkgutil.walk_packages(bmsfw.__path__, "bmsfw."):
        importlib.import_module(info.name)


@pytest.mark.req("SEED-TROUBLESHOOTING")
def test_error_codes_are_unique_and_documented() -> None:
    _import_everything()
    classes = all_error_classes()
    codes = [cls.code for cls in classes]
    duplicates = {code for code in codes if codes.count(code) > 1}
    assert not duplicates, f"error codes used twice: {sorted(duplicates)}"
    for cls in classes:
        assert cls.code.startswith("BMSFW-E") and len(cls.code) == 10, cls
        assert cls.diagnosis and cls.remedy, cls


def test_error_str_carries_code() -> None:
    err = BmsfwError("boom")
    assert str(err) == "BMSFW-E000: boom"
    assert err.to_dict()["remedy"]
