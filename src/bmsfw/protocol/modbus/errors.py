"""Modbus RTU errors (BMSFW-E370..E399), raised by the RS485/USB client and tools.

Transport trouble (no reply, garbage, a port that will not open) derives from
:class:`~bmsfw.errors.TransportError`; a BMS that answers but refuses a command
derives from :class:`~bmsfw.errors.DeviceError` and carries the device's own
result code and text, read back from the status registers.
"""

from __future__ import annotations

from bmsfw.errors import DeviceError, TransportError, UpdateError, UsageError

__all__ = [
    "ModbusBusyError",
    "ModbusCommandRefusedError",
    "ModbusExceptionResponseError",
    "ModbusFrameError",
    "ModbusInvalidResponseError",
    "ModbusMapVersionError",
    "ModbusNoReplyError",
    "ModbusPortError",
    "ModbusRepairError",
    "ModbusSerialParamsError",
    "ModbusUnitIdError",
]


class ModbusNoReplyError(TransportError, TimeoutError):
    """The addressed unit did not answer within the time-out (after retries)."""

    code = "BMSFW-E370"
    diagnosis = "No Modbus reply from the unit: wrong unit id, baud rate or parity, or no power."
    remedy = (
        "Run `bmsfw diagnose PORT` to scan baud rates and unit ids; check A/B wiring, "
        "termination and that the BMS is powered."
    )


class ModbusExceptionResponseError(TransportError):
    """The unit answered with a Modbus exception response (illegal function/address/value)."""

    code = "BMSFW-E371"
    diagnosis = "The BMS answered a Modbus request with an exception code."
    remedy = (
        "Check that the device speaks the bmsfw register map (docs/modbus.md) and "
        "that no other master is driving the bus."
    )


class ModbusCommandRefusedError(DeviceError):
    """A command written to the control register was refused; carries the device's reason."""

    code = "BMSFW-E372"
    diagnosis = "The BMS refused a command written to its control register."
    remedy = "Read the reason in the message; `bmsfw info` shows the device state."

    def __init__(self, message: str, *, device_code: str = "", command: str = "") -> None:
        super().__init__(message)
        self.device_code = device_code
        self.command = command


class ModbusFrameError(TransportError):
    """Replies arrived but were garbled (CRC or framing errors)."""

    code = "BMSFW-E373"
    diagnosis = "Modbus replies are garbled: baud rate, parity or stop bits do not match the BMS."
    remedy = "Run `bmsfw diagnose PORT` to find the BMS's serial settings; check termination."


class ModbusPortError(TransportError):
    """The serial port could not be opened."""

    code = "BMSFW-E374"
    diagnosis = "The serial port could not be opened."
    remedy = (
        "Check the port name (`ls /dev/ttyUSB* /dev/ttyACM*` or the COM port), that the "
        "adapter is plugged in and that no other program holds the port."
    )


class ModbusUnitIdError(UsageError):
    """A unit id outside 1..247 was given for an addressed request."""

    code = "BMSFW-E375"
    diagnosis = "Modbus unit ids for addressed requests are 1..247 (0 is broadcast, write only)."
    remedy = "Give the BMS's unit id (1..247); `bmsfw diagnose PORT` lists the units present."


class ModbusSerialParamsError(UsageError):
    """Baud rate, parity or stop bits are not valid serial settings."""

    code = "BMSFW-E376"
    diagnosis = "The serial settings are not valid (baud rate, parity N/E/O, stop bits 1/2)."
    remedy = "Use e.g. `--baud 115200 --parity E --stopbits 1` (8E1 is the Modbus default)."


class ModbusMapVersionError(DeviceError):
    """The unit answers but publishes a register map version this client does not speak."""

    code = "BMSFW-E377"
    diagnosis = "The BMS publishes a Modbus register map version bmsfw does not know."
    remedy = "Update bmsfw, or check docs/modbus.md for the map versions this release supports."


class ModbusBusyError(DeviceError, TimeoutError):
    """The unit kept reporting a busy state past the time-out."""

    code = "BMSFW-E378"
    diagnosis = "The BMS stayed busy (booting, erasing or verifying) longer than allowed."
    remedy = "Wait and read `bmsfw info`; if it stays busy, power-cycle the BMS and retry."


class ModbusRepairError(UpdateError):
    """Blocks stayed missing after the allowed number of repair rounds."""

    code = "BMSFW-E379"
    diagnosis = "The BMS still misses image blocks after repeated repair rounds."
    remedy = (
        "The link drops frames to this unit: check wiring and termination, lower the baud "
        "rate, then run the update again (blocks already written are kept)."
    )


class ModbusInvalidResponseError(TransportError):
    """An answer that is a valid Modbus frame but not what the register map documents."""

    code = "BMSFW-E381"
    diagnosis = (
        "The BMS answered with values the register map does not allow (an identity object"
        " that is not a number, a document longer than its window, a JSON document that is"
        " not the documented one)."
    )
    remedy = (
        "Check that the BMS firmware implements the register map of docs/modbus.md;"
        " run with -vv for the frame log."
    )
