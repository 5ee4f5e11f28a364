"""A 921,600-baud line with 3.5-character frame gaps, the string served 2 nodes per
simulated tap by 2 node processes of their own (the set-up of bench_rs485 at 16 nodes)."""

from __future__ import annotations

import time
from pathlib import Path

from bmsfw.package import VendorPki
from bmsfw.protocol import session as bms_session
from bmsfw.protocol.modbus import open_modbus_bus
from bmsfw.sim.sim_rs485 import SimRs485Process
from pipeline_support import update_string

from .conftest import (
    TIME_SCALE,
    Release,
    break_cell_sensor,
    provision_string,
    set_line,
)

BAUD = 921_600


def test_string_on_a_fast_line_with_node_processes(
    tmp_path: Path,
    pki: VendorPki,
    release_v1: Release,
    release_v2: Release,
    tester: bms_session.TesterCredentials,
) -> None:
    units = (1, 2, 3, 4, 5)
    state = provision_string(tmp_path / "sim", pki, release_v1, units)
    break_cell_sensor(state, 3)
    for unit in units:
        set_line(state, unit, BAUD, char_timed_gap=True)
    with (
        SimRs485Process(
            state,
            units,
            baud_bps=BAUD,
            throttle=True,
            time_scale=TIME_SCALE,
            frame_gap="chars",
            nodes_per_port=2,
            node_processes=2,
            log_file=tmp_path / "sim.log",
        ) as sim,
        open_modbus_bus(sim.port, BAUD, frame_gap="chars", timeout_s=0.3) as bus,
    ):
        assert sim.info["frame_gap"] == "chars" and sim.info["node_processes"] == 2
        assert bus.settings.silence_s < 0.0001  # 42 µs, not the spec's 1.75 ms
        # Unit 5 alone on its tap, one by one; then 1..4 (two taps, two processes) by broadcast.
        session = bus.session(5)
        session.authenticate(tester)
        session.prepare(release_v2.header)
        session.erase()
        assert list(session.write(release_v2.image))[-1] == len(release_v2.image)
        session.verify()
        session.activate()
        session.reset()
        assert session.wait_boot(30).image_state == "test"
        assert session.read_self_test().passed
        session.confirm()
        string = update_string(
            bus, (1, 2, 3, 4), release_v2.package, pki, tester, records=tmp_path / "r"
        )
        assert "3.5-character frame gap" in string.rate
        by_unit = {row.unit: row for row in string.rows}
        assert by_unit[3].outcome == "rolled-back" and by_unit[3].now == "1.0.0"
        for unit in (1, 2, 4):
            assert by_unit[unit].outcome == "updated", by_unit[unit]
        # Each node answers for itself, whichever tap and process serves it.
        for unit in units:
            ident = bus.session(unit).identify()
            assert ident.app_version == ("1.0.0" if unit == 3 else "1.1.0")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_node_processes_lose_power_with_the_simulator(
    tmp_path: Path, pki: VendorPki, release_v1: Release
) -> None:
    """Killing the simulator (a power cut) must not leave node processes serving its state."""
    state = provision_string(tmp_path / "sim", pki, release_v1, (1, 2))
    sim = SimRs485Process(state, (1, 2), node_processes=2, log_file=tmp_path / "sim.log")
    sim.start()
    try:
        assert sim.process is not None
        nodes = _children(sim.process.pid)
        assert len(nodes) == 2 and all(_alive(pid) for pid in nodes)
        sim.kill()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in nodes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in nodes)
    finally:
        sim.stop()
