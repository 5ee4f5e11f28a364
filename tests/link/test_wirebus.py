"""WireBus: counting, throttling accuracy, fault injection."""

import itertools
import time
from collections.abc import Iterator

import can
import pytest

from bmsfw.errors import TransportError
from bmsfw.link import BusOffError, CanFaults, WireBus, open_can_bus

_channels = itertools.count()


@pytest.fixture
def pair() -> Iterator[tuple[WireBus, WireBus]]:
    name = f"virtual:wirebus-test-{next(_channels)}"
    tx, rx = open_can_bus(name), open_can_bus(name)
    yield tx, rx
    tx.shutdown()
    rx.shutdown()


def _frame(i: int, length: int = 8) -> can.Message:
    return can.Message(arbitration_id=0x123, data=bytes([i & 0xFF] * length), is_extended_id=False)


def _drain(bus: can.BusABC, timeout_s: float = 0.05) -> list[can.Message]:
    out = []
    while (msg := bus.recv(timeout_s)) is not None:
        out.append(msg)
    return out


def test_stats_count_frames_bytes_bits_and_wire_time(pair: tuple[WireBus, WireBus]) -> None:
    tx, rx = pair
    for i in range(10):
        tx.send(_frame(i))
    tx.send(can.Message(arbitration_id=0x18DA00F1, data=b"\x01\x02", is_extended_id=True))
    assert len(_drain(rx)) == 11
    stats = tx.stats()
    assert (stats.frames_tx, stats.bytes_tx, stats.bits_tx) == (11, 82, 10 * 111 + 67 + 16)
    assert stats.wire_time_tx_s == pytest.approx((10 * 111 + 83) / 500_000)
    assert rx.stats().frames_rx == 11 and rx.stats().bits_rx == stats.bits_tx


def test_throttle_paces_to_the_physical_rate() -> None:
    # 500 classic 8-byte frames at 500 kbit/s are 500 * 222 us = 111 ms on the wire.
    name = f"virtual:throttle-{next(_channels)}@500k,throttle"
    tx, rx = open_can_bus(name), open_can_bus(name)
    try:
        start = time.monotonic()
        for i in range(500):
            tx.send(_frame(i))
        tx.flush_tx_buffer()
        elapsed = time.monotonic() - start
        assert len(_drain(rx)) == 500
        assert tx.stats().wire_time_tx_s == pytest.approx(0.111)
        # Never faster than the bus; loose upper bound so a busy CI machine does not flake.
        assert 0.105 <= elapsed < 0.6, elapsed
    finally:
        tx.shutdown()
        rx.shutdown()


def test_unthrottled_is_much_faster_than_the_wire(pair: tuple[WireBus, WireBus]) -> None:
    tx, _ = pair
    start = time.monotonic()
    for i in range(500):
        tx.send(_frame(i))
    assert time.monotonic() - start < 0.111


def test_drop_fraction_is_deterministic_and_counted(pair: tuple[WireBus, WireBus]) -> None:
    tx, rx = pair
    tx.faults = CanFaults(drop_fraction=0.1, direction="tx", seed=7)
    for i in range(2000):
        tx.send(_frame(i, 2))
    received = _drain(rx)
    dropped = tx.stats().dropped
    assert 120 <= dropped <= 280  # binomial(2000, 0.1): mean 200, sd 13
    assert len(received) == 2000 - dropped
    first_run = [bytes(m.data) for m in received]
    tx.faults = CanFaults(drop_fraction=0.1, direction="tx", seed=7)
    for i in range(2000):
        tx.send(_frame(i, 2))
    assert [bytes(m.data) for m in _drain(rx)] == first_run


def test_rx_drop_applies_to_received_frames(pair: tuple[WireBus, WireBus]) -> None:
    tx, rx = pair
    rx.faults = CanFaults(drop_fraction=0.5, direction="rx", seed=1)
    for i in range(200):
        tx.send(_frame(i))
    received = _drain(rx)
    assert tx.stats().dropped == 0
    assert len(received) == 200 - rx.stats().dropped
    assert 50 < rx.stats().dropped < 150


def test_corrupt_flips_exactly_one_bit(pair: tuple[WireBus, WireBus]) -> None:
    tx, rx = pair
    tx.faults = CanFaults(corrupt_fraction=1.0, direction="tx")
    tx.send(_frame(0x55))
    (msg,) = _drain(rx)
    flipped = sum(bin(a ^ b).count("1") for a, b in zip(msg.data, [0x55] * 8, strict=True))
    assert flipped == 1 and tx.stats().corrupted == 1


def test_delay_holds_frames_back_and_lets_others_pass(pair: tuple[WireBus, WireBus]) -> None:
    tx, rx = pair
    tx.faults = CanFaults(delay_fraction=1.0, delay_s=0.1, direction="tx")
    tx.send(_frame(1))
    tx.faults = CanFaults()
    tx.send(_frame(2))
    first = rx.recv(0.05)
    assert first is not None and first.data[0] == 2
    assert rx.recv(0.03) is None  # still delayed
    late = rx.recv(0.5)
    assert late is not None and late.data[0] == 1
    assert tx.stats().delayed == 1


def test_bus_off_raises_and_hears_nothing(pair: tuple[WireBus, WireBus]) -> None:
    tx, rx = pair
    tx.faults = CanFaults(bus_off=True)
    with pytest.raises(BusOffError) as info:
        tx.send(_frame(1))
    assert isinstance(info.value, TransportError)
    rx.send(_frame(2))
    assert tx.recv(0.05) is None
    tx.faults = CanFaults()  # recovered
    tx.send(_frame(3))
    assert [m.data[0] for m in _drain(rx)] == [3]


def test_silence_swallows_both_directions(pair: tuple[WireBus, WireBus]) -> None:
    tx, rx = pair
    tx.faults = CanFaults(silent=True)
    tx.send(_frame(1))
    assert rx.recv(0.05) is None
    rx.send(_frame(2))
    assert tx.recv(0.05) is None
    assert tx.stats().suppressed == 2


def test_fault_fractions_are_validated() -> None:
    with pytest.raises(ValueError, match="drop_fraction"):
        CanFaults(drop_fraction=1.5)
