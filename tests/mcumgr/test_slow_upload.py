"""A BMS that takes the SMP upload slowly: every chunk answered late but inside the upload
time-out, so no per-request bound is ever hit. The product profile's SMP floor
(``transfer.min_rate_smp_bps``) stops it once ``rate_grace_s`` is over (E524), resumable,
never marked for test."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.smp import open_smp_session, parse_smp_link
from bmsfw.sim import VirtualBms
from bmsfw.sim.smp_server import OP_WRITE, SmpBmsServer
from bmsfw.update.profile import TransferLimits

from .conftest import FAST_PROFILE, SmpBench, run_smp_update, serving

IMAGE_GROUP, UPLOAD, STATE = 1, 1, 0
DELAY_S = 0.3


class DrippingBms(SmpBmsServer):
    """Answers each image upload chunk ``DELAY_S`` late; counts image-state writes."""

    def __init__(self, bms: VirtualBms) -> None:
        super().__init__(bms, require_auth=True)
        self.chunks = 0
        self.state_writes = 0

    def _image_upload(self, body: dict[Any, Any]) -> dict[str, Any]:
        self.chunks += 1
        time.sleep(DELAY_S)
        return super()._image_upload(body)

    def handle(self, frame: bytes) -> bytes | None:
        group, command = int.from_bytes(frame[4:6]), frame[7]
        if frame[0] & 0x07 == OP_WRITE and (group, command) == (IMAGE_GROUP, STATE):
            self.state_writes += 1
        return super().handle(frame)


def test_a_dripped_upload_hits_the_smp_floor(
    device_dir: Path, smp_bench: SmpBench, tmp_path: Path, tester: TesterCredentials
) -> None:
    profile = dataclasses.replace(
        FAST_PROFILE, transfer=TransferLimits(rate_grace_s=1.0, min_rate_smp_bps=20_000.0)
    )
    with (
        serving(device_dir, DrippingBms) as (bms, link),
        open_smp_session(parse_smp_link(link, timeout_s=1.0)) as session,
    ):
        report = run_smp_update(session, smp_bench, "2.0.0", tmp_path, tester, profile=profile)
        status = bms.bms.boot_status()
    assert report.error is not None and report.error.code == "BMSFW-E524", report.error
    assert "below the floor of 20000 B/s" in report.error.message
    assert report.outcome == "paused" and report.failed_step == "transfer"
    # stopped at the first chunk after the grace: within grace + one chunk (+ 1 s slack)
    assert 1.0 <= (report.transfer.duration_s or 0) <= 1.0 + DELAY_S + 1.0
    assert 0 < (report.transfer.offset or 0) < (report.transfer.total or 0)
    assert bms.state_writes == 0  # never marked for test
    assert status.running_version.startswith("1.0.0") and status.image_state == "confirmed"
