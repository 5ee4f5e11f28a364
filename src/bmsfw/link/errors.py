"""Link-layer errors (BMSFW-E301..E339): CAN buses, ISO-TP, serial lines.

All derive from :class:`bmsfw.errors.TransportError`; the ones that are time-outs
also derive from the built-in :class:`TimeoutError` (as python-can's
``CanTimeoutError`` does), so ``except TimeoutError`` works across layers.
"""

from __future__ import annotations

from bmsfw.errors import TransportError

__all__ = [
    "BadLinkNameError",
    "BusOffError",
    "CanBusOpenError",
    "CanDriverMissingError",
    "CanSendError",
    "IsoTpConfigError",
    "IsoTpTimeoutError",
    "IsoTpTransferError",
    "LinkClosedError",
    "SerialConfigError",
    "SerialLinkError",
    "UnknownCanInterfaceError",
]


class BadLinkNameError(TransportError):
    """A link name (``interface:channel@bitrate,...``) could not be parsed."""

    code = "BMSFW-E301"
    diagnosis = "The CAN link name is not in the form INTERFACE:CHANNEL[@BITRATE[/DATA]][,OPTION]."
    remedy = (
        "Write it like `virtual:bench`, `udp_multicast:239.74.163.2`, `socketcan:can0@500k` "
        "or `pcan:PCAN_USBBUS1@500k/2M,fd`; see docs/links.md."
    )


class UnknownCanInterfaceError(TransportError):
    """The interface part of a link name is not a python-can interface."""

    code = "BMSFW-E302"
    diagnosis = "python-can has no interface by that name."
    remedy = "Use one of the interfaces listed in the message (or install its python-can plugin)."


class CanDriverMissingError(TransportError):
    """The python-can backend or its vendor driver/library is not installed."""

    code = "BMSFW-E303"
    diagnosis = (
        "The driver or library for this CAN adapter is not installed or cannot be loaded, "
        "or the adapter or interface named does not exist on this machine."
    )
    remedy = (
        "Do what the message says for this adapter: install the vendor's driver/library "
        "(e.g. PCAN-Basic, Kvaser CANlib, Vector XL) and its Python package, or create and "
        "bring up the interface (`ip link show` for socketcan); without hardware use "
        "`virtual` or `udp_multicast`."
    )


class CanBusOpenError(TransportError):
    """The backend loaded but the bus could not be opened (no device, busy, bad bitrate)."""

    code = "BMSFW-E304"
    diagnosis = "The CAN adapter was found but the bus could not be opened."
    remedy = (
        "Check that the adapter is plugged in, not used by another program, and that the "
        "channel and bitrate are right (`ip link show` for socketcan)."
    )


class CanSendError(TransportError):
    """The CAN driver refused to transmit a frame."""

    code = "BMSFW-E305"
    diagnosis = "A CAN frame could not be sent."
    remedy = "Check bus termination (120 ohm at both ends), wiring, and that a peer acknowledges."


class BusOffError(TransportError):
    """The controller is bus-off: it may not transmit until recovered."""

    code = "BMSFW-E306"
    diagnosis = "The CAN controller went bus-off (too many transmit errors)."
    remedy = (
        "Check termination, wiring and that every node uses the same bitrate; then restart "
        "the adapter (socketcan: `ip link set can0 down && ip link set can0 up`)."
    )


class LinkClosedError(TransportError):
    """The link object was used after it was shut down."""

    code = "BMSFW-E308"
    diagnosis = "The link was used after it was closed."
    remedy = "Open the link again; this is a program error if it happens inside bmsfw."


class IsoTpConfigError(TransportError):
    """ISO-TP parameters are out of range or do not fit the bus."""

    code = "BMSFW-E310"
    diagnosis = "The ISO-TP parameters are invalid for this bus."
    remedy = (
        "Use block size 0..255, STmin 0..127 ms, tx_data_length 8 (classic) or 12..64 "
        "with a CAN FD link (`,fd`)."
    )


class IsoTpTimeoutError(TransportError, TimeoutError):
    """An ISO-TP message did not complete in time (no flow control, missing frame)."""

    code = "BMSFW-E311"
    diagnosis = "An ISO-TP transfer timed out (flow control or consecutive frame missing)."
    remedy = "Check that the peer listens on the right CAN ids and that the bus is not overloaded."


class IsoTpTransferError(TransportError):
    """ISO-TP reported a protocol error (wrong sequence number, overflow, ...)."""

    code = "BMSFW-E312"
    diagnosis = "The ISO-TP transfer failed with a protocol error."
    remedy = (
        "Frames were lost or reordered; lower the block size on udp_multicast or enable "
        "throttling (`,throttle`)."
    )


class SerialConfigError(TransportError):
    """Serial parameters are invalid (baud rate, parity, stop bits)."""

    code = "BMSFW-E320"
    diagnosis = "The serial line parameters are invalid."
    remedy = "Use a positive baud rate, parity N/E/O, 1 or 2 stop bits, 7 or 8 data bits."


class SerialLinkError(TransportError):
    """A serial port or the simulated RS485 bus failed (pty could not be opened, I/O error)."""

    code = "BMSFW-E321"
    diagnosis = "The serial link could not be opened or failed."
    remedy = (
        "Check the port path and permissions (group `dialout`), and that no other program "
        "holds the port."
    )
