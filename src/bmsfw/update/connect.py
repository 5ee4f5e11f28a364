"""One way to name a link to a BMS, for every command, and opening a session on it.

CAN:    ``--can udp_multicast:239.74.163.2 --node 3 [--node 4] [--bitrate 500000]``
RS485:  ``--serial /dev/ttyUSB0 --unit 5 [--unit 6] --baud 115200``
SMP:    ``--smp serial:/dev/ttyACM0 | udp:192.0.2.5:1337 | ble:BMS-0001[@usb:0]`` (one BMS)

The CAN text is ``INTERFACE:CHANNEL`` with a python-can interface name
(``socketcan:can0``, ``pcan:PCAN_USBBUS1``, ``udp_multicast:239.74.163.2``,
``virtual:bench``). Several ``--node``/``--unit`` share one bus. Session
factories are imported only when a link of that kind is opened, so a missing
driver never breaks ``bmsfw --help``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bmsfw.link.wire import FRAME_GAPS
from bmsfw.protocol.session import BmsSession
from bmsfw.protocol.smp.link import (
    DbcTelemetrySpec,
    PasskeyProvider,
    SmpLink,
    TelemetrySpecError,
    parse_smp_link,
)
from bmsfw.update.errors import LinkSpecInvalidError, TransportUnavailableError

__all__ = [
    "CAN_BITRATES_BPS",
    "SERIAL_BAUDS",
    "CanLink",
    "Connection",
    "LinkSpec",
    "SerialLink",
    "SmpLink",
    "open_sessions",
    "parse_links",
]

logger = logging.getLogger(__name__)

CAN_BITRATES_BPS = (125_000, 250_000, 500_000, 1_000_000)
SERIAL_BAUDS = (9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600)


@dataclass(frozen=True)
class CanLink:
    interface: str
    channel: str
    node: int
    bitrate_bps: int = 500_000
    timeout_s: float = 2.0

    def __str__(self) -> str:
        return f"can:{self.interface}:{self.channel}/node {self.node}"


@dataclass(frozen=True)
class SerialLink:
    port: str
    unit: int
    baud: int = 115_200
    parity: str = "E"
    timeout_s: float = 1.0
    frame_gap: str = "spec"

    def __str__(self) -> str:
        return f"serial:{self.port}@{self.baud}/unit {self.unit}"


LinkSpec = CanLink | SerialLink | SmpLink


def parse_links(
    *,
    can: str | None = None,
    nodes: Sequence[int] = (),
    bitrate_bps: int = 500_000,
    serial: str | None = None,
    units: Sequence[int] = (),
    baud: int = 115_200,
    timeout_s: float | None = None,
    frame_gap: str = "spec",
    smp: str | None = None,
    ble_passkey: PasskeyProvider | None = None,
    telemetry: DbcTelemetrySpec | None = None,
) -> list[LinkSpec]:
    """The links named on a command line (one per node/unit), validated. ``telemetry``
    (an SMP link's CAN-broadcast source) belongs to ``--smp`` only."""
    if telemetry is not None and smp is None:
        raise TelemetrySpecError(
            f"telemetry {telemetry} ({telemetry.origin}) is for a BMS named with --smp; "
            "CAN and RS485 sessions read their BMS's telemetry themselves"
        )
    if smp is not None:
        if can is not None or serial is not None or nodes or units:
            raise LinkSpecInvalidError(
                "--smp names one BMS by itself: drop --can/--serial/--node/--unit"
            )
        link = parse_smp_link(smp, timeout_s=timeout_s, passkey=ble_passkey)
        return [dataclasses.replace(link, telemetry=telemetry)]
    if (can is None) == (serial is None):
        raise LinkSpecInvalidError(
            "name exactly one link: --can INTERFACE:CHANNEL, --serial PORT or --smp LINK"
        )
    if can is not None:
        if units:
            raise LinkSpecInvalidError("--unit belongs to --serial; on CAN use --node")
        interface, sep, channel = can.partition(":")
        if not sep or not interface or not channel:
            raise LinkSpecInvalidError(
                f"--can {can!r}: expected INTERFACE:CHANNEL, e.g. udp_multicast:239.74.163.2"
            )
        if bitrate_bps not in CAN_BITRATES_BPS:
            raise LinkSpecInvalidError(f"--bitrate {bitrate_bps} not one of {CAN_BITRATES_BPS}")
        if not nodes:
            raise LinkSpecInvalidError("name the BMS with --node N (see `bmsfw scan`)")
        for node in nodes:
            if not 1 <= node <= 127:
                raise LinkSpecInvalidError(f"--node {node} outside 1..127")
        if len(set(nodes)) != len(nodes):
            raise LinkSpecInvalidError(f"--node repeats: {list(nodes)}")
        can_timeout_s = timeout_s if timeout_s is not None else 2.0
        return [CanLink(interface, channel, n, bitrate_bps, can_timeout_s) for n in nodes]
    assert serial is not None
    if nodes:
        raise LinkSpecInvalidError("--node belongs to --can; on RS485 use --unit")
    if baud not in SERIAL_BAUDS:
        raise LinkSpecInvalidError(f"--baud {baud} not one of {SERIAL_BAUDS}")
    if frame_gap not in FRAME_GAPS:
        raise LinkSpecInvalidError(f"--frame-gap {frame_gap!r} not one of {FRAME_GAPS}")
    if not units:
        raise LinkSpecInvalidError("name the BMS with --unit N (Modbus unit id 1..247)")
    for unit in units:
        if not 1 <= unit <= 247:
            raise LinkSpecInvalidError(f"--unit {unit} outside 1..247")
    if len(set(units)) != len(units):
        raise LinkSpecInvalidError(f"--unit repeats: {list(units)}")
    return [
        SerialLink(
            serial,
            u,
            baud,
            timeout_s=timeout_s if timeout_s is not None else 1.0,
            frame_gap=frame_gap,
        )
        for u in units
    ]


class Connection:
    """Open sessions to the BMS named on one link; close it to release the bus/port."""

    def __init__(self, sessions: list[BmsSession], closers: list[Callable[[], None]]) -> None:
        self.sessions = sessions
        self._closers = closers

    def close(self) -> None:
        for session in self.sessions:
            try:
                session.close()
            except Exception:  # closing must reach every session and bus
                logger.exception("closing a session failed")
        for closer in self._closers:
            try:
                closer()
            except Exception:
                logger.exception("closing a link failed")
        self.sessions = []
        self._closers = []

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import(module_name: str, kind: str) -> Any:
    # Imported on first use so a missing driver never breaks other commands.
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise TransportUnavailableError(f"{kind} sessions need {module_name}: {exc}") from exc


def _open_serial(links: Sequence[SerialLink]) -> Connection:
    client = _import("bmsfw.protocol.modbus.client", "RS485/Modbus")
    first = links[0]
    bus = client.open_modbus_bus(
        first.port,
        first.baud,
        first.parity,
        timeout_s=first.timeout_s,
        frame_gap=first.frame_gap,
    )
    sessions: list[BmsSession] = []
    try:
        for link in links:
            sessions.append(client.ModbusSession(bus, link.unit, owns_bus=False))
    except BaseException:
        bus.close()
        raise
    return Connection(sessions, [bus.close])


def _open_can(links: Sequence[CanLink]) -> Connection:
    uds = _import("bmsfw.protocol.uds", "CAN/UDS")
    canlink = _import("bmsfw.link.canlink", "CAN")
    first = links[0]
    spec = canlink.parse_can_link(f"{first.interface}:{first.channel}")
    spec = dataclasses.replace(spec, bitrate_bps=first.bitrate_bps)
    # One bus object per session: each session runs its own python-can notifier, and
    # python-can allows one notifier per bus object.
    config = uds.UdsClientConfig(p2_max_s=max(first.timeout_s, uds.UdsClientConfig.p2_min_s))
    sessions: list[BmsSession] = []
    try:
        for link in links:
            sessions.append(uds.open_uds_session(spec, link.node, config=config))
    except BaseException:
        for session in sessions:
            session.close()
        raise
    return Connection(sessions, [])


def _open_smp(link: SmpLink) -> Connection:
    smp = _import("bmsfw.protocol.smp.session", "MCUmgr SMP (the 'smp' extra)")
    return Connection([smp.SmpSession(link)], [])


def open_sessions(links: Sequence[LinkSpec]) -> Connection:
    """Open one session per named BMS (all on the same link); raises ``BmsfwError``."""
    if not links:
        raise LinkSpecInvalidError("no BMS named")
    logger.info("opening %s", ", ".join(str(link) for link in links))
    if all(isinstance(link, SerialLink) for link in links):
        return _open_serial([link for link in links if isinstance(link, SerialLink)])
    if all(isinstance(link, CanLink) for link in links):
        return _open_can([link for link in links if isinstance(link, CanLink)])
    if len(links) == 1 and isinstance(links[0], SmpLink):
        return _open_smp(links[0])
    raise LinkSpecInvalidError("all BMS of one command must be on the same link")
