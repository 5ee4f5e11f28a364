"""Firmware as a BMS team has it, updated on a fresh virtual BMS over CAN and RS485.

Each release (a plain .bin, Intel HEX, ELF, imgtool with key hash, imgtool with
full key) goes to its own factory-fresh BMS with `bmsfw update`, which must end
confirmed with the BMS reporting the MCUboot header version the version rule
gives (docs/packages.md, "Versions"). Releases the BMS would refuse after the
transfer are refused before it, each with its own code, and not one byte
reaches the BMS's flash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.cli_support import CONFIRM, run_bmsfw

from .conftest import NODES, REFUSALS, REMEDIES, UPDATES, Bench, Vendor


def _update(
    vendor: Vendor, bench: Bench, name: str, backups: Path, node: int | None = None
) -> tuple[int, dict[str, Any]]:
    node = NODES[name] if node is None else node
    result = run_bmsfw(
        "update", *bench.link, bench.node_option, str(node), str(vendor.packages[name]),
        "--trust", str(vendor.pki / "root-ca.crt"), "--backup-dir", str(backups),
        "--tester-cert", str(vendor.tester_chain), "--tester-key", str(vendor.tester_key),
        "--operator", "firmware-inputs", *CONFIRM, "--profile", str(vendor.profile), "--json",
        timeout_s=180,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


@pytest.mark.req("SEED-SECURE-BOOT", "SEED-TESTER-AUTH")
@pytest.mark.parametrize("name", list(UPDATES))
def test_update_confirmed(vendor: Vendor, bench: Bench, name: str, tmp_path: Path) -> None:
    code, report = _update(vendor, bench, name, tmp_path)
    assert code == 0, report.get("error")
    assert report["outcome"] == "updated", report
    assert report["running_version"] == UPDATES[name][1]
    assert report["device_now"]["image_state"] == "confirmed", report["device_now"]


@pytest.mark.req("SEED-HW-COMPAT", "SEED-ANTI-ROLLBACK", "SEED-TROUBLESHOOTING")
@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_before_any_byte(vendor: Vendor, bench: Bench, name: str, tmp_path: Path) -> None:
    stored_before = bench.sim.stored(NODES[name])
    code, report = _update(vendor, bench, name, tmp_path)
    assert code == 3, report
    assert report["error"]["code"] == REFUSALS[name]
    assert report["error"]["remedy"]
    assert report["failed_step"] == "verify-package"
    assert bench.sim.stored(NODES[name]) == stored_before  # flash (banks, OTP, ...) and board

    # The remedy the error names works on the same BMS.
    code, report = _update(vendor, bench, REMEDIES[name], tmp_path, node=NODES[name])
    assert code == 0, report.get("error")
    assert report["device_now"]["image_state"] == "confirmed"
