"""Diagnose finds a wrong baud rate; a plain pymodbus client reads the documented map."""

from __future__ import annotations

import pytest
from pymodbus.client import ModbusSerialClient

from bmsfw.protocol.modbus import open_modbus_session, scan_serial
from bmsfw.protocol.modbus.client import serial_url
from bmsfw.protocol.modbus.errors import ModbusFrameError, ModbusNoReplyError
from bmsfw.sim.sim_rs485 import SimRs485Process


@pytest.mark.req("SEED-BAUD-MATCH")
def test_wrong_baud_is_detected_and_reported(string_of_one: SimRs485Process) -> None:
    # The technician's adapter is at 9600; the BMS runs 115200: nothing sensible comes back.
    with (
        pytest.raises((ModbusNoReplyError, ModbusFrameError)),
        open_modbus_session(string_of_one.port, 1, baud=9600, timeout_s=0.1, retries=0) as s,
    ):
        s.identify()
    report = scan_serial(
        string_of_one.port,
        bauds=(9600, 19200, 115200),
        parities=("E",),
        units=(1, 2),
        expected_baud_bps=9600,
    )
    by_rate = {s.rate: s for s in report.settings}
    assert by_rate["115200 8E1"].units == (1,)
    assert by_rate["9600 8E1"].units == ()
    assert by_rate["19200 8E1"].units == ()
    assert report.baud_mismatch
    assert [h.serial for h in report.hits] == ["BMS0000001"]
    assert "expected 9600" in report.summary() and "115200 8E1" in report.summary()


def _registers_to_text(regs: list[int]) -> str:
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    return raw.split(b"\0", 1)[0].decode()


def test_plain_pymodbus_client_reads_documented_map(string_of_one: SimRs485Process) -> None:
    # Only what docs/modbus.md says: 8E1, input registers from 0, 0x2B/0x0E objects.
    client = ModbusSerialClient(
        serial_url(string_of_one.port), baudrate=115200, parity="E", stopbits=1, timeout=1
    )
    assert client.connect()
    try:
        regs = client.read_input_registers(0, count=0x60, device_id=1).registers
        assert regs[0] == 1  # map version
        soc_pct = regs[1] * 0.01
        pack_v = ((regs[2] << 16) | regs[3]) * 0.001
        cells = regs[0x0A]
        cell_v = [regs[0x10 + i] * 0.0001 for i in range(cells)]
        temps = regs[0x0B]
        assert 0 < soc_pct <= 100
        assert cells == 16 and temps == 4
        assert all(2.5 < v < 4.3 for v in cell_v)
        assert abs(pack_v - sum(cell_v)) < 0.05 * pack_v
        boot = client.read_input_registers(0x0100, count=0x36, device_id=1).registers
        assert boot[0] == 4  # application
        assert _registers_to_text(boot[6:22]) == "1.0.0"
        info = client.read_device_information(read_code=0x03, object_id=0, device_id=1)
        assert info.information[0x00]  # vendor
        assert info.information[0x80] == b"BMS0000001"  # serial
        assert info.information[0x83] == b"1.0.0"  # application version
    finally:
        client.close()
