"""Opening a UDS session on a named CAN link, and functional discovery of nodes."""

from __future__ import annotations

import logging
import time
from typing import Any

import can

from bmsfw.link.canlink import CanLinkSpec, open_can_bus, parse_can_link
from bmsfw.protocol.errors import UdsNoNodeAnsweredError
from bmsfw.protocol.uds._transport import (
    FUNCTIONAL_REQUEST_ID,
    IsoTpSettings,
    make_stack,
    node_ids,
    node_of_response_id,
)
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
    isotp: IsoTpSettings | None = None,
    bus: Any | None = None,
) -> UdsSession:
    """A :class:`UdsSession` to BMS ``node`` on ``link`` (e.g. ``"udp_multicast:239.0.0.1"``).

    Opens the bus (unless ``bus`` is given; then the caller owns it), a notifier
    and a can-isotp stack; ``session.close()`` releases what this opened.
    ``session.bus`` is the :class:`~bmsfw.link.wirebus.WireBus` (stats, faults).
    """
    spec = parse_can_link(link) if isinstance(link, str) else link
    own_bus = bus is None
    the_bus = open_can_bus(spec) if bus is None else bus
    notifier = can.Notifier(the_bus, [], timeout=0.05)
    txid, rxid = node_ids(node)
    settings = isotp or IsoTpSettings.for_client(fd=spec.fd, multicast=spec.is_multicast)
    stack = make_stack(the_bus, notifier, txid=txid, rxid=rxid, settings=settings)

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
    link: CanLinkSpec | str, *, timeout_s: float = 0.5, bus: Any | None = None
) -> list[int]:
    """Nodes answering a functional TesterPresent (``0x7DF: 02 3E 00``), sorted."""
    spec = parse_can_link(link) if isinstance(link, str) else link
    the_bus = open_can_bus(spec) if bus is None else bus
    found: set[int] = set()
    try:
        the_bus.send(
            can.Message(
                arbitration_id=FUNCTIONAL_REQUEST_ID,
                data=b"\x02\x3e\x00" + b"\xcc" * 5,
                is_extended_id=False,
                is_fd=spec.fd,
            )
        )
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = the_bus.recv(timeout=left)
            if msg is None:
                break
            node = node_of_response_id(msg.arbitration_id)
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
