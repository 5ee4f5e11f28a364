"""Naming and opening CAN links: one syntax for the CLI, the library and the docs.

A link name is ``INTERFACE[:CHANNEL][@BITRATE[/DATA_BITRATE]][,OPTION[=VALUE]]...``::

    virtual:bench                      same process (python-can ``virtual``)
    udp_multicast:239.74.163.2         across processes on one machine
    udp_multicast:239.74.163.2,port=43120,throttle
    socketcan:can0@500k                Linux SocketCAN (bitrate set with `ip link`)
    pcan:PCAN_USBBUS1@500k/2M          CAN FD (a data bitrate implies ``fd``)
    slcan:/dev/ttyACM0@500000          serial-line CAN adapters
    kvaser:0@1M    vector:0@500k,app_name=bmsfw

Bitrates accept ``k``/``M`` suffixes. Options: ``fd``, ``throttle``, ``port=N``
(udp_multicast) and any ``key=value`` the python-can backend takes (numbers are
passed as ints). Backends are imported lazily by python-can, only when a bus of
that interface is opened; a missing driver becomes :class:`CanDriverMissingError`.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
from dataclasses import dataclass, replace
from typing import Any

import can

from bmsfw.link.errors import (
    BadLinkNameError,
    CanBusOpenError,
    CanDriverMissingError,
    UnknownCanInterfaceError,
)
from bmsfw.link.wire import CanWireModel, WireClock
from bmsfw.link.wirebus import CanFaults, WireBus

__all__ = [
    "DEFAULT_MULTICAST_GROUP",
    "DEFAULT_MULTICAST_PORT",
    "CanLinkSpec",
    "open_can_bus",
    "parse_can_link",
    "shared_wire_clock",
]

logger = logging.getLogger(__name__)

DEFAULT_MULTICAST_GROUP = "239.74.163.2"
DEFAULT_MULTICAST_PORT = 43113

# What to install per backend, for the error a missing driver raises.
_DRIVER_HINTS: dict[str, str] = {
    "pcan": "install PEAK's PCAN-Basic library (Linux: the peak-linux-driver or libpcanbasic)",
    "kvaser": "install Kvaser CANlib (Linux: linuxcan) from kvaser.com",
    "vector": (
        "install the Vector XL Driver Library and set up the channel in Vector Hardware Config"
    ),
    "ixxat": "install the IXXAT VCI driver",
    "socketcan": (
        "SocketCAN needs Linux; bring the interface up with `ip link set can0 up type can`"
    ),
    "slcan": "pip install pyserial and check the serial port path",
    "udp_multicast": "pip install 'python-can[multicast]' (needs msgpack; not on Windows)",
    "gs_usb": "pip install gs_usb pyusb",
    "neovi": "pip install python-ics and install the Intrepid driver",
    "nixnet": "install NI-XNET and pip install nixnet",
    "etas": "install the ETAS BOA driver",
    "canalystii": "pip install canalystii",
    "cantact": "pip install cantact",
    "systec": "install the SYS TEC USB-CANmodul driver",
}

_BITRATE_RE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class CanLinkSpec:
    """A CAN link by name: which python-can interface and channel, and how it is timed."""

    interface: str
    channel: str
    bitrate_bps: int = 500_000
    fd: bool = False
    data_bitrate_bps: int = 2_000_000
    throttle: bool = False
    port: int | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.bitrate_bps <= 0 or self.data_bitrate_bps <= 0:
            raise BadLinkNameError(
                f"bitrates must be positive, got {self.bitrate_bps}/{self.data_bitrate_bps}"
            )
        if self.port is not None and not 0 < self.port < 65536:
            raise BadLinkNameError(f"port must be 1..65535, got {self.port}")

    @property
    def wire_model(self) -> CanWireModel:
        return CanWireModel(self.bitrate_bps, self.data_bitrate_bps)

    @property
    def is_multicast(self) -> bool:
        return self.interface == "udp_multicast"

    def to_text(self) -> str:
        """The link name that parses back to this spec."""
        text = f"{self.interface}:{self.channel}@{_format_rate(self.bitrate_bps)}"
        if self.fd:
            text += f"/{_format_rate(self.data_bitrate_bps)}"
        options = [f"port={self.port}"] if self.port is not None else []
        if self.throttle:
            options.append("throttle")
        options.extend(f"{key}={value}" for key, value in self.extra)
        return ",".join([text, *options])

    def with_(self, **changes: Any) -> CanLinkSpec:
        """A copy with fields changed (``spec.with_(throttle=True)``)."""
        return replace(self, **changes)

    def __str__(self) -> str:
        return self.to_text()


def _format_rate(bps: int) -> str:
    if bps % 1_000_000 == 0:
        return f"{bps // 1_000_000}M"
    if bps % 1000 == 0:
        return f"{bps // 1000}k"
    return str(bps)


def _parse_rate(text: str, whole: str) -> int:
    match = _BITRATE_RE.match(text.strip())
    if not match:
        raise BadLinkNameError(f"bad bitrate {text!r} in link {whole!r} (use 500000, 500k or 1M)")
    scale = {"": 1, "k": 1000, "m": 1_000_000}[match.group(2).lower()]
    value = float(match.group(1)) * scale
    if value <= 0 or value != int(value):
        raise BadLinkNameError(f"bad bitrate {text!r} in link {whole!r}")
    return int(value)


def parse_can_link(text: str) -> CanLinkSpec:
    """Parse a link name (see the module docstring) into a :class:`CanLinkSpec`."""
    whole = text
    text = text.strip()
    if not text:
        raise BadLinkNameError("empty CAN link name")
    head, *option_parts = text.split(",")
    interface, sep, rest = head.partition(":")
    interface = interface.strip()
    if not _NAME_RE.match(interface):
        raise BadLinkNameError(f"bad interface name {interface!r} in link {whole!r}")
    if interface not in can.interfaces.VALID_INTERFACES:
        known = ", ".join(sorted(can.interfaces.VALID_INTERFACES))
        raise UnknownCanInterfaceError(
            f"unknown CAN interface {interface!r} in link {whole!r}; python-can knows: {known}"
        )
    channel, _, rates = rest.rpartition("@") if "@" in rest else (rest, "", "")
    channel = channel.strip()
    if not sep or not channel:
        channel = {"udp_multicast": DEFAULT_MULTICAST_GROUP, "virtual": "bmsfw"}.get(interface, "")
        if not channel:
            raise BadLinkNameError(f"link {whole!r} names no channel (e.g. {interface}:can0)")
    fields: dict[str, Any] = {}
    if rates:
        nominal, slash, data = rates.partition("/")
        fields["bitrate_bps"] = _parse_rate(nominal, whole)
        if slash:
            fields["data_bitrate_bps"] = _parse_rate(data, whole)
            fields["fd"] = True
    extra: list[tuple[str, str]] = []
    for part in option_parts:
        key, eq, value = (s.strip() for s in part.partition("="))
        if not key:
            raise BadLinkNameError(f"empty option in link {whole!r}")
        if key in ("fd", "throttle") and not eq:
            fields[key] = True
        elif key in ("fd", "throttle"):
            if value.lower() not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise BadLinkNameError(f"option {key}={value!r} in link {whole!r} is not a bool")
            fields[key] = value.lower() in ("1", "true", "yes", "on")
        elif key == "port":
            if not value.isdigit():
                raise BadLinkNameError(f"port={value!r} in link {whole!r} is not a number")
            fields["port"] = int(value)
        elif not _NAME_RE.match(key) or not eq:
            raise BadLinkNameError(
                f"option {part!r} in link {whole!r}: use fd, throttle, port=N or key=value"
            )
        else:
            extra.append((key, value))
    return CanLinkSpec(interface=interface, channel=channel, extra=tuple(extra), **fields)


_clocks: dict[tuple[str, str, int | None], WireClock] = {}
_clocks_lock = threading.Lock()


def shared_wire_clock(spec: CanLinkSpec) -> WireClock:
    """The one :class:`WireClock` of this physical bus in this process."""
    key = (spec.interface, spec.channel, spec.port)
    with _clocks_lock:
        clock = _clocks.get(key)
        if clock is None:
            clock = _clocks[key] = WireClock()
        return clock


def _backend_kwargs(spec: CanLinkSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if spec.interface == "virtual":
        kwargs["receive_own_messages"] = False
        kwargs["protocol"] = can.CanProtocol.CAN_FD if spec.fd else can.CanProtocol.CAN_20
    elif spec.interface == "udp_multicast":
        # receive_own_messages=True raises here; own frames always loop back and
        # WireBus drops them instead. Both ends need fd=True for FD frames.
        kwargs["port"] = spec.port or DEFAULT_MULTICAST_PORT
        kwargs["fd"] = spec.fd
    else:
        kwargs["bitrate"] = spec.bitrate_bps
        if spec.fd:
            kwargs["fd"] = True
            kwargs["data_bitrate"] = spec.data_bitrate_bps
            if spec.interface == "pcan":
                # PCAN-Basic wants explicit FD timing; 80 MHz is its standard FD clock.
                kwargs = {
                    "timing": can.BitTimingFd.from_sample_point(
                        f_clock=80_000_000,
                        nom_bitrate=spec.bitrate_bps,
                        nom_sample_point=80.0,
                        data_bitrate=spec.data_bitrate_bps,
                        data_sample_point=80.0,
                    )
                }
    for key, value in spec.extra:
        kwargs[key] = int(value) if value.lstrip("-").isdigit() else value
    return kwargs


def _missing_adapter(spec: CanLinkSpec, exc: BaseException) -> str | None:
    """What to install or check when ``exc`` says the adapter, its driver or its kernel
    support is absent (rather than present but unable to open the bus); else None."""
    hint = _DRIVER_HINTS.get(spec.interface, "install the driver for this adapter")
    seen: BaseException | None = exc
    while seen is not None:
        number = getattr(seen, "errno", None) or getattr(seen, "error_code", None)
        if number in (errno.ENODEV, errno.ENXIO):
            if spec.interface == "socketcan":
                return (
                    f"this machine has no CAN interface {spec.channel!r}: check `ip link show`; "
                    f"a virtual one is made with `sudo modprobe vcan && sudo ip link add dev "
                    f"{spec.channel} type vcan && sudo ip link set up {spec.channel}`"
                )
            return f"no adapter answers as channel {spec.channel!r} ({seen}); {hint}"
        if number in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return (
                f"this kernel has no SocketCAN support ({seen}): load it with "
                "`sudo modprobe can_raw` (Linux only), or use `udp_multicast` without hardware"
            )
        if isinstance(seen, FileNotFoundError) or (
            isinstance(seen, OSError) and number is None and "librar" in str(seen).lower()
        ):
            return f"{str(seen).rstrip('.')}; {hint}"
        seen = seen.__cause__ or seen.__context__
    return None


def open_can_bus(
    spec: CanLinkSpec | str,
    *,
    faults: CanFaults | None = None,
    receive_own_messages: bool = False,
) -> WireBus:
    """Open the bus ``spec`` names, wrapped in a :class:`WireBus` (stats, throttle, faults).

    Throttled buses on the same channel in this process share one
    :class:`~bmsfw.link.wire.WireClock`. ``receive_own_messages`` keeps the
    multicast echo (off by default: a real controller does not report its own frames).
    """
    if isinstance(spec, str):
        spec = parse_can_link(spec)
    if spec.interface not in can.interfaces.VALID_INTERFACES:
        raise UnknownCanInterfaceError(f"unknown CAN interface {spec.interface!r}")
    kwargs = _backend_kwargs(spec)
    hint = _DRIVER_HINTS.get(spec.interface, "install the driver for this adapter")
    logger.info("opening CAN link %s", spec)
    try:
        inner = can.Bus(interface=spec.interface, channel=spec.channel, **kwargs)
    except (ImportError, NameError, AttributeError, can.CanInterfaceNotImplementedError) as exc:
        # Some backends load their vendor library lazily and fail with NameError /
        # AttributeError on first use when it is missing (kvaser without CANlib).
        raise CanDriverMissingError(
            f"cannot load the {spec.interface!r} CAN driver for {spec}: {exc}; {hint}"
        ) from exc
    except (can.CanError, OSError, ValueError, TypeError) as exc:
        missing = _missing_adapter(spec, exc)
        if missing is not None:
            raise CanDriverMissingError(f"cannot open CAN link {spec}: {missing}") from exc
        raise CanBusOpenError(f"cannot open CAN link {spec}: {exc}") from exc
    return WireBus(
        inner,
        spec.wire_model,
        throttle=spec.throttle,
        clock=shared_wire_clock(spec),
        faults=faults,
        suppress_own_echo=spec.is_multicast and not receive_own_messages,
        channel_info=str(spec),
    )
