"""ISO-TP round trips over virtual (one process) and udp_multicast (two processes)."""

import itertools
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager

import can
import isotp
import pytest

from bmsfw.link import (
    IsoTpConfigError,
    IsoTpParams,
    IsoTpTimeoutError,
    default_isotp_params,
    isotp_recv,
    isotp_send,
    make_isotp_stack,
    node_address,
    node_of_response_id,
    open_can_bus,
    parse_can_link,
)
from bmsfw.sim.lab import unique_multicast_link

from . import _isotp_echo

_channels = itertools.count()


@contextmanager
def _stacks(link: str, params: IsoTpParams) -> Iterator[tuple[isotp.TransportLayer, ...]]:
    tester_bus, device_bus = open_can_bus(link), open_can_bus(link)
    notifiers = [can.Notifier(b, [], timeout=0.05) for b in (tester_bus, device_bus)]
    address = node_address(3)
    tester = make_isotp_stack(
        tester_bus, notifiers[0], txid=address.request_id, rxid=address.response_id, params=params
    )
    device = make_isotp_stack(
        device_bus, notifiers[1], txid=address.response_id, rxid=address.request_id, params=params
    )
    tester.start()
    device.start()
    try:
        yield tester, device, tester_bus
    finally:
        for stack in (tester, device):
            stack.stop()
        for notifier in notifiers:
            notifier.stop()
        tester_bus.shutdown()
        device_bus.shutdown()


@pytest.mark.parametrize(
    ("suffix", "frames_tx"),
    [
        # 4096 > 4095 needs the escaped first frame (6 header bytes): classic FF
        # carries 2 bytes, then 585 CFs of 7; FD: 58 + 65 CFs of 63. Plus the one
        # flow control the tester sends while receiving the reply (block size 0).
        ("", 1 + 585 + 1),
        (",fd", 1 + 65 + 1),
    ],
)
def test_4kib_round_trip_over_virtual(suffix: str, frames_tx: int) -> None:
    link = f"virtual:isotp-{next(_channels)}{suffix}"
    payload = os.urandom(4096)
    with _stacks(link, default_isotp_params(parse_can_link(link))) as (tester, device, bus):
        isotp_send(tester, payload)
        assert isotp_recv(device) == payload
        isotp_send(device, payload[::-1])
        assert isotp_recv(tester) == payload[::-1]
        assert bus.stats().frames_tx == frames_tx


def test_small_block_size_round_trip_and_timeout() -> None:
    link = f"virtual:isotp-{next(_channels)}"
    with _stacks(link, IsoTpParams(block_size=4, stmin_ms=0)) as (tester, device, _):
        isotp_send(tester, b"x" * 300)
        assert isotp_recv(device) == b"x" * 300
        with pytest.raises(IsoTpTimeoutError):
            isotp_recv(device, timeout_s=0.05)


def test_fd_params_on_a_classic_bus_are_refused() -> None:
    bus = open_can_bus(f"virtual:isotp-{next(_channels)}")
    notifier = can.Notifier(bus, [], timeout=0.05)
    try:
        with pytest.raises(IsoTpConfigError):
            make_isotp_stack(
                bus, notifier, txid=1, rxid=2, params=IsoTpParams(fd=True, tx_data_length=64)
            )
    finally:
        notifier.stop()
        bus.shutdown()
    with pytest.raises(IsoTpConfigError):
        IsoTpParams(tx_data_length=64)


def test_node_address_plan_is_one_based() -> None:
    # node 1 is the first pack, like Modbus unit 1 (ISO 15765-4: 0x7E0/0x7E8)
    first, last = node_address(1), node_address(8)
    assert (first.request_id, first.response_id) == (0x7E0, 0x7E8)
    assert (last.request_id, last.response_id) == (0x7E7, 0x7EF)
    extended = node_address(0x21, extended_id=True)
    assert (extended.request_id, extended.response_id) == (0x18DA21F1, 0x18DAF121)
    assert node_address(0xEF, extended_id=True).response_id == 0x18DAF1EF
    for bad, ext in ((0, False), (9, False), (0, True), (0xF0, True), (0xF1, True)):
        with pytest.raises(IsoTpConfigError):
            node_address(bad, extended_id=ext)


def test_node_of_response_id_inverts_the_plan() -> None:
    for node in range(1, 9):
        assert node_of_response_id(node_address(node).response_id) == node
    for node in (1, 0x21, 0xEF):
        response = node_address(node, extended_id=True).response_id
        assert node_of_response_id(response, extended_id=True) == node
    assert node_of_response_id(0x7E0) is None  # a request id, not a response
    assert node_of_response_id(0x7F0) is None
    assert node_of_response_id(0x18DA21F1, extended_id=True) is None  # request direction


def test_multicast_defaults_grant_a_bounded_block_size() -> None:
    # 16: what the BMS grants there too (measured: 8-16 clean; docs/dev/guide.md)
    assert default_isotp_params(parse_can_link("udp_multicast:239.74.163.2")).block_size == 16
    assert default_isotp_params(parse_can_link("udp_multicast,throttle")).block_size == 0
    assert default_isotp_params(parse_can_link("virtual:x,fd")).tx_data_length == 64


@pytest.mark.timeout(60)
def test_4kib_round_trip_over_udp_multicast_across_processes() -> None:
    link = unique_multicast_link()  # a port no other test process on this machine uses
    spec = parse_can_link(link)
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    child = context.Process(target=_isotp_echo.serve, args=(link, 5, ready, stop), daemon=True)
    child.start()
    bus = open_can_bus(spec)
    notifier = can.Notifier(bus, [], timeout=0.05)
    address = node_address(5)
    stack = make_isotp_stack(
        bus,
        notifier,
        txid=address.request_id,
        rxid=address.response_id,
        params=default_isotp_params(spec),
    )
    stack.start()
    try:
        assert ready.wait(30), "echo process did not start"
        for _ in range(3):
            payload = os.urandom(4096)
            isotp_send(stack, payload)
            assert isotp_recv(stack, timeout_s=10) == payload[::-1]
        stats = bus.stats()
        # Own frames looped back by multicast are not counted as received.
        assert stats.frames_tx >= 3 * 586
        assert stats.frames_rx >= 3 * 586
        assert stats.frames_rx < 3 * 586 + stats.frames_tx
    finally:
        stop.set()
        stack.stop()
        notifier.stop()
        bus.shutdown()
        child.join(10)
        if child.is_alive():
            child.kill()
