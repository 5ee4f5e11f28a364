"""Modbus RTU on RS485/USB: register map, codecs, client session, broadcast frames, scan.

Public entry points for other layers::

    open_modbus_session(port, unit, baud, parity, stopbits) -> ModbusSession  (a BmsSession)
    open_modbus_bus(port, baud, parity, stopbits) -> ModbusBus
    scan_serial(port, bauds=..., units=..., expected_baud_bps=...) -> ScanReport

The register map is documented in docs/modbus.md; a string update by broadcast is
``bmsfw.update.string.run_string_update`` (what ``bmsfw update --broadcast`` runs).
"""

from bmsfw.protocol.modbus.client import (
    COMMON_BAUDS,
    ModbusBus,
    ModbusSession,
    SerialSettings,
    open_modbus_bus,
    open_modbus_session,
)
from bmsfw.protocol.modbus.scan import ScanHit, ScanReport, scan_serial

__all__ = [
    "COMMON_BAUDS",
    "ModbusBus",
    "ModbusSession",
    "ScanHit",
    "ScanReport",
    "SerialSettings",
    "open_modbus_bus",
    "open_modbus_session",
    "scan_serial",
]
