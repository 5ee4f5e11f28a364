"""`bmsfw demo` (the README's first command) runs the real pipeline and says what happened."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path


def test_demo_updates_over_can_then_runs_an_ota_campaign(tmp_path: Path) -> None:
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
    can_part, _, fleet_part = result.stdout.partition("5. fleet operator")
    assert fleet_part, result.stdout
    pack1, _, pack2 = can_part.partition("pack 2:")
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

    # The fleet part: HTTPS server, a canary phase and then everyone, three BMS on 1.1.0.
    assert "(HTTPS, certificate from a demo CA)" in fleet_part
    assert "phase canary:" in fleet_part
    assert "completed phase all: 3 succeeded" in fleet_part
    assert "campaign 1 'to 1.1.0': completed" in fleet_part
    assert "3 of 3 devices succeeded; campaign completed" in fleet_part
    rows = [line for line in fleet_part.splitlines() if "DEMO-GW000-BMS" in line and "│" in line]
    assert len(rows) == 3, fleet_part
    for row in rows:
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        # device, phase, state, version (server inventory), image (the BMS itself), error code
        assert cells[2:] == ["succeeded", "1.1.0", "confirmed", "-"], row
    assert sorted(row.split("│")[2].strip() for row in rows) == ["all", "all", "canary"]
    assert re.search(
        r"safety-critical release 1\.2\.0: .*OTA allowed: no.*campaign refused BMSFW-E606",
        fleet_part,
    ), fleet_part
    audit = re.search(r"server audit trail: (\d+) entries", fleet_part)
    assert audit, fleet_part

    # What the server stored agrees with what the demo printed.
    with sqlite3.connect(tmp_path / "fleet" / "fleet.db") as db:
        assert db.execute("SELECT status FROM campaigns").fetchall() == [("completed",)]
        assert db.execute("SELECT state FROM campaign_devices").fetchall() == [("succeeded",)] * 3
        assert db.execute("SELECT firmware_version FROM devices").fetchall() == [("1.1.0",)] * 3
        (entries,) = db.execute("SELECT count(*) FROM audit_log").fetchone()
        assert entries == int(audit.group(1))
        refused = db.execute(
            "SELECT detail FROM audit_log WHERE action = 'campaign.refused'"
        ).fetchall()
        assert len(refused) == 1 and "safety-critical" in refused[0][0], refused
        # The refused release is stored (wired installs need it) but marked safety-critical.
        assert db.execute("SELECT version, safety_class FROM releases ORDER BY id").fetchall() == [
            ("1.1.0", "standard"),
            ("1.2.0", "safety-critical"),
        ]
