"""Errors of the MCUmgr SMP session (``BMSFW-E390`` to ``E399``; Modbus uses E370–E380).

E396 (a malformed ``--smp`` link) is in :mod:`bmsfw.protocol.smp.link`.

Split by cause like the other protocols: the link or the device did not answer
(:class:`SmpNoResponseError`, a ``TimeoutError``), the link could not be opened
(:class:`SmpLinkError`), answers made no sense (:class:`SmpProtocolError`), or
the BMS answered and refused (:class:`SmpRefusedError`, a ``DeviceError``
carrying the BMSFW code the BMS gave in its vendor group's ``LAST_ERROR``).
"""

from __future__ import annotations

from bmsfw.errors import DeviceError, TransportError

__all__ = [
    "SmpAuthRejectedError",
    "SmpLinkError",
    "SmpNoResponseError",
    "SmpProtocolError",
    "SmpRefusedError",
    "SmpTransferError",
]


class SmpNoResponseError(TransportError, TimeoutError):
    """No SMP answer within the time-out."""

    code = "BMSFW-E390"
    diagnosis = (
        "The BMS did not answer an SMP request: link down, wrong port, address or "
        "Bluetooth device, or the BMS is rebooting."
    )
    remedy = (
        "Check the link named with --smp (cable and port, IP address and UDP port 1337, "
        "or that the BMS advertises over Bluetooth and is in range); then run again."
    )


class SmpLinkError(TransportError):
    """The serial port, UDP socket or Bluetooth controller could not be opened."""

    code = "BMSFW-E391"
    diagnosis = "The SMP link could not be opened (port, socket, Bluetooth adapter or device)."
    remedy = (
        "Check the port name (`ls /dev/ttyACM* /dev/ttyUSB*`), that no other program "
        "holds it, or for Bluetooth that the HCI dongle is plugged in and the BMS "
        "advertises (docs/ble-howto.md)."
    )


class SmpProtocolError(TransportError):
    """An answer that is not the SMP response the request expects."""

    code = "BMSFW-E392"
    diagnosis = (
        "The device answered with a malformed or unexpected SMP message, or does not "
        "implement the BMS vendor group (docs/smp.md)."
    )
    remedy = (
        "Check that the device is a BMS with the bmsfw SMP vendor group and that only "
        "one program talks to it; run with -vv for the frame log."
    )


class SmpRefusedError(DeviceError):
    """The BMS answered an SMP request with an error; carries its own code and reason."""

    code = "BMSFW-E393"
    diagnosis = "The BMS refused an SMP request (its reason and BMSFW code are in the message)."
    remedy = "Read the BMS's reason in the message; `bmsfw info` shows the device state."

    def __init__(self, message: str, *, device_code: str = "", rc: int = 0) -> None:
        super().__init__(message)
        self.device_code = device_code
        self.rc = rc


class SmpAuthRejectedError(DeviceError):
    """The BMS rejected the tester's certificate or proof (vendor group AUTH)."""

    code = "BMSFW-E394"
    diagnosis = "The BMS rejected the tester certificate or its proof of possession."
    remedy = (
        "Use a tester certificate issued under the vendor root this BMS has fused, "
        "with its own private key (--tester-cert, --tester-key)."
    )


class SmpTransferError(TransportError):
    """The image upload stopped: a chunk got no answer or the device refused it."""

    code = "BMSFW-E395"
    diagnosis = "The SMP image upload stopped part-way."
    remedy = (
        "Restore the link and run the update again: the BMS keeps what it received and "
        "the upload resumes at the device's offset."
    )
