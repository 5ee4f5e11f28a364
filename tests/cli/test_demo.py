"""`bmsfw demo` (the README's first command) runs the real pipeline and says what happened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_updates_one_pack_and_the_other_rolls_back(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "bmsfw.cli._entry", "demo", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pack1, _, pack2 = result.stdout.partition("pack 2:")
    assert "result:          UPDATED" in pack1
    assert "device runs now: 1.1.0" in pack1
    assert "FAILED - ROLLED BACK" in pack2
    assert "BMSFW-E511" in pack2
    assert "device runs now: 1.0.0" in pack2
    # The demo leaves real artefacts: signed packages and verified configuration backups.
    assert sorted(p.name for p in tmp_path.glob("*.bmsfw")) == [
        "bms-16s-1.0.0.bmsfw",
        "bms-16s-1.1.0.bmsfw",
        "bms-16s-1.1.1-rc1.bmsfw",
    ]
    assert len(list((tmp_path / "backups").glob("*.json"))) == 2
