"""End to end over a pty: the virtual BMS string runs in its own process."""

from __future__ import annotations

from bmsfw.device.sim_rs485 import SimRs485Process
from bmsfw.protocol import session as bms_session
from bmsfw.protocol.modbus.client import open_modbus_session

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
