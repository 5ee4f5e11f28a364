"""The bank layout over SMP: the vendor group's IDENTITY reports the image banks
(``flash_layout``: bank size, sector size, banks; docs/smp.md), as DID 0x0104 on CAN and
identity object 0x87 on RS485 do. The update core fits the image to it before anything
is written (E525; an update that fits says so: test_session.py), and a layout that
changes after the first identify is another BMS (E508): nothing more is written to it.

The BMS here is the virtual BMS's SMP server with one lie added (its bank layout), served
in this process on the SMP console framing over a pty."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bmsfw.errors import BmsfwError
from bmsfw.protocol.session import FlashLayout, TesterCredentials
from bmsfw.protocol.smp import open_smp_session, parse_smp_link
from bmsfw.sim import VirtualBms
from bmsfw.sim.smp_server import OP_WRITE, SmpBmsServer

from .conftest import SPEC, SmpBench, run_smp_update, serving

LAYOUT = FlashLayout(SPEC.flash.bank_size, 4096, 2)


class LayingBms(SmpBmsServer):
    """Reports ``reported`` as its bank layout (None: its own), and ``after_auth`` once a
    tester has authenticated; counts the write requests it gets after that change."""

    def __init__(self, bms: VirtualBms, reported: object = None, after_auth: object = None) -> None:
        super().__init__(bms, require_auth=True)
        self.reported, self.after_auth = reported, after_auth
        self.changed = False
        self.writes = 0
        self.writes_after_change: list[tuple[int, int]] = []  # (group, command)

    def handle(self, frame: bytes) -> bytes | None:
        if frame[0] & 0x07 == OP_WRITE:
            self.writes += 1
            if self.changed:
                self.writes_after_change.append((int.from_bytes(frame[4:6]), frame[7]))
        return super().handle(frame)

    def _identity(self, body: dict[Any, Any]) -> dict[str, Any]:
        answer = super()._identity(body)
        if self.reported is not None:
            answer["flash_layout"] = self.reported
        if self.after_auth is not None and self._authenticated:
            self.changed = True
            answer["flash_layout"] = self.after_auth
        return answer


def test_a_layout_that_changes_mid_update_stops_it(
    device_dir: Path, smp_bench: SmpBench, tmp_path: Path, tester: TesterCredentials
) -> None:
    """After the authentication (a write) the BMS reports 8 KiB sectors: E508 at the start
    of the transfer, and not one write request more (no erase, no upload, no image state);
    the BMS still runs its old image, confirmed."""
    with serving(device_dir, LayingBms, after_auth=[SPEC.flash.bank_size, 8192, 2]) as (bms, link):
        with open_smp_session(parse_smp_link(link, timeout_s=1.0)) as session:
            assert session.identify().flash_layout == LAYOUT
            report = run_smp_update(session, smp_bench, "2.0.0", tmp_path, tester)
        status = bms.bms.boot_status()
    assert report.error is not None and report.error.code == "BMSFW-E508", report.error
    assert "flash_layout" in report.error.message
    assert report.failed_step == "transfer"
    assert bms.changed and bms.writes >= 1  # it was authenticated: mid-update
    assert bms.writes_after_change == []
    assert status.running_version.startswith("1.0.0") and status.image_state == "confirmed"


def test_a_layout_the_image_does_not_fit_is_refused_before_anything_is_written(
    device_dir: Path, smp_bench: SmpBench, tmp_path: Path, tester: TesterCredentials
) -> None:
    with (
        serving(device_dir, LayingBms, reported=[16384, 4096, 2]) as (bms, link),
        open_smp_session(parse_smp_link(link, timeout_s=1.0)) as session,
    ):
        report = run_smp_update(session, smp_bench, "2.0.0", tmp_path, tester)
    assert report.error is not None and report.error.code == "BMSFW-E525", report.error
    assert "does not fit the BMS's 16384-byte bank" in report.error.message
    assert report.outcome == "refused"
    assert bms.writes == 0


@pytest.mark.parametrize(
    "reported",
    [[65536, 4096], [0, 4096, 2], [65536, -1, 2], ["x", 4096, 2], "65536/4096/2"],
    ids=["two-numbers", "zero-bank", "negative-sector", "not-a-number", "text"],
)
def test_a_layout_that_is_not_one_is_an_invalid_answer(device_dir: Path, reported: object) -> None:
    with (
        serving(device_dir, LayingBms, reported=reported) as (bms, link),
        open_smp_session(parse_smp_link(link, timeout_s=1.0)) as session,
        pytest.raises(BmsfwError) as caught,
    ):
        session.identify()
    assert caught.value.code == "BMSFW-E392", caught.value
    assert bms.writes == 0
