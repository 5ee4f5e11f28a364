"""Errors of the MCUmgr SMP session (``BMSFW-E390`` to ``E399``; Modbus uses E370–E380).

E396 (a malformed ``--smp`` link) and E397 (a malformed passkey) are in
:mod:`bmsfw.protocol.smp.link`. Bluetooth link security is E313 (pairing failed)
and E314 (the link is not encrypted with an authenticated LE Secure Connections key).

Split by cause like the other protocols: the link or the device did not answer
(:class:`SmpNoResponseError`, a ``TimeoutError``), the link could not be opened
(:class:`SmpLinkError`), answers made no sense (:class:`SmpProtocolError`), or
the BMS answered and refused (:class:`SmpRefusedError`, a ``DeviceError``
carrying the BMSFW code the BMS gave in its vendor group's ``LAST_ERROR``).
"""

from __future__ import annotations

from bmsfw.errors import DeviceError, TransportError, UsageError

__all__ = [
    "BleLinkInsecureError",
    "BlePairingFailedError",
    "DbcFileError",
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


class BlePairingFailedError(TransportError):
    """Bluetooth LE pairing with the BMS failed (wrong or missing passkey, or refused)."""

    code = "BMSFW-E313"
    retry_helps = False  # the same passkey fails the same way
    diagnosis = (
        "Bluetooth pairing with the BMS failed: the passkey was wrong or not given, or the "
        "BMS refused to pair. Nothing was sent to the BMS."
    )
    remedy = (
        "Read the 6-digit passkey the BMS shows (or its label) again and give it in "
        "BMSFW_BLE_PASSKEY, with --ble-passkey-file FILE, or at the prompt; then run again. "
        "Some BMS accept pairing only for a while after a button press (docs/ble-howto.md)."
    )


class BleLinkInsecureError(TransportError):
    """The Bluetooth link is not encrypted with an authenticated LE Secure Connections key."""

    code = "BMSFW-E314"
    retry_helps = False
    diagnosis = (
        "The Bluetooth link to the BMS is not encrypted with a key from an authenticated "
        "LE Secure Connections pairing (passkey); bmsfw sends nothing over such a link."
    )
    remedy = (
        "Use a BMS whose SMP service requires LE Secure Connections with a passkey "
        "(Zephyr: CONFIG_BT_SMP_SC_ONLY and a fixed or displayed passkey) and pair through a "
        "Bluetooth dongle bumble drives (--smp ble:DEVICE@usb:0); the operating system's "
        "adapter (@os) does not show bmsfw how the link is secured (docs/ble-howto.md)."
    )


class DbcFileError(UsageError):
    """The DBC file for the CAN-broadcast telemetry cannot be used."""

    code = "BMSFW-E318"
    diagnosis = (
        "The DBC file named for the telemetry cannot be read as a CAN database, or lacks "
        "the messages the signal map names."
    )
    remedy = (
        "Name the vendor's DBC file of this BMS, and map its signals in the product "
        "profile's [telemetry.signals] (docs/smp.md, 'Telemetry from CAN broadcast frames')."
    )
