"""Opening a UDS session on a named CAN link, and functional discovery of nodes.

CAN ids and ISO-TP settings come from :mod:`bmsfw.link.isotp_stack` (one node
numbering for the whole project, starting at 1; one block-size rule). The
tester's stack sends with *blocking send*: P2 runs from the end of the request's
transmission (ISO 14229-2), and a 4 KiB block takes ~130 ms at 500 kbit/s.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import can

from bmsfw.link.canlink import CanLinkSpec, open_can_bus, parse_can_link
from bmsfw.link.isotp_stack import (
    IsoTpParams,
    default_isotp_params,
    functional_address,
    make_isotp_stack,
    node_address,
    node_of_response_id,
)
from bmsfw.protocol.errors import UdsNoNodeAnsweredError
from bmsfw.protocol.uds.client import UdsClientConfig, UdsSession

__all__ = ["discover_nodes", "open_uds_session"]

log = logging.getLogger(__name__)


def _rate(spec: CanLinkSpec) -> str:
    if spec.fd:
        return f"{spec.bitrate_bps}/{spec.data_bitrate_bps} bit/s CAN FD"
    return f"{spec.bitrate_bps} bit/s CAN"


def _connection(stack: Any, name: str) -> Any:
    from udsoncan.connections import PythonIsoTpConnection

    class IsoTpConnection(PythonIsoTpConnection):
        """udsoncan's connection, minus a stall: its ``empty_rxqueue`` (run before every
        request) asks can-isotp's thread to abort reception and waits for it, and that
        thread only looks every 50 ms: ~25 ms lost per request. Dropping stale
        responses is all a tester needs between requests."""

        def empty_rxqueue(self) -> None:
            stack.clear_rx_queue()

    return IsoTpConnection(stack, name=name)


def open_uds_session(
    link: CanLinkSpec | str,
    node: int = 1,
    *,
    config: UdsClientConfig | None = None,
    isotp: IsoTpParams | None = None,
    bus: Any | None = None,
    extended_id: bool = False,
) -> UdsSession:
    """A :class:`UdsSession` to BMS ``node`` on ``link`` (e.g. ``"udp_multicast:239.0.0.1"``).

    Opens the bus (unless ``bus`` is given; then the caller owns it), a notifier
    and a can-isotp stack; ``session.close()`` releases what this opened.
    ``session.bus`` is the :class:`~bmsfw.link.wirebus.WireBus` (stats, faults).
    ``node`` starts at 1 (:func:`bmsfw.link.node_address`); ``isotp`` defaults to
    :func:`bmsfw.link.default_isotp_params` for the link.
    """
    spec = parse_can_link(link) if isinstance(link, str) else link
    own_bus = bus is None
    the_bus = open_can_bus(spec) if bus is None else bus
    notifier = can.Notifier(the_bus, [], timeout=0.05)
    try:
        address = node_address(node, extended_id=extended_id)
        params = isotp or default_isotp_params(spec, blocking_send=True)
        stack = make_isotp_stack(
            the_bus,
            notifier,
            txid=address.request_id,
            rxid=address.response_id,
            params=params,
            extended_id=extended_id,
        )
    except BaseException:
        notifier.stop()
        if own_bus:
            the_bus.shutdown()
        raise

    def release() -> None:
        notifier.stop()
        if own_bus:
            the_bus.shutdown()

    session = UdsSession(
        _connection(stack, f"node{node}"),
        address=f"can:{spec}/node {node}",
        rate=_rate(spec),
        config=config,
        on_close=release,
    )
    session.bus = the_bus
    return session


def discover_nodes(
    link: CanLinkSpec | str,
    *,
    timeout_s: float = 0.5,
    bus: Any | None = None,
    extended_id: bool = False,
) -> list[int]:
    """Nodes answering a functional TesterPresent (``0x7DF: 02 3E 00``), sorted (1-based)."""
    spec = parse_can_link(link) if isinstance(link, str) else link
    the_bus = open_can_bus(spec) if bus is None else bus
    found: set[int] = set()
    try:
        the_bus.send(
            can.Message(
                arbitration_id=functional_address(extended_id=extended_id),
                data=b"\x02\x3e\x00" + b"\xcc" * 5,
                is_extended_id=extended_id,
                is_fd=spec.fd,
            )
        )
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = the_bus.recv(timeout=left)
            if msg is None:
                break
            node = node_of_response_id(msg.arbitration_id, extended_id=extended_id)
            # single frame, positive TesterPresent response 7E 00
            if node is not None and bytes(msg.data[:3]) == b"\x02\x7e\x00":
                found.add(node)
    finally:
        if bus is None:
            the_bus.shutdown()
    if not found:
        raise UdsNoNodeAnsweredError(f"no BMS answered a functional TesterPresent on {spec}")
    log.info("nodes on %s: %s", spec, sorted(found))
    return sorted(found)
