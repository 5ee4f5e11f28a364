"""End to end over a pty: the virtual BMS string runs in its own process."""

from __future__ import annotations

from pathlib import Path

from bmsfw.package import VendorPki
from bmsfw.protocol import session as bms_session
from bmsfw.protocol.modbus import open_modbus_bus, open_modbus_session
from bmsfw.sim.sim_control import SimCommand, send_command
from bmsfw.sim.sim_rs485 import SimRs485Process
from pipeline_support import update_string

from .conftest import Release


def test_single_node_update(
    string_of_one: SimRs485Process, release_v2: Release, tester: bms_session.TesterCredentials
) -> None:
    with open_modbus_session(string_of_one.port, 1) as session:
        assert isinstance(session, bms_session.BmsSession)
        before = session.identify()
        assert before.app_version == "1.0.0"
        assert session.read_telemetry().soc_pct > 0
        session.authenticate(tester)
        state = session.prepare(release_v2.header)
        assert state.total_size == len(release_v2.image)
        session.erase()
        offsets = list(session.write(release_v2.image))
        assert offsets[-1] == len(release_v2.image)
        assert session.transfer_state().missing_ranges == ()
        session.verify()
        session.activate()
        session.reset()
        status = session.wait_boot(30)
        assert status.running_version == "1.1.0"
        assert status.image_state == "test"
        result = session.read_self_test()
        assert result.passed, result
        session.confirm()
        after = session.identify()
        assert after.app_version == "1.1.0"
        assert session.read_boot_status().image_state == "confirmed"


def test_string_of_eight_by_broadcast_one_rolls_back(
    string_of_eight: SimRs485Process,
    release_v2: Release,
    pki: VendorPki,
    tester: bms_session.TesterCredentials,
    tmp_path: Path,
) -> None:
    with open_modbus_bus(string_of_eight.port) as bus:  # the CLI's default timing
        string = update_string(bus, range(1, 9), release_v2.package, pki, tester, records=tmp_path)
        by_unit = {row.unit: row for row in string.rows}
        assert sorted(by_unit) == list(range(1, 9))
        assert by_unit[5].outcome == "rolled-back", by_unit[5]
        assert by_unit[5].now == "1.0.0" and by_unit[5].error_code == "BMSFW-E511"
        for unit in (1, 2, 3, 4, 6, 7, 8):
            assert by_unit[unit].outcome == "updated", by_unit[unit]
            assert by_unit[unit].now == "1.1.0"
        # the image went over the wire once: one frame per 244 data bytes
        assert string.transfer["mode"] == "broadcast"
        assert string.transfer["frames"] <= len(release_v2.image) // 244 + 1
        # every node reads back what it runs now
        for unit in range(1, 9):
            ident = bus.session(unit).identify()
            assert ident.app_version == ("1.0.0" if unit == 5 else "1.1.0")
            assert bus.session(unit).read_boot_status().image_state in ("confirmed", "reverted")


def test_sim_set_reaches_a_node_of_a_running_string(string_of_one: SimRs485Process) -> None:
    """`bmsfw sim set` (sim_control) works on RS485 strings as on CAN: low SOC, then clear."""
    state_dir = string_of_one.info["nodes"][0]["state_dir"]
    result = send_command(state_dir, SimCommand(soc_pct=15.0, supply_sag_v=10.0))
    assert result is not None and not result["error"], result
    with open_modbus_session(string_of_one.port, 1) as session:
        telemetry = session.read_telemetry()
        assert abs(telemetry.soc_pct - 15.0) < 1.0, telemetry
        assert telemetry.supply_voltage_v < 20.0, telemetry
        assert send_command(state_dir, SimCommand(supply_sag_v=0.0)) is not None
        assert session.read_telemetry().supply_voltage_v > 20.0
