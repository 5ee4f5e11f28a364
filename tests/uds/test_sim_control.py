"""Live fault injection into a simulator in its own process (`bmsfw sim set`), under the
real update pipeline over CAN: the supply sags mid-transfer, the pipeline stops at a
safe point, the old firmware runs; the sag is cleared and a second run resumes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from bmsfw.package import TrustAnchors, VendorPki
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds import open_uds_session
from bmsfw.sim.sim_can import SimCanProcess, node_state_dir
from bmsfw.sim.sim_control import SimCommand, send_command
from bmsfw.update import TransferProgress, UpdateOptions, UpdateProfile, run_update
from bmsfw.update.events import Event
from bmsfw.update.profile import DEFAULT_CONFIRMATIONS

from .conftest import Release, unique_link

BMSFW = str(Path(sys.executable).parent / "bmsfw")


def _bmsfw_sim_set(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bmsfw sim set` in its own process, as a technician's second terminal would run it."""
    command = [BMSFW, "sim", "set", "--state-dir", str(state_dir), "--node", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def _sim_set(state_dir: Path, *args: str) -> dict[str, object]:
    result = _bmsfw_sim_set(state_dir, "--json", *args)
    assert result.returncode == 0, result.stderr
    record: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return record


def test_supply_sag_injected_into_sim_process_pauses_pipeline_then_resume_finishes(
    tmp_path: Path, state_dir: Path, tester: Credentials, pki: VendorPki, release_v2: Release
) -> None:
    trust = TrustAnchors.from_root_certificate(
        pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    )
    base = UpdateProfile()
    # short sampling windows keep the test fast; the limits are the field guide's
    profile = dataclasses.replace(
        base,
        preflight=dataclasses.replace(base.preflight, supply_window_s=0.2),
        transfer=dataclasses.replace(base.transfer, monitor_interval_s=0.05),
    )
    options = UpdateOptions(
        backup_dir=tmp_path / "backups",
        credentials=tester,
        confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
    )
    total = len(release_v2.image)
    injected: list[int] = []

    def sag_at_a_third(event: Event) -> None:
        if isinstance(event, TransferProgress) and event.offset >= total // 3 and not injected:
            injected.append(event.offset)
            record = _sim_set(state_dir, "--supply-sag", "16")  # 24 V -> 8 V, below 9 V
            assert record["applied"] == ["supply sag 16 V"]

    link = unique_link()
    with SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"):
        with open_uds_session(link, 1) as session:
            report = run_update(
                session, release_v2.package, trust, options, profile=profile, sink=sag_at_a_third
            )
            assert report.outcome == "paused", report.error
            assert report.error is not None and report.error.code == "BMSFW-E502"
            assert "supply" in report.error.message
            held = session.read_transfer_state()
            assert injected[0] <= held.contiguous_bytes < total  # stopped between blocks
            status = session.read_boot_status()
            assert (status.running_version, status.image_state) == ("1.0.0", "confirmed")
            assert session.read_telemetry().supply_voltage_v < 9.0

        # the library call behind `sim set --clear`
        result = send_command(node_state_dir(state_dir, 1), SimCommand(clear=True))
        assert result is not None and result["applied"] == ["cleared injected faults"]

        with open_uds_session(link, 1) as session:
            again = run_update(session, release_v2.package, trust, options, profile=profile)
            assert again.outcome == "updated", again.error
            assert again.transfer.resumed_from == held.contiguous_bytes
            status = session.read_boot_status()
            assert (status.running_version, status.image_state) == ("1.1.0", "confirmed")


def test_sim_set_without_a_running_simulator_queues_and_says_so(
    tmp_path: Path, state_dir: Path
) -> None:
    result = _bmsfw_sim_set(state_dir, "--soc", "50", "--wait-s", "0.2")
    assert result.returncode == 1
    assert "no simulator applied it" in result.stderr
    queued = list((node_state_dir(state_dir, 1) / "control").glob("*.cmd.json"))
    assert len(queued) == 1
    assert json.loads(queued[0].read_text())["soc_pct"] == 50.0
    bad = _bmsfw_sim_set(state_dir, "--fault", "meltdown")
    assert bad.returncode == 2 and "unknown protection fault" in bad.stderr
