"""End to end over a pty: the virtual BMS string runs in its own process."""

from __future__ import annotations

from bmsfw.device.sim_control import SimCommand, send_command
from bmsfw.device.sim_rs485 import SimRs485Process
from bmsfw.protocol import session as bms_session
from bmsfw.protocol.modbus import (
    BroadcastPolicy,
    broadcast_update,
    open_modbus_bus,
    open_modbus_session,
)

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
    string_of_eight: SimRs485Process, release_v2: Release, tester: bms_session.TesterCredentials
) -> None:
    with open_modbus_bus(string_of_eight.port, timeout_s=0.2, retries=1) as bus:
        report = broadcast_update(
            bus,
            range(1, 9),
            release_v2.header,
            release_v2.image,
            tester,
            policy=BroadcastPolicy(activation="all", boot_timeout_s=30),
        )
        by_unit = {n.unit: n for n in report.nodes}
        assert sorted(by_unit) == list(range(1, 9))
        assert by_unit[5].result == "rolled-back", by_unit[5]
        assert by_unit[5].running_version == "1.0.0"
        assert "self-test" in by_unit[5].revert_reason
        for unit in (1, 2, 3, 4, 6, 7, 8):
            assert by_unit[unit].result == "confirmed", by_unit[unit]
            assert by_unit[unit].running_version == "1.1.0"
        # the image went over the wire once: one frame per 244 data bytes
        assert report.broadcast_frames <= len(release_v2.image) // 244 + 1
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
