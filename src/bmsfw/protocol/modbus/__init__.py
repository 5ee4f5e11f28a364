"""Modbus RTU on RS485/USB: register map, codecs, client session, broadcast updater, scan.

Public entry points for other layers::

    open_modbus_session(port, unit, baud, parity, stopbits) -> ModbusSession  (a BmsSession)
    open_modbus_bus(port, baud, parity, stopbits) -> ModbusBus
    broadcast_update(bus, units, header, image, credentials, policy=...) -> BroadcastReport
    scan_serial(port, bauds=..., units=..., expected_baud_bps=...) -> ScanReport

The register map is documented in docs/modbus.md.
"""

from bmsfw.protocol.modbus.broadcast import (
    BroadcastPolicy,
    BroadcastReport,
    NodeOutcome,
    broadcast_update,
)
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
    "BroadcastPolicy",
    "BroadcastReport",
    "ModbusBus",
    "ModbusSession",
    "NodeOutcome",
    "ScanHit",
    "ScanReport",
    "SerialSettings",
    "broadcast_update",
    "open_modbus_bus",
    "open_modbus_session",
    "scan_serial",
]
