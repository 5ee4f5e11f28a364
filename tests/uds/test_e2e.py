"""End to end over udp_multicast: the virtual BMS in its own process, the tester here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.device.sim_can import SimCanProcess
from bmsfw.link.wirebus import CanFaults
from bmsfw.package import VendorPki
from bmsfw.protocol.errors import UdsTransferInterruptedError
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds import discover_nodes, flash_node, flash_nodes, open_uds_session

from .conftest import Release, provision_nodes, unique_link


@pytest.mark.req("IEC62443-CR3.10")
def test_signed_release_flashed_and_confirmed_over_multicast(
    tmp_path: Path, state_dir: Path, tester: Credentials, release_v2: Release
) -> None:
    link = unique_link()
    with (
        SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"),
        open_uds_session(link, 1) as session,
    ):
        before = session.identify()
        assert before.app_version == "1.0.0"
        offsets: list[int] = []
        result = flash_node(
            session,
            release_v2.header,
            release_v2.image,
            tester,
            node=1,
            progress=lambda _n, off, _t: offsets.append(off),
        )
        assert result.ok and result.resumed_from == 0
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
    tmp_path: Path, state_dir: Path, tester: Credentials, release_v2: Release
) -> None:
    link = unique_link()
    with SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"):
        with open_uds_session(link, 1) as session:
            half = len(release_v2.image) // 2

            def cut_when_half_sent(_node: int, offset: int, _total: int) -> None:
                if offset >= half:
                    session.bus.faults = CanFaults(silent=True)  # cable pulled

            with pytest.raises(UdsTransferInterruptedError) as info:
                flash_node(
                    session,
                    release_v2.header,
                    release_v2.image,
                    tester,
                    node=1,
                    progress=cut_when_half_sent,
                )
            assert info.value.code == "BMSFW-E362"
            assert half <= info.value.offset < len(release_v2.image)
            assert "got no answer" in str(info.value)

        # cable back: a new session finds the old firmware running, then resumes
        with open_uds_session(link, 1) as session:
            status = session.read_boot_status()
            assert (status.running_version, status.image_state) == ("1.0.0", "confirmed")
            result = flash_node(session, release_v2.header, release_v2.image, tester, node=1)
            assert result.resumed_from >= half
            assert result.bytes_sent == len(release_v2.image) - result.resumed_from
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
        results = flash_nodes(
            lambda node: open_uds_session(link, node),
            [1, 2],
            release_v2.header,
            release_v2.image,
            tester,
        )
        assert [r.node for r in results] == [1, 2]
        assert all(r.ok for r in results), [r.summary() for r in results]
        assert {r.new_version for r in results} == {"1.1.0"}
