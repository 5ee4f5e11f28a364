"""The technician docs stay complete: every error code is in docs/troubleshooting.md."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import bmsfw
from bmsfw.errors import all_error_classes

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.req("SEED-TROUBLESHOOTING")
def test_troubleshooting_lists_every_error_code() -> None:
    for info in pkgutil.walk_packages(bmsfw.__path__, "bmsfw."):
        importlib.import_module(info.name)
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    missing = sorted({cls.code for cls in all_error_classes() if f"`{cls.code}`" not in text})
    assert not missing, f"docs/troubleshooting.md lacks {missing}"


def test_howto_uses_the_commands_that_exist() -> None:
    from bmsfw.cli._field import FIELD_COMMANDS

    text = (DOCS / "technician-howto.md").read_text(encoding="utf-8")
    for command in ("scan", "info", "preflight", "backup", "update", "diff", "rollback"):
        assert f"bmsfw {command}" in text
    names = {c.name for c in FIELD_COMMANDS}
    for word in text.split("bmsfw ")[1:]:
        first = word.split()[0].strip("`")
        if first.isalpha() and first.islower() and first not in {"keys", "package", "sim", "demo"}:
            assert first in names, f"howto mentions unknown command bmsfw {first}"
