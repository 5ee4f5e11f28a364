"""bmsfw.link: byte and frame transports (CAN + ISO-TP, serial/RS485) and the wire-time model.

Public API (exact signatures; see docs/links.md for the why):

CAN links (:mod:`bmsfw.link.canlink`)::

    parse_can_link(text: str) -> CanLinkSpec
        # "INTERFACE[:CHANNEL][@BITRATE[/DATA_BITRATE]][,fd][,throttle][,port=N][,key=value]"
    CanLinkSpec(interface: str, channel: str, bitrate_bps: int = 500_000, fd: bool = False,
                data_bitrate_bps: int = 2_000_000, throttle: bool = False,
                port: int | None = None, extra: tuple[tuple[str, str], ...] = ())
        .wire_model -> CanWireModel; .is_multicast -> bool; .to_text() -> str;
        .with_(**changes) -> CanLinkSpec
    open_can_bus(spec: CanLinkSpec | str, *, faults: CanFaults | None = None,
                 receive_own_messages: bool = False) -> WireBus

Wire bus and faults (:mod:`bmsfw.link.wirebus`), a real ``can.BusABC``::

    WireBus(inner: can.BusABC, model: CanWireModel | None = None, *, throttle: bool = False,
            clock: WireClock | None = None, faults: CanFaults | None = None,
            suppress_own_echo: bool = False, tx_queue_depth: int = 10)
        .stats() -> WireStats; .reset_stats(); .faults (get/set at run time);
        .flush_tx_buffer(); .shutdown()
    CanFaults(drop_fraction=0.0, corrupt_fraction=0.0, delay_fraction=0.0, delay_s=0.05,
              bus_off=False, silent=False, direction="both", seed=0)

ISO-TP (:mod:`bmsfw.link.isotp_stack`)::

    make_isotp_stack(bus: can.BusABC, notifier: can.Notifier, *, txid: int, rxid: int,
                     params: IsoTpParams | None = None, extended_id: bool | None = None,
                     error_handler=None) -> isotp.NotifierBasedCanStack   # not started
    IsoTpParams(block_size=8, stmin_ms=0, tx_data_length=8, fd=False, bitrate_switch=True,
                tx_padding=0xCC, rx_flowcontrol_timeout_s=1.0,
                rx_consecutive_frame_timeout_s=1.0, max_frame_size=0x10000,
                blocking_send=True, override_receiver_stmin_s=None)
    default_isotp_params(spec: CanLinkSpec, **overrides) -> IsoTpParams
        # block size 16 on unthrottled udp_multicast, else 0; 64-byte frames on FD
    node_address(node: int, *, extended_id: bool = False) -> NodeAddress
        # node numbers start at 1 (like Modbus unit ids)
        # 11-bit: 0x7E0+n-1 / 0x7E8+n-1 (n 1..8); 29-bit: 0x18DA<n><F1> / 0x18DA<F1><n> (1..0xEF)
    node_of_response_id(arbitration_id: int, *, extended_id: bool = False) -> int | None
    functional_address(*, extended_id: bool = False) -> int     # 0x7DF / 0x18DB33F1
    isotp_send(stack, data: bytes, *, timeout_s: float = 5.0) -> None
    isotp_recv(stack, *, timeout_s: float = 5.0) -> bytes

Serial / RS485 (:mod:`bmsfw.link.serialbus`, :mod:`bmsfw.link.uart`)::

    SerialParams(baud_bps=19_200, parity="E", stop_bits=1, data_bits=8, frame_gap="spec")
        .char_bits; .char_time_s; .silence_s; .raw_char_rate_per_s
    RS485Bus(params: SerialParams | None = None, *, throttle: bool = False,
             faults: SerialFaults | None = None, name: str = "rs485")   # context manager
        .host_path -> str            # the pty the host/pymodbus client opens
        .attach_pty(name, *, params=None, turnaround_s=0.0, follow_termios=True)
            -> SerialAttachment      # .path: the pty a device-side server opens
        .attach_endpoint(name, *, params=None, turnaround_s=0.0) -> SerialAttachment
            # in-process: .write(data), .read(timeout_s) -> bytes
        .pull_cable(name, pulled=True); .faults (get/set); .stats() -> WireStats
        .start() -> RS485Bus; .close()
    SerialFaults(drop_fraction=0.0, corrupt_fraction=0.0, silent=False, seed=0)
    uart_transcode(data: bytes, sender: SerialParams, receiver: SerialParams) -> bytes
    open_serial_port(path: str, params: SerialParams, *, timeout_s: float = 1.0) -> serial.Serial

Wire-time model (:mod:`bmsfw.link.wire`)::

    can_frame_bits(length, *, extended_id=False, fd=False, bitrate_switch=True,
                   remote=False) -> tuple[int, int]    # (nominal-rate bits, data-rate bits)
    CanWireModel(bitrate_bps=500_000, data_bitrate_bps=2_000_000)
        .frame_time_s(length, *, extended_id=False, fd=False, bitrate_switch=True)
        .raw_payload_rate_bytes_per_s(*, fd=False, extended_id=False)
    serial_char_bits(data_bits=8, parity="E", stop_bits=1) -> float
    modbus_silence_s(baud_bps, char_bits=11, frame_gap="spec") -> float   # FRAME_GAPS
    WireStats (frozen snapshot), WireCounter, WireClock

Errors: :mod:`bmsfw.link.errors` (BMSFW-E301..E339, all ``TransportError``).
"""

from bmsfw.link.canlink import CanLinkSpec, open_can_bus, parse_can_link, shared_wire_clock
from bmsfw.link.errors import (
    BadLinkNameError,
    BusOffError,
    CanBusOpenError,
    CanDriverMissingError,
    CanSendError,
    IsoTpConfigError,
    IsoTpTimeoutError,
    IsoTpTransferError,
    LinkClosedError,
    SerialConfigError,
    SerialLinkError,
    UnknownCanInterfaceError,
)
from bmsfw.link.isotp_stack import (
    IsoTpParams,
    NodeAddress,
    default_isotp_params,
    functional_address,
    isotp_recv,
    isotp_send,
    make_isotp_stack,
    node_address,
    node_of_response_id,
)
from bmsfw.link.serialbus import (
    RS485Bus,
    SerialAttachment,
    SerialFaults,
    open_serial_port,
)
from bmsfw.link.uart import SerialParams, uart_transcode
from bmsfw.link.wire import (
    CanWireModel,
    WireClock,
    WireCounter,
    WireStats,
    can_frame_bits,
    modbus_silence_s,
    serial_char_bits,
)
from bmsfw.link.wirebus import CanFaults, WireBus

__all__ = [
    "BadLinkNameError",
    "BusOffError",
    "CanBusOpenError",
    "CanDriverMissingError",
    "CanFaults",
    "CanLinkSpec",
    "CanSendError",
    "CanWireModel",
    "IsoTpConfigError",
    "IsoTpParams",
    "IsoTpTimeoutError",
    "IsoTpTransferError",
    "LinkClosedError",
    "NodeAddress",
    "RS485Bus",
    "SerialAttachment",
    "SerialConfigError",
    "SerialFaults",
    "SerialLinkError",
    "SerialParams",
    "UnknownCanInterfaceError",
    "WireBus",
    "WireClock",
    "WireCounter",
    "WireStats",
    "can_frame_bits",
    "default_isotp_params",
    "functional_address",
    "isotp_recv",
    "isotp_send",
    "make_isotp_stack",
    "modbus_silence_s",
    "node_address",
    "node_of_response_id",
    "open_can_bus",
    "open_serial_port",
    "parse_can_link",
    "serial_char_bits",
    "shared_wire_clock",
    "uart_transcode",
]
