"""The layers of docs/dev/guide.md hold: imports point downwards only, and the product never
imports the simulators (``bmsfw.sim``) except from the CLI commands that run them.

A static check over the source tree (every ``import``/``from`` statement, including the
lazy ones inside functions), so a violation fails here before it reaches a user's install.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bmsfw"

# Lower number = lower layer. A module may import its own layer and lower ones.
RANK = {
    "errors": 0,
    "package": 1,
    "link": 2,
    "protocol": 3,
    "update": 4,
    "evidence": 4,
    "fleet": 5,
    "cli": 6,
}
# CLI modules that exist to run the simulators (sim, demo, the agent's simulated fleet).
SIM_USERS = {
    "cli/_sim.py",
    "cli/_sim_provision.py",
    "cli/_sim_rs485.py",
    "cli/_demo.py",
    "cli/_demo_fleet.py",
    "cli/_agent.py",
}


def _layer(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name == "bmsfw" or name.startswith("bmsfw.")]


def _violations() -> list[str]:
    bad: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if len(rel.parts) == 1 and rel.name in {"__init__.py", "__main__.py"}:
            continue
        own = _layer(rel)
        for line, name in _imports(path):
            parts = name.split(".")
            if len(parts) < 2:
                continue
            target = parts[1]
            if own in ("sim", target):
                continue
            where = f"{rel.as_posix()}:{line} imports {name}"
            if target == "sim":
                if rel.as_posix() not in SIM_USERS:
                    bad.append(where + " (the product must not import the simulators)")
                continue
            if own in RANK and target in RANK and RANK[target] > RANK[own]:
                bad.append(where + f" ({own} may not depend on {target})")
    return bad


def test_imports_point_downwards_and_the_product_never_imports_sim() -> None:
    assert _violations() == []


def test_the_check_sees_a_violation(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "bmsfw"
    (fake / "update").mkdir(parents=True)
    (fake / "update" / "x.py").write_text(
        "def f():\n    from bmsfw.sim import VirtualBms\n    import bmsfw.fleet.server\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert _violations() == [
        "update/x.py:2 imports bmsfw.sim (the product must not import the simulators)",
        "update/x.py:3 imports bmsfw.fleet.server (update may not depend on fleet)",
    ]
