"""End to end over udp_multicast: the virtual BMS in its own process, the tester here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.package import VendorPki
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds import discover_nodes, open_uds_session
from bmsfw.sim.sim_can import SimCanProcess
from pipeline_support import cable_pulled_before_a_block, update_node, update_nodes

from .conftest import Release, provision_nodes, unique_link


@pytest.mark.req("IEC62443-CR3.10")
def test_signed_release_flashed_and_confirmed_over_multicast(
    tmp_path: Path, state_dir: Path, pki: VendorPki, tester: Credentials, release_v2: Release
) -> None:
    link = unique_link()
    with (
        SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"),
        open_uds_session(link, 1) as session,
    ):
        before = session.identify()
        assert before.app_version == "1.0.0"
        offsets: list[int] = []
        package, records = release_v2.package, tmp_path / "records"
        report = update_node(
            session, package, pki, tester, records=records, on_progress=offsets.append
        )
        assert report.outcome == "updated", report.error
        assert report.transfer.resumed_from == 0
        assert offsets == sorted(offsets) and offsets[-1] == len(release_v2.image)
        status = session.read_boot_status()
        assert (status.running_version, status.image_state) == ("1.1.0", "confirmed")
        after = session.identify()
        assert after.app_version == "1.1.0"
        assert after.security_counter == 2  # raised by the confirm
        assert after.active_bank != before.active_bank
        stats = session.bus.stats()
        assert stats.frames_tx > len(release_v2.image) // 8


def test_link_cut_aborts_old_firmware_runs_and_second_run_resumes(
    tmp_path: Path, state_dir: Path, pki: VendorPki, tester: Credentials, release_v2: Release
) -> None:
    link = unique_link()
    with SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"):
        with open_uds_session(link, 1) as session:
            half = len(release_v2.image) // 2
            records = tmp_path / "records"
            cut = cable_pulled_before_a_block(session, half)
            report = update_node(
                session, release_v2.package, pki, tester, records=records, on_progress=cut
            )
            assert report.outcome == "paused" and report.failed_step == "transfer"
            assert report.error.code == "BMSFW-E501"
            assert report.cause.code == "BMSFW-E362"
            assert "got no answer" in report.cause.message
            assert half <= report.transfer.offset < len(release_v2.image)

        # cable back: a new session finds the old firmware running, then resumes
        with open_uds_session(link, 1) as session:
            status = session.read_boot_status()
            assert (status.running_version, status.image_state) == ("1.0.0", "confirmed")
            again = update_node(
                session, release_v2.package, pki, tester, records=tmp_path / "records"
            )
            assert again.outcome == "updated", again.error
            assert again.transfer.resumed_from >= half
            assert again.transfer.bytes_sent == (
                len(release_v2.image) - again.transfer.resumed_from
            )
            assert session.identify().app_version == "1.1.0"


def test_two_nodes_discovered_and_updated_concurrently(
    tmp_path: Path,
    pki: VendorPki,
    release_v1: Release,
    release_v2: Release,
    tester: Credentials,
) -> None:
    state = provision_nodes(tmp_path / "sim", pki, release_v1, (1, 2))
    link = unique_link()
    with SimCanProcess(link, state, (1, 2), time_scale=20, log_file=tmp_path / "sim.log"):
        assert discover_nodes(link) == [1, 2]
        with open_uds_session(link, 1) as one, open_uds_session(link, 2) as two:
            reports = update_nodes(
                [one, two], release_v2.package, pki, tester, records=tmp_path / "records"
            )
        assert len({r.serial for r in reports}) == 2
        assert all(r.outcome == "updated" for r in reports), [r.error for r in reports]
        assert {r.running_version for r in reports} == {"1.1.0"}
