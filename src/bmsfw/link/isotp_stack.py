"""ISO-TP (ISO 15765-2) stacks on python-can buses, and the CAN id plan of BMS nodes.

``make_isotp_stack`` builds a can-isotp ``NotifierBasedCanStack`` (not started:
udsoncan's ``PythonIsoTpConnection.open()`` starts it, or call ``stack.start()``).

This module is the one place for CAN ids and ISO-TP stacks: the UDS tester
(:mod:`bmsfw.protocol.uds`), the virtual BMS (:mod:`bmsfw.sim.sim_can`) and
the benchmarks all build their stacks and ids here.

Block size, the known trap: ``udp_multicast`` has no flow control, so a receiver
that grants block size 0 lets the sender blast a whole 4 KiB message and the
socket buffer of the other process overflows (~20 % of frames lost; docs/dev/guide.md).
:func:`default_isotp_params` therefore grants a bounded block size
(:data:`MULTICAST_BLOCK_SIZE` = 16, measured clean) on an unthrottled
``udp_multicast`` link; throttled links are paced at the bus rate and grant 0
(no flow-control round trips, the fastest on a real bus).

Node numbering (documented in docs/links.md): user-facing node numbers start
at 1, like Modbus unit ids (``--node 1`` is the first pack).

* 11-bit, nodes 1..8: request 0x7E0+n-1, response 0x7E8+n-1; functional 0x7DF
  (the OBD/ISO 15765-4 plan every tester knows).
* 29-bit normal fixed addressing (ISO 15765-2), nodes 1..0xEF: the node number
  *is* the ECU's 8-bit address (N_TA of requests, N_SA of responses):
  request 0x18DA<node><F1>, response 0x18DA<F1><node>; functional 0x18DB33F1.
  The tester's address is 0xF1; 0x00 and 0xF0..0xFF are not node numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import can
import isotp

from bmsfw.link.canlink import CanLinkSpec
from bmsfw.link.errors import IsoTpConfigError, IsoTpTimeoutError, IsoTpTransferError
from bmsfw.link.wire import CAN_FD_LENGTHS

__all__ = [
    "FUNCTIONAL_ID_11BIT",
    "FUNCTIONAL_ID_29BIT",
    "MAX_NODES_11BIT",
    "MAX_NODE_29BIT",
    "MULTICAST_BLOCK_SIZE",
    "TESTER_ADDRESS",
    "IsoTpParams",
    "NodeAddress",
    "default_isotp_params",
    "functional_address",
    "isotp_recv",
    "isotp_send",
    "make_isotp_stack",
    "node_address",
    "node_of_response_id",
]

logger = logging.getLogger(__name__)

FUNCTIONAL_ID_11BIT = 0x7DF
FUNCTIONAL_ID_29BIT = 0x18DB33F1
TESTER_ADDRESS = 0xF1
MAX_NODES_11BIT = 8
MAX_NODE_29BIT = 0xEF
#: Block size granted on unthrottled udp_multicast (8-16 clean, 16 faster: docs/dev/guide.md).
MULTICAST_BLOCK_SIZE = 16
_REQUEST_BASE_11BIT = 0x7E0
_RESPONSE_BASE_11BIT = 0x7E8


@dataclass(frozen=True)
class IsoTpParams:
    """ISO-TP settings of one end. ``block_size``/``stmin_ms`` are what this end grants."""

    block_size: int = 8
    stmin_ms: int = 0
    tx_data_length: int = 8
    fd: bool = False
    bitrate_switch: bool = True
    tx_padding: int | None = 0xCC
    rx_flowcontrol_timeout_s: float = 1.0
    rx_consecutive_frame_timeout_s: float = 1.0
    max_frame_size: int = 0x10000
    blocking_send: bool = True
    # The peer's STmin is obeyed unless this overrides it (seconds, None = obey).
    override_receiver_stmin_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.block_size <= 255:
            raise IsoTpConfigError(f"block_size must be 0..255, got {self.block_size}")
        if not 0 <= self.stmin_ms <= 127:
            raise IsoTpConfigError(f"stmin_ms must be 0..127, got {self.stmin_ms}")
        if self.tx_data_length not in CAN_FD_LENGTHS or self.tx_data_length < 8:
            raise IsoTpConfigError(
                f"tx_data_length must be 8, 12, 16, 20, 24, 32, 48 or 64, got {self.tx_data_length}"
            )
        if self.tx_data_length > 8 and not self.fd:
            raise IsoTpConfigError(
                f"tx_data_length {self.tx_data_length} needs CAN FD "
                "(fd=True, and `,fd` on the link)"
            )
        if self.tx_padding is not None and not 0 <= self.tx_padding <= 0xFF:
            raise IsoTpConfigError(f"tx_padding must be a byte or None, got {self.tx_padding}")
        if self.rx_flowcontrol_timeout_s <= 0 or self.rx_consecutive_frame_timeout_s <= 0:
            raise IsoTpConfigError("ISO-TP timeouts must be positive")

    def to_isotp(self) -> dict[str, Any]:
        """The can-isotp ``params`` dict."""
        params: dict[str, Any] = {
            "blocksize": self.block_size,
            "stmin": self.stmin_ms,
            "tx_data_length": self.tx_data_length,
            "tx_data_min_length": 8 if self.tx_padding is not None else None,
            "tx_padding": self.tx_padding,
            "rx_flowcontrol_timeout": int(self.rx_flowcontrol_timeout_s * 1000),
            "rx_consecutive_frame_timeout": int(self.rx_consecutive_frame_timeout_s * 1000),
            "max_frame_size": self.max_frame_size,
            "can_fd": self.fd,
            "bitrate_switch": self.fd and self.bitrate_switch,
            "blocking_send": self.blocking_send,
            "wftmax": 0,
            # Pace in the wire model instead: can-isotp's limiter stalled here (docs/dev/guide.md).
            "rate_limit_enable": False,
        }
        if self.override_receiver_stmin_s is not None:
            params["override_receiver_stmin"] = self.override_receiver_stmin_s
        return params


def default_isotp_params(spec: CanLinkSpec, **overrides: Any) -> IsoTpParams:
    """Sensible ISO-TP settings for a link: FD frame length, a safe block size.

    Both ends (tester and BMS) use this; ``overrides`` are :class:`IsoTpParams` fields.
    """
    block_size = MULTICAST_BLOCK_SIZE if spec.is_multicast and not spec.throttle else 0
    fields: dict[str, Any] = {
        "block_size": block_size,
        "fd": spec.fd,
        "tx_data_length": 64 if spec.fd else 8,
    }
    fields.update(overrides)
    return IsoTpParams(**fields)


@dataclass(frozen=True)
class NodeAddress:
    """The CAN ids one BMS node is reached on (physical request/response pair)."""

    node: int
    request_id: int
    response_id: int
    extended_id: bool = False

    @property
    def functional_id(self) -> int:
        return FUNCTIONAL_ID_29BIT if self.extended_id else FUNCTIONAL_ID_11BIT


def node_address(node: int, *, extended_id: bool = False) -> NodeAddress:
    """The physical id pair of node ``node`` (1-based; see the module docstring)."""
    if not extended_id:
        if not 1 <= node <= MAX_NODES_11BIT:
            raise IsoTpConfigError(
                f"11-bit addressing has nodes 1..{MAX_NODES_11BIT}, got {node}; "
                "use 29-bit ids for more nodes"
            )
        return NodeAddress(
            node, _REQUEST_BASE_11BIT + node - 1, _RESPONSE_BASE_11BIT + node - 1, False
        )
    if not 1 <= node <= MAX_NODE_29BIT:
        raise IsoTpConfigError(f"29-bit node numbers are 1..0x{MAX_NODE_29BIT:X}, got {node:#x}")
    return NodeAddress(
        node,
        0x18DA0000 | (node << 8) | TESTER_ADDRESS,
        0x18DA0000 | (TESTER_ADDRESS << 8) | node,
        True,
    )


def node_of_response_id(arbitration_id: int, *, extended_id: bool = False) -> int | None:
    """The node number whose physical response id this is, or ``None``."""
    if not extended_id:
        if _RESPONSE_BASE_11BIT <= arbitration_id < _RESPONSE_BASE_11BIT + MAX_NODES_11BIT:
            return arbitration_id - _RESPONSE_BASE_11BIT + 1
        return None
    if arbitration_id & 0xFFFFFF00 == 0x18DA0000 | (TESTER_ADDRESS << 8):
        node = arbitration_id & 0xFF
        return node if 1 <= node <= MAX_NODE_29BIT else None
    return None


def functional_address(*, extended_id: bool = False) -> int:
    """The functional (broadcast) request id used for discovery."""
    return FUNCTIONAL_ID_29BIT if extended_id else FUNCTIONAL_ID_11BIT


def _log_isotp_error(error: Exception) -> None:
    logger.warning("ISO-TP: %s: %s", type(error).__name__, error)


def make_isotp_stack(
    bus: can.BusABC,
    notifier: can.Notifier,
    *,
    txid: int,
    rxid: int,
    params: IsoTpParams | None = None,
    extended_id: bool | None = None,
    error_handler: Any = None,
) -> isotp.NotifierBasedCanStack:
    """An unstarted ISO-TP stack sending on ``txid`` and listening on ``rxid``.

    ``extended_id`` defaults to "either id above 0x7FF". ``error_handler`` gets
    can-isotp's error objects (default: logged as warnings).
    """
    params = params or IsoTpParams()
    if extended_id is None:
        extended_id = txid > 0x7FF or rxid > 0x7FF
    mode = isotp.AddressingMode.Normal_29bits if extended_id else isotp.AddressingMode.Normal_11bits
    protocol = getattr(bus, "protocol", can.CanProtocol.CAN_20)
    if params.fd and protocol is can.CanProtocol.CAN_20:
        raise IsoTpConfigError(
            f"ISO-TP is set for CAN FD but bus {bus.channel_info} is classic CAN; add `,fd`"
        )
    try:
        address = isotp.Address(mode, txid=txid, rxid=rxid)
        return isotp.NotifierBasedCanStack(
            bus,
            notifier,
            address=address,
            params=params.to_isotp(),
            error_handler=error_handler or _log_isotp_error,
        )
    except ValueError as exc:
        raise IsoTpConfigError(f"ISO-TP stack txid={txid:#x} rxid={rxid:#x}: {exc}") from exc


def isotp_send(stack: isotp.TransportLayer, data: bytes, *, timeout_s: float = 5.0) -> None:
    """Send one ISO-TP message; with ``blocking_send`` waits until it is on the bus."""
    try:
        stack.send(data, send_timeout=timeout_s)
    except isotp.BlockingSendTimeout as exc:
        raise IsoTpTimeoutError(
            f"sending {len(data)} bytes did not complete within {timeout_s} s"
        ) from exc
    except isotp.BlockingSendFailure as exc:
        raise IsoTpTransferError(f"sending {len(data)} bytes failed: {exc}") from exc
    except (RuntimeError, ValueError) as exc:
        raise IsoTpTransferError(f"cannot send {len(data)} bytes: {exc}") from exc


def isotp_recv(stack: isotp.TransportLayer, *, timeout_s: float = 5.0) -> bytes:
    """Receive one ISO-TP message or raise :class:`IsoTpTimeoutError`."""
    data = stack.recv(block=True, timeout=timeout_s)
    if data is None:
        raise IsoTpTimeoutError(f"no ISO-TP message within {timeout_s} s")
    return bytes(data)
