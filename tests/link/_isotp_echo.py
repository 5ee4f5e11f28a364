"""Child process for the cross-process ISO-TP test: echo each message back, reversed."""

from __future__ import annotations

import contextlib
from typing import Any

import can

from bmsfw.link import (
    IsoTpTimeoutError,
    default_isotp_params,
    isotp_recv,
    isotp_send,
    make_isotp_stack,
    node_address,
    open_can_bus,
    parse_can_link,
)


def serve(link: str, node: int, ready: Any, stop: Any) -> None:
    spec = parse_can_link(link)
    bus = open_can_bus(spec)
    notifier = can.Notifier(bus, [], timeout=0.05)
    address = node_address(node)
    stack = make_isotp_stack(
        bus,
        notifier,
        txid=address.response_id,
        rxid=address.request_id,
        params=default_isotp_params(spec),
    )
    stack.start()
    ready.set()
    try:
        while not stop.is_set():
            with contextlib.suppress(IsoTpTimeoutError):
                isotp_send(stack, isotp_recv(stack, timeout_s=0.2)[::-1])
    finally:
        stack.stop()
        notifier.stop()
        bus.shutdown()
