"""The firmware engineer's bench: keys -> package -> sim provision -> sim can -> info over CAN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bmsfw.sim.lab import unique_multicast_link
from bmsfw.sim.sim_can import SimCanProcess


def bmsfw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmsfw.cli._entry", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_provisioned_nodes_run_the_release_and_answer_over_can(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert bmsfw("keys", "init", str(pki)).returncode == 0
    firmware = tmp_path / "app.bin"
    firmware.write_bytes(bytes(range(256)) * 64)
    unsigned, signed = tmp_path / "r.unsigned", tmp_path / "bench-1.2.0.bmsfw"
    built = bmsfw(
        "package", "build", "--product", "bench", "--version", "1.2.0",
        "--security-counter", "3", "--hw-model", "BENCH-8S", "--hw-revision", "B",
        "--app", str(firmware), "--pki", str(pki), "-o", str(unsigned),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    signed_run = bmsfw("package", "sign", str(unsigned), "--pki", str(pki), "-o", str(signed))
    assert signed_run.returncode == 0, signed_run.stderr

    state = tmp_path / "state"
    result = bmsfw(
        "sim", "provision", "--state-dir", str(state), "--nodes", "2",
        "--pki", str(pki), "--package", str(signed), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [n["serial"] for n in summary["nodes"]] == ["SIM0001", "SIM0002"]

    # Provisioning over an existing device is refused and changes nothing.
    again = bmsfw(
        "sim", "provision", "--state-dir", str(state), "--pki", str(pki), "--package", str(signed)
    )
    assert again.returncode != 0 and "BMSFW-E2" in again.stderr

    link = unique_multicast_link()
    with SimCanProcess(link, state, (1, 2), time_scale=20.0, log_file=tmp_path / "sim.log"):
        info = bmsfw("info", "--can", link, "--node", "2", "--json")
    assert info.returncode == 0, info.stderr
    text = info.stdout
    assert "1.2.0" in text and "BENCH-8S" in text and "SIM0002" in text
