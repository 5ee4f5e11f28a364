"""The interop clients are stock tools: they must not import bmsfw."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLIENTS = ("uds_client.py", "modbus_client.py", "smp_client.py")


@pytest.mark.parametrize("name", CLIENTS)
def test_client_imports_nothing_of_bmsfw(name: str) -> None:
    tree = ast.parse((Path(__file__).parent / name).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported, name
    assert not [m for m in imported if m.split(".")[0] in ("bmsfw", "tests")], imported
    relative = {m for m in imported if m.startswith(".")}
    assert relative <= {".uds_client"}, relative  # only the other stock client
