"""The field guide's OTA rules over Bluetooth LE, decided in the update core.

Bluetooth is an over-the-air channel that carries far less than the 5 Mbit/s the
guide demands for OTA: bmsfw updates over BLE only a product whose profile declares
Bluetooth its service link, or with an operator override and its reason in the
report; never a safety-critical release; and the link's MTU and interval are judged
against the profile. Every refusal comes before a byte is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.smp import open_smp_session, parse_smp_link
from bmsfw.sim.smp_server import SimSmpProcess
from bmsfw.update.profile import UpdateProfile

from .conftest import BLE_SERVICE_PROFILE, FAST_PROFILE, SmpBench, run_smp_update, start_device


def ble_link(process: SimSmpProcess) -> str:
    return f"ble:{process.info['ble_name']}@{process.info['ble_hci']}"


def with_preflight(profile: UpdateProfile, **limits: object) -> UpdateProfile:
    return dataclasses.replace(profile, preflight=dataclasses.replace(profile.preflight, **limits))


@pytest.mark.req("SEED-OTA-BANDWIDTH")
@pytest.mark.req("SEED-OTA-NOT-SAFETY-CRITICAL")
def test_ble_update_policy(
    device_dir: Path, smp_bench: SmpBench, tester: TesterCredentials, tmp_path: Path
) -> None:
    process = start_device(device_dir, ble=True, require_auth=True)
    passkey = int(process.info["ble_passkey"])
    link = parse_smp_link(ble_link(process), passkey=lambda: passkey)
    try:
        with open_smp_session(link) as session:

            def untouched() -> None:
                assert session.transfer_state().contiguous_bytes == 0
                status = session.read_boot_status()
                assert (status.running_version, status.image_state) == ("1.0.0", "confirmed")

            # 1. a product not declared as serviced over Bluetooth: the OTA floor stops it
            refused = run_smp_update(session, smp_bench, "2.0.0", tmp_path / "1", tester)
            assert refused.outcome == "refused" and refused.failed_step == "preflight"
            assert refused.error is not None and refused.error.code == "BMSFW-E315"
            checks = {c.name: c for c in refused.preflight}
            assert not checks["ota-bandwidth"].passed
            assert "Mbit/s" in checks["ota-bandwidth"].measured
            assert checks["ble-link"].passed, checks["ble-link"]
            assert refused.decisions.channel == "ota"
            untouched()

            # 2. a safety-critical release never goes over Bluetooth, declared or not
            critical = run_smp_update(
                session,
                smp_bench,
                "safety-critical",
                tmp_path / "2",
                tester,
                profile=BLE_SERVICE_PROFILE,
            )
            assert critical.error is not None and critical.error.code == "BMSFW-E113"
            untouched()

            # 3. the link below the profile's limits (an MTU this link does not reach)
            narrow = with_preflight(BLE_SERVICE_PROFILE, ble_att_mtu_min=498)
            limited = run_smp_update(
                session, smp_bench, "2.0.0", tmp_path / "3", tester, profile=narrow
            )
            assert limited.error is not None and limited.error.code == "BMSFW-E316"
            untouched()

            # 4. the operator takes responsibility: the override and its reason are recorded
            reason = "bench unit, no wired port fitted; technician at the pack"
            overridden = run_smp_update(
                session,
                smp_bench,
                "2.0.0",
                tmp_path / "4",
                tester,
                profile=FAST_PROFILE,
                overrides={"ota-bandwidth": reason},
            )
            assert overridden.outcome == "updated", overridden.error
            assert overridden.overrides == {"ota-bandwidth": reason}
            check = {c.name: c for c in overridden.preflight}["ota-bandwidth"]
            assert check.overridden and check.override_reason == reason
            assert any("ota-bandwidth overridden" in w for w in overridden.warnings)
    finally:
        process.stop()
