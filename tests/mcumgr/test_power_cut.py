"""Power cuts over SMP: the virtual MCUboot BMS loses power at each stage of an update.

What runs is what `bmsfw update --smp udp:...` runs (the pipeline over an SMP
session); the BMS serves SMP in its own process and "loses power" by SIGKILL: its
flash, OTP and configuration files stay as they were at that instant. The stages:

* upload: half the image is on the BMS;
* test-mark: the image was marked for a test boot (image state write, confirm=false)
  and the BMS was not reset by us (the power cycle is the reset);
* reset: the reset was sent and the BMS dies while it boots the new image;
* before confirm: the new image ran its self-test, the confirm was not sent yet.

After power-on the BMS must run an application (old or new: never none), and the
same update run again must finish with the new image confirmed and the security
counter raised. A cut upload resumes at the BMS's offset. As MCUboot, a test image
that had started and was not confirmed is reverted at power-on (before confirm
always, reset when the cut came after the test boot started): the retry sends it
again and says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.smp import open_smp_session, parse_smp_link
from bmsfw.sim.smp_server import SimSmpProcess
from bmsfw.update.events import Event, StepFinished, StepStarted, TransferProgress
from bmsfw.update.report import UpdateReport

from .conftest import FAST_PROFILE, SmpBench, run_smp_update, start_device

# A BMS without power never answers: short answer and boot windows keep each cut short.
PROFILE = dataclasses.replace(
    FAST_PROFILE,
    boot=dataclasses.replace(FAST_PROFILE.boot, boot_timeout_s=3.0, revert_timeout_s=3.0),
)


def _cut_when(stage: str, total: int) -> Callable[[Event], bool]:
    def upload(event: Event) -> bool:
        return isinstance(event, TransferProgress) and event.offset >= total // 2

    def test_mark(event: Event) -> bool:
        return isinstance(event, StepFinished) and event.step == "device-verify" and event.ok

    def reset(event: Event) -> bool:
        return isinstance(event, StepFinished) and event.step == "activate" and event.ok

    def before_confirm(event: Event) -> bool:
        return isinstance(event, StepStarted) and event.step == "confirm"

    return {
        "upload": upload,
        "test-mark": test_mark,
        "reset": reset,
        "before-confirm": before_confirm,
    }[stage]


def _update(
    process: SimSmpProcess,
    bench: SmpBench,
    work: Path,
    tester: TesterCredentials,
    sink: Callable[[Event], None] | None = None,
) -> UpdateReport:
    link = parse_smp_link(f"udp:{process.info['udp']}", timeout_s=1.0)
    with open_smp_session(link, upload_timeout_s=2.0) as session:
        return run_smp_update(session, bench, "2.0.0", work, tester, profile=PROFILE, sink=sink)


@pytest.mark.req("SEED-DUAL-BANK", "SEED-INTERRUPTION")
@pytest.mark.parametrize("stage", ["upload", "test-mark", "reset", "before-confirm"])
def test_power_cut_at_each_stage_then_the_same_update_finishes(
    stage: str, device_dir: Path, smp_bench: SmpBench, tester: TesterCredentials, tmp_path: Path
) -> None:
    total = len(smp_bench.releases["2.0.0"].image)
    process = start_device(device_dir, udp=True, require_auth=True)
    cut = _cut_when(stage, total)
    cuts: list[str] = []

    def power_cut(event: Event) -> None:
        if not cuts and cut(event):
            cuts.append(stage)
            process.kill()

    try:
        first = _update(process, smp_bench, tmp_path / "first", tester, sink=power_cut)
        assert cuts == [stage], f"the {stage} stage was never reached: {first.error}"
        assert first.outcome != "updated", first
        assert first.error is not None and first.error.code != "BMSFW-E512", first.error
        if stage == "upload":
            reached = first.transfer.offset

        process = start_device(device_dir, udp=True, require_auth=True)  # power on
        link = parse_smp_link(f"udp:{process.info['udp']}", timeout_s=1.0)
        with open_smp_session(link) as session:
            status = session.wait_boot(10.0)
            assert status.run_state == "application"  # not bricked
            assert status.running_version in {"1.0.0", "2.0.0"}, status

            after_cut = status

        retry = _update(process, smp_bench, tmp_path / "retry", tester)
        assert retry.outcome == "updated", (stage, first.error, retry.error)
        if stage == "upload":
            # the old image still runs; the upload goes on at the BMS's offset
            assert retry.decisions.start == "start"
            assert 0 < retry.transfer.resumed_from <= reached + 2 * 2048, retry.transfer
        elif after_cut.image_state == "reverted":
            # MCUboot: the test image had started and was not confirmed before the power
            # cycle, so the bootloader reverted it; the retry sends it again and says so
            assert stage in {"reset", "before-confirm"}, (stage, after_cut)
            assert after_cut.running_version == "1.0.0", after_cut
            assert retry.decisions.start == "start", retry.decisions
            assert "reverted its last test image" in retry.decisions.start_reason
            assert retry.transfer.offset == total, retry.transfer
        else:
            # the power cycle came before the test boot started: the bootloader boots the
            # marked image for its test, its self-test decides, nothing is sent again
            assert stage in {"test-mark", "reset"}, (stage, after_cut)
            assert retry.decisions.start == "continue-test-image", retry.decisions
            assert not retry.transfer.bytes_sent, retry.transfer
        with open_smp_session(link) as session:
            status = session.read_boot_status()
            assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
            assert session.identify().security_counter == 2
    finally:
        process.stop()
