"""bmsfw's SMP session runs the whole update procedure against the virtual BMS.

The BMS serves SMP in its own process (serial console framing on a pty, UDP),
with tester authentication required; the pipeline is the same one CAN and
RS485 use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.protocol.session import BmsSession, TesterCredentials
from bmsfw.protocol.smp import SmpLink, open_smp_session, parse_smp_link
from bmsfw.sim.lab import trust_anchors
from bmsfw.sim.smp_server import SimSmpProcess
from bmsfw.update.events import Event, TransferProgress
from bmsfw.update.pipeline import run_update

from .conftest import (
    BLE_SERVICE_PROFILE,
    FAST_PROFILE,
    SmpBench,
    run_smp_update,
    start_device,
    update_options,
)


def smp_link(process: SimSmpProcess, kind: str) -> SmpLink:
    if kind == "serial":
        return parse_smp_link(f"serial:{process.info['serial_port']}")
    if kind == "ble":
        # the updater's own bumble host on the second virtual controller (in place of
        # a USB dongle), reaching the BMS by its advertised name; it pairs with the
        # passkey the BMS shows (LE Secure Connections)
        passkey = int(process.info["ble_passkey"])
        return parse_smp_link(
            f"ble:{process.info['ble_name']}@{process.info['ble_hci']}", passkey=lambda: passkey
        )
    return parse_smp_link(f"udp:{process.info['udp']}")


@pytest.mark.parametrize("kind", ["serial", "udp", "ble"])
def test_update_confirmed(
    kind: str, device_dir: Path, smp_bench: SmpBench, tester: TesterCredentials, tmp_path: Path
) -> None:
    process = start_device(
        device_dir,
        serial=kind == "serial",
        udp=kind == "udp",
        ble=kind == "ble",
        require_auth=True,
    )
    try:
        with open_smp_session(smp_link(process, kind)) as session:
            assert isinstance(session, BmsSession)
            # over BLE: a product the profile declares serviced over Bluetooth
            profile = BLE_SERVICE_PROFILE if kind == "ble" else FAST_PROFILE
            report = run_smp_update(session, smp_bench, "2.0.0", tmp_path, tester, profile=profile)
            assert report.outcome == "updated", report.error
            assert report.running_version == "2.0.0"
            assert report.decisions.channel == ("ota" if kind == "ble" else "wired")
            # the bank layout of the IDENTITY answer, fitted by the core (test_bank_layout.py)
            assert "fits a 65536-byte bank (2 banks)" in (report.decisions.bank_layout or "")
            assert report.self_test and report.self_test.passed
            status = session.read_boot_status()
            assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
            assert session.identify().security_counter == 2
            link = session.link_check()
            assert link.echo_ok and link.errors == 0, link
            if kind == "ble":
                # bumble's virtual controller has no RSSI to give
                assert "ATT MTU 247" in link.rate and "RSSI n/a" in link.rate, link.rate
                assert link.ble is not None and link.ble.mitm and link.ble.secure_connections
    finally:
        process.stop()


def test_failing_self_test_reverts(
    device_dir: Path, smp_bench: SmpBench, tester: TesterCredentials, tmp_path: Path
) -> None:
    process = start_device(device_dir, udp=True, require_auth=True)
    try:
        with open_smp_session(smp_link(process, "udp")) as session:
            report = run_smp_update(session, smp_bench, "fail-selftest", tmp_path, tester)
            assert report.outcome == "rolled-back", report.error
            assert report.error is not None, report
            assert report.error.code == "BMSFW-E511", report.error  # self-test failed, reverted
            status = session.read_boot_status()
            assert (status.running_version, status.image_state) in {
                ("1.0.0", "confirmed"),
                ("1.0.0", "reverted"),
            }
            assert session.identify().security_counter == 1
    finally:
        process.stop()


def test_cut_link_resumes_the_upload_at_the_device_offset(
    device_dir: Path, smp_bench: SmpBench, tester: TesterCredentials, tmp_path: Path
) -> None:
    """The cable is pulled (and the BMS loses power) mid-upload; the next run goes on from
    the offset the BMS reports for the same image (len + sha), not from byte 0."""
    release = smp_bench.releases["2.0.0"]
    total = len(release.image)
    process = start_device(device_dir, serial=True, require_auth=True)

    def cut_at_half(event: Event) -> None:
        if isinstance(event, TransferProgress) and event.offset >= total // 2:
            process.kill()

    try:
        with open_smp_session(smp_link(process, "serial")) as session:
            first = run_update(
                session,
                release.package,
                trust_anchors(smp_bench.pki),
                update_options(tmp_path / "first", tester),
                profile=FAST_PROFILE,
                sink=cut_at_half,
            )
        assert first.outcome == "paused" and first.failed_step == "transfer", first.error
        assert first.error is not None and first.error.code == "BMSFW-E501", first.error
        reached = first.transfer.offset
        assert total // 2 <= reached < total

        process = start_device(device_dir, serial=True, require_auth=True)
        with open_smp_session(smp_link(process, "serial")) as session:
            second = run_smp_update(session, smp_bench, "2.0.0", tmp_path / "second", tester)
        assert second.outcome == "updated", second.error
        resumed = second.transfer.resumed_from
        # The BMS counts what it holds from 0 without a gap. It may hold up to the two
        # chunks that were in flight beyond the last answer the host saw, and after the
        # power cut it re-counts conservatively: the block being programmed at the cut
        # (512 B here) is sent again.
        assert reached - 1024 <= resumed <= reached + 2 * 2048, (reached, resumed)
        assert resumed < total
        assert second.transfer.bytes_sent == total - resumed
    finally:
        process.stop()
