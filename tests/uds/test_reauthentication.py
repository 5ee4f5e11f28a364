"""A BMS that rebooted on its own (a power cut, a watchdog revert) starts again in its
default session, locked. The tester's session notices it from the BMS's answer, enters
the session and authenticates again with the credentials it was given, and the step
goes on; nothing needs a new session or a new `bmsfw` run."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from bmsfw.package import VendorPki
from bmsfw.protocol.errors import UdsConditionsNotCorrectError
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds import UdsSession, open_uds_session
from bmsfw.sim.lab import provision_nodes
from bmsfw.sim.sim_can import CanSimConfig, CanSimulator

from .conftest import SPEC, Release


def _sim(link: str, state: Path) -> CanSimulator:
    return CanSimulator(CanSimConfig(link, (1,), str(state), time_scale=20, control_poll_s=0))


def _send_image(session: UdsSession, release: Release) -> None:
    state = session.prepare(release.header)
    if state.contiguous_bytes == 0:
        session.erase()
    for _ in session.write(release.image, start_offset=state.contiguous_bytes):
        pass
    session.verify()


def test_after_a_power_cycle_the_session_authenticates_again(
    state_dir: Path, tester: Credentials, release_v2: Release
) -> None:
    link = "virtual:reauth-power"
    with open_uds_session(link, 1) as session:
        with _sim(link, state_dir):
            session.authenticate(tester)
            session.prepare(release_v2.header)  # programming session, authenticated
        with _sim(link, state_dir) as sim:  # power back: default session, locked
            _send_image(session, release_v2)  # stage again (it resumes), erase, write, verify
            session.activate()
            session.reset()
            assert session.wait_boot(30).running_version == "1.1.0"
            session.confirm()
            status = sim.devices[1].boot_status()
    assert (status.running_version, status.image_state) == ("1.1.0", "confirmed")


def test_after_a_watchdog_revert_the_session_authenticates_again(
    tmp_path: Path, pki: VendorPki, tester: Credentials, release_v1: Release, release_v2: Release
) -> None:
    spec = dataclasses.replace(SPEC, watchdog_window_s=20.0)  # 1 s of wall time at scale 20
    state = provision_nodes(tmp_path / "sim", pki, release_v1.image, (1,), spec=spec)
    link = "virtual:reauth-watchdog"
    with _sim(link, state) as sim, open_uds_session(link, 1) as session:
        session.authenticate(tester)
        _send_image(session, release_v2)
        session.activate()
        session.reset()
        assert session.wait_boot(30).image_state == "test"
        session.authenticate(tester)  # e.g. to read and write the configuration
        # nobody confirms: the watchdog reverts the test image and the BMS reboots
        deadline = time.monotonic() + 30
        while session.read_boot_status().running_version != "1.0.0":
            assert time.monotonic() < deadline, "the watchdog did not revert"
            time.sleep(0.1)
        assert session.wait_boot(30).running_version == "1.0.0"
        # The device's own answer comes back (conditions not correct: nothing to roll
        # back to), not a refusal of the session the tester believed it still had.
        with pytest.raises(UdsConditionsNotCorrectError):
            session.rollback()
        # and the update can be sent again within the same session
        _send_image(session, release_v2)
        assert sim.devices[1].boot_status().running_version == "1.0.0"
