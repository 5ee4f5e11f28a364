"""How a technician names an SMP link: ``serial:PORT``, ``udp:HOST[:PORT]``, ``ble:DEVICE``.

``--smp serial:/dev/ttyACM0`` (a USB CDC-ACM or UART console; ``@BAUD`` sets the
baud rate, default 115200), ``--smp udp:192.0.2.5:1337`` (MCUmgr's UDP port
1337 by default; IPv6 in brackets, ``udp:[2001:db8::5]:1337``) and
``--smp ble:F0:11:22:33:44:55`` or ``--smp ble:BMS-0001`` (an address or the
advertised name; ``@HCI`` names the bumble HCI transport of the Bluetooth
controller, default ``usb:0``, e.g. ``ble:BMS-0001@tcp-client:127.0.0.1:9001``;
``@os`` uses the operating system's adapter through bleak instead of bumble).
Pure code: parsing only, no I/O.

Bluetooth pairing: bmsfw's own Bluetooth link pairs with LE Secure Connections and
passkey entry (the BMS shows or carries a 6-digit passkey; the technician types
it). The passkey never travels on the command line (``ps`` would show it): it comes
from ``BMSFW_BLE_PASSKEY``, a file named with ``--ble-passkey-file``, or a prompt.
:attr:`SmpLink.passkey` is the callable that gives it when the BMS asks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bmsfw.errors import UsageError
from bmsfw.protocol.smp.dbc import EXAMPLE_MAP, DbcSignalMap

__all__ = [
    "DEFAULT_HCI",
    "OS_ADAPTER",
    "SMP_UDP_PORT",
    "BlePasskeyFormatError",
    "DbcTelemetrySpec",
    "PasskeyProvider",
    "SmpLink",
    "SmpLinkSpecError",
    "TelemetrySpecError",
    "parse_passkey",
    "parse_smp_link",
    "parse_telemetry_spec",
]

SMP_UDP_PORT = 1337
DEFAULT_HCI = "usb:0"
#: ``ble:DEVICE@os``: the operating system's Bluetooth adapter through bleak (smpclient).
OS_ADAPTER = "os"
SmpKind = Literal["serial", "udp", "ble"]
#: Gives the BMS's 6-digit passkey when the pairing asks for it (None: none known).
PasskeyProvider = Callable[[], int | None]


class SmpLinkSpecError(UsageError):
    code = "BMSFW-E396"
    diagnosis = "The --smp link is not written as serial:PORT, udp:HOST[:PORT] or ble:DEVICE."
    remedy = (
        "Name the link like --smp serial:/dev/ttyACM0, --smp udp:192.0.2.5:1337 or "
        "--smp ble:BMS-0001 (docs/smp.md)."
    )


class BlePasskeyFormatError(UsageError):
    code = "BMSFW-E397"
    diagnosis = "The Bluetooth passkey given is not 6 decimal digits."
    remedy = (
        "Give the 6-digit passkey the BMS shows or carries on its label (e.g. 012345) in "
        "BMSFW_BLE_PASSKEY, in the file named with --ble-passkey-file, or at the prompt."
    )


def parse_passkey(text: str, *, where: str = "passkey") -> int:
    """The passkey as an int; exactly 6 decimal digits (leading zeros kept by the BMS)."""
    value = text.strip()
    if len(value) != 6 or not value.isascii() or not value.isdigit():
        raise BlePasskeyFormatError(f"{where}: expected 6 digits, got {len(value)} characters")
    return int(value)


class TelemetrySpecError(UsageError):
    code = "BMSFW-E317"
    diagnosis = (
        "The telemetry source is not written as dbc:FILE@CANLINK (or smp), or names it "
        "for a link that is not --smp."
    )
    remedy = (
        "Write it like --telemetry dbc:vendor.dbc@socketcan:can0 (the vendor's DBC file and "
        "the CAN link the BMS broadcasts on), or set [telemetry] in the product profile "
        "(docs/smp.md, 'Telemetry from CAN broadcast frames')."
    )


@dataclass(frozen=True)
class DbcTelemetrySpec:
    """Read the preflight's telemetry from the BMS's CAN broadcast, decoded with a DBC file.

    ``origin`` says who chose it (``--telemetry`` or the profile), for the report."""

    dbc_path: Path
    can_link: str  # a python-can link name, e.g. socketcan:can0 (docs/links.md)
    mapping: DbcSignalMap = EXAMPLE_MAP
    window_s: float = 1.0
    origin: str = "--telemetry"

    def __str__(self) -> str:
        return f"dbc:{self.dbc_path}@{self.can_link}"


def parse_telemetry_spec(text: str, *, origin: str = "--telemetry") -> DbcTelemetrySpec | None:
    """``dbc:FILE@CANLINK`` -> a spec; ``smp`` -> None (the vendor group's TELEMETRY)."""
    if text.strip() == "smp":
        return None
    kind, sep, rest = text.partition(":")
    path, at, can_link = rest.rpartition("@")
    if kind != "dbc" or not sep or not at or not path or ":" not in can_link:
        raise TelemetrySpecError(
            f"{origin} {text!r}: expected dbc:FILE@INTERFACE:CHANNEL, e.g. "
            "dbc:vendor.dbc@socketcan:can0, or smp"
        )
    return DbcTelemetrySpec(Path(path), can_link, origin=origin)


@dataclass(frozen=True)
class SmpLink:
    kind: SmpKind
    target: str  # port path, host, or BLE address / name
    port: int = SMP_UDP_PORT
    baud: int = 115_200
    hci: str = DEFAULT_HCI
    timeout_s: float = 2.0
    # Asked only when a Bluetooth pairing needs it; never part of the link's name.
    passkey: PasskeyProvider | None = field(default=None, compare=False, repr=False)
    # Where the preflight's telemetry comes from when not the vendor group's TELEMETRY.
    telemetry: DbcTelemetrySpec | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if self.kind == "serial":
            return f"smp:serial:{self.target}@{self.baud}"
        if self.kind == "udp":
            host = f"[{self.target}]" if ":" in self.target else self.target
            return f"smp:udp:{host}:{self.port}"
        return f"smp:ble:{self.target}@{self.hci}"


def parse_smp_link(
    text: str, *, timeout_s: float | None = None, passkey: PasskeyProvider | None = None
) -> SmpLink:
    """Parse the ``--smp`` value; raises :class:`SmpLinkSpecError` with the accepted forms."""
    kind, sep, rest = text.partition(":")
    timeout = timeout_s if timeout_s is not None else 2.0
    if not sep or not rest:
        raise SmpLinkSpecError(
            f"--smp {text!r}: expected serial:PORT, udp:HOST[:PORT] or ble:DEVICE"
        )
    if kind == "serial":
        path, at, baud_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if at and (not baud_text.isdigit() or int(baud_text) <= 0):
            raise SmpLinkSpecError(f"--smp {text!r}: baud {baud_text!r} is not a positive number")
        return SmpLink("serial", path, baud=int(baud_text) if at else 115_200, timeout_s=timeout)
    if kind == "udp":
        host, port, port_text = rest, SMP_UDP_PORT, ""
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            port_text = tail[1:] if tail.startswith(":") else ""
        elif rest.count(":") == 1:
            host, _, port_text = rest.partition(":")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65_536:
                raise SmpLinkSpecError(f"--smp {text!r}: UDP port {port_text!r} is not 1..65535")
            port = int(port_text)
        if not host:
            raise SmpLinkSpecError(f"--smp {text!r}: no host")
        return SmpLink("udp", host, port=port, timeout_s=timeout)
    if kind == "ble":
        device, at, hci = rest.partition("@")
        if not device:
            raise SmpLinkSpecError(f"--smp {text!r}: no Bluetooth address or name")
        return SmpLink(
            "ble",
            device,
            hci=hci if at and hci else DEFAULT_HCI,
            timeout_s=timeout,
            passkey=passkey,
        )
    raise SmpLinkSpecError(f"--smp {text!r}: unknown link kind {kind!r} (serial, udp or ble)")
