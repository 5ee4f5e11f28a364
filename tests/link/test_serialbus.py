"""The simulated RS485 bus: broadcast, half duplex, collisions, settings, timing, faults."""

import time
from collections.abc import Iterator

import pytest
import serial

from bmsfw.link import (
    RS485Bus,
    SerialConfigError,
    SerialFaults,
    SerialParams,
    open_serial_port,
    uart_transcode,
)

PARAMS = SerialParams(115_200, "E")


@pytest.fixture
def bus() -> Iterator[RS485Bus]:
    with RS485Bus(PARAMS) as rs485:
        yield rs485


def _read(port: serial.Serial, n: int, timeout_s: float = 1.0) -> bytes:
    deadline = time.monotonic() + timeout_s
    data = b""
    while len(data) < n and time.monotonic() < deadline:
        data += port.read(n - len(data))
    return data


def test_host_reaches_every_node_and_a_reply_reaches_all_others(bus: RS485Bus) -> None:
    node1, node2 = bus.attach_pty("node1"), bus.attach_pty("node2")
    host = open_serial_port(bus.host_path, PARAMS, timeout_s=0.2)
    dev1 = open_serial_port(node1.path, PARAMS, timeout_s=0.2)
    dev2 = open_serial_port(node2.path, PARAMS, timeout_s=0.2)
    try:
        host.write(b"\x01\x03request")
        assert _read(dev1, 9) == b"\x01\x03request"
        assert _read(dev2, 9) == b"\x01\x03request"
        dev1.write(b"\x01\x03reply")
        assert _read(host, 7) == b"\x01\x03reply"
        assert _read(dev2, 7) == b"\x01\x03reply"  # the other node hears it too
        assert dev1.read(1) == b""  # a talker does not hear itself
        assert bus.stats().frames_tx == 2
        assert bus.stats().collisions == 0
    finally:
        for port in (host, dev1, dev2):
            port.close()


def test_two_talkers_at_once_garble_each_other() -> None:
    with RS485Bus(SerialParams(9600, "E"), throttle=True) as rs485:
        a, b = rs485.attach_endpoint("a"), rs485.attach_endpoint("b")
        listener = rs485.attach_endpoint("listener")
        frame_a, frame_b = b"\x01\x03\x02\x00\x10\xaa\xbb" * 3, b"\x02\x03\x02\x00\x20\xcc\xdd" * 3
        a.write(frame_a)
        b.write(frame_b)  # 21 chars at 9600 baud are ~24 ms on the wire: they overlap
        time.sleep(0.1)
        heard = listener.read(0.5)
        assert heard not in (frame_a, frame_b)
        assert frame_a not in heard and frame_b not in heard
        assert rs485.stats().collisions == 1
        # One after the other is fine.
        a.write(frame_a)
        time.sleep(0.06)
        assert listener.read(0.5) == frame_a


def test_wrong_host_baud_rate_reads_garbage(bus: RS485Bus) -> None:
    node = bus.attach_pty("node1")
    dev = open_serial_port(node.path, PARAMS, timeout_s=0.2)
    host = open_serial_port(bus.host_path, SerialParams(9600, "E"), timeout_s=0.2)
    try:
        # The bridge sees the host's baud rate through the pty's shared termios.
        assert bus.host.params.baud_bps == 9600
        reply = b"\x01\x03\x04\x00\x64\x00\xc8\x7a\x4e"
        dev.write(reply)
        heard = host.read(64)
        assert heard != reply
        host.baudrate = 115_200
        assert bus.host.params.baud_bps == 115_200
        dev.write(reply)
        assert _read(host, len(reply)) == reply
    finally:
        host.close()
        dev.close()


def test_custom_baud_rate_is_read_from_the_pty(bus: RS485Bus) -> None:
    host = serial.Serial(bus.host_path, 250_000)
    try:
        assert bus.host.params.baud_bps == 250_000
    finally:
        host.close()


@pytest.mark.parametrize(
    ("sender", "receiver", "same"),
    [
        (SerialParams(9600, "E"), SerialParams(9600, "E"), True),
        (SerialParams(9600, "E"), SerialParams(9700, "E"), True),  # 1 % off still samples right
        (SerialParams(9600, "E"), SerialParams(9600, "N"), True),  # parity ignored (no INPCK)
        (SerialParams(9600, "N"), SerialParams(9600, "E"), False),  # next start bit eaten
        (SerialParams(9600, "E"), SerialParams(19_200, "E"), False),
        (SerialParams(19_200, "E"), SerialParams(9600, "E"), False),
    ],
)
def test_uart_transcode(sender: SerialParams, receiver: SerialParams, same: bool) -> None:
    data = bytes(range(0, 256, 5))
    assert (uart_transcode(data, sender, receiver) == data) is same


def test_throttled_line_takes_the_character_time() -> None:
    with RS485Bus(SerialParams(115_200, "E"), throttle=True) as rs485:
        node = rs485.attach_endpoint("node")
        host = open_serial_port(rs485.host_path, PARAMS)
        try:
            start = time.monotonic()
            host.write(b"\x55" * 1000)
            received = b""
            while len(received) < 1000 and time.monotonic() - start < 3:
                received += node.read(0.5)
            elapsed = time.monotonic() - start
        finally:
            host.close()
        # 1000 chars * 11 bits / 115200 = 95.5 ms (+1.75 ms silence before the frame).
        assert received == b"\x55" * 1000
        assert 0.090 <= elapsed < 0.5, elapsed
        assert rs485.stats().wire_time_tx_s == pytest.approx(1000 * 11 / 115_200 + 0.00175)


def test_faults_drop_corrupt_silence_and_pulled_cable(bus: RS485Bus) -> None:
    a, b = bus.attach_endpoint("a"), bus.attach_endpoint("b")
    bus.faults = SerialFaults(drop_fraction=0.1, corrupt_fraction=0.1, seed=3)
    a.write(bytes(1000))
    heard = b.read(0.5)
    stats = bus.stats()
    assert len(heard) == 1000 - stats.dropped and 50 < stats.dropped < 150
    assert sum(1 for x in heard if x) == stats.corrupted and stats.corrupted > 40
    bus.faults = SerialFaults(silent=True)
    a.write(b"lost")
    assert b.read(0.1) == b""
    bus.faults = SerialFaults()
    bus.pull_cable("b")
    a.write(b"to b")
    b.write(b"from b")
    assert b.read(0.1) == b"" and a.read(0.1) == b""
    bus.pull_cable("b", pulled=False)
    a.write(b"back")
    assert b.read(0.5) == b"back"


def test_bad_settings_are_refused(bus: RS485Bus) -> None:
    with pytest.raises(SerialConfigError):
        SerialParams(9600, "X")
    with pytest.raises(SerialConfigError):
        SerialParams(0)
    bus.attach_endpoint("n")
    with pytest.raises(SerialConfigError):
        bus.attach_endpoint("n")
