"""Link names: parsing, round trip, errors; lazy drivers."""

import subprocess
import sys

import pytest

from bmsfw.errors import TransportError
from bmsfw.link import (
    BadLinkNameError,
    CanBusOpenError,
    CanDriverMissingError,
    CanLinkSpec,
    UnknownCanInterfaceError,
    open_can_bus,
    parse_can_link,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("virtual:bench", CanLinkSpec("virtual", "bench")),
        ("virtual", CanLinkSpec("virtual", "bmsfw")),
        ("udp_multicast:239.74.163.2", CanLinkSpec("udp_multicast", "239.74.163.2")),
        (
            "udp_multicast:239.74.163.2,port=43120,throttle",
            CanLinkSpec("udp_multicast", "239.74.163.2", port=43120, throttle=True),
        ),
        ("socketcan:can0@500k", CanLinkSpec("socketcan", "can0", bitrate_bps=500_000)),
        (
            "pcan:PCAN_USBBUS1@500k/2M",
            CanLinkSpec("pcan", "PCAN_USBBUS1", fd=True, data_bitrate_bps=2_000_000),
        ),
        ("slcan:/dev/ttyACM0@500000", CanLinkSpec("slcan", "/dev/ttyACM0")),
        ("kvaser:0@1M,fd", CanLinkSpec("kvaser", "0", bitrate_bps=1_000_000, fd=True)),
        (
            "vector:0@250k,app_name=bmsfw",
            CanLinkSpec("vector", "0", bitrate_bps=250_000, extra=(("app_name", "bmsfw"),)),
        ),
        ("udp_multicast:ff15:7079::1", CanLinkSpec("udp_multicast", "ff15:7079::1")),
    ],
)
def test_parse_examples(text: str, expected: CanLinkSpec) -> None:
    spec = parse_can_link(text)
    assert spec == expected
    assert parse_can_link(spec.to_text()) == spec


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", BadLinkNameError),
        ("nosuchbus:0", UnknownCanInterfaceError),
        ("socketcan", BadLinkNameError),
        ("socketcan:can0@fast", BadLinkNameError),
        ("socketcan:can0@0", BadLinkNameError),
        ("virtual:x,port=abc", BadLinkNameError),
        ("virtual:x,throttle=maybe", BadLinkNameError),
        ("virtual:x,=1", BadLinkNameError),
        ("virtual:x,port=70000", BadLinkNameError),
    ],
)
def test_parse_errors(text: str, error: type[TransportError]) -> None:
    with pytest.raises(error) as info:
        parse_can_link(text)
    assert isinstance(info.value, TransportError)
    assert info.value.remedy


def test_missing_hardware_driver_is_a_transport_error() -> None:
    # No PCAN-Basic / Kvaser CANlib on CI machines: a clear error, never an ImportError.
    for name in ("pcan:PCAN_USBBUS1@500k", "kvaser:0@500k"):
        with pytest.raises((CanDriverMissingError, CanBusOpenError)) as info:
            open_can_bus(name)
        assert name.split(":")[0] in str(info.value)


def test_importing_bmsfw_link_loads_no_hardware_backend() -> None:
    code = (
        "import sys, bmsfw.link; "
        "bad = [m for m in sys.modules if m.startswith('can.interfaces.') and "
        "m.split('.')[2] not in ('virtual', 'udp_multicast')]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_virtual_buses_on_one_channel_share_a_clock() -> None:
    a = open_can_bus("virtual:clockshare,throttle")
    b = open_can_bus("virtual:clockshare,throttle")
    c = open_can_bus("virtual:otherchannel,throttle")
    try:
        assert a.clock is b.clock
        assert a.clock is not c.clock
    finally:
        for bus in (a, b, c):
            bus.shutdown()
