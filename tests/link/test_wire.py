"""The wire-time formulas, pinned against values computed by hand from ISO 11898-1 fields."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmsfw.link.errors import SerialConfigError
from bmsfw.link.uart import SerialParams
from bmsfw.link.wire import (
    CAN_FD_LENGTHS,
    CanWireModel,
    WireClock,
    can_fd_padded_length,
    can_frame_bits,
    modbus_silence_s,
    serial_char_bits,
)


@pytest.mark.parametrize(
    ("length", "extended", "expected"),
    [
        (0, False, (47, 0)),
        (1, False, (55, 0)),
        (8, False, (111, 0)),
        (0, True, (67, 0)),
        (8, True, (131, 0)),
    ],
)
def test_classic_frame_bits(length: int, extended: bool, expected: tuple[int, int]) -> None:
    assert can_frame_bits(length, extended_id=extended) == expected


@pytest.mark.parametrize(
    ("length", "extended", "brs", "expected"),
    [
        # 29 nominal bits (SOF..BRS 17 + ACK/EOF/IFS 12); data phase ESI+DLC+SBC+CRC17+delim = 27
        (8, False, True, (29, 8 * 8 + 27)),
        (16, False, True, (29, 16 * 8 + 27)),
        # > 16 bytes: CRC-21, so 31 bits of overhead in the data phase
        (64, False, True, (29, 64 * 8 + 31)),
        (13, False, True, (29, 16 * 8 + 27)),  # padded to 16
        (64, True, True, (48, 543)),
        (64, False, False, (29 + 543, 0)),
    ],
)
def test_fd_frame_bits(length: int, extended: bool, brs: bool, expected: tuple[int, int]) -> None:
    assert can_frame_bits(length, extended_id=extended, fd=True, bitrate_switch=brs) == expected


def test_frame_times_hand_computed() -> None:
    model = CanWireModel(500_000, 2_000_000)
    assert model.frame_time_s(8) == pytest.approx(222e-6)
    assert model.frame_time_s(64, fd=True) == pytest.approx(29 * 2e-6 + 543 * 0.5e-6)
    assert model.raw_payload_rate_bytes_per_s() == pytest.approx(8 / 222e-6)
    assert CanWireModel(1_000_000).frame_time_s(8) == pytest.approx(111e-6)


def test_remote_frame_has_no_data_bits() -> None:
    assert can_frame_bits(8, remote=True) == (47, 0)


def test_frame_length_limits() -> None:
    with pytest.raises(ValueError, match="at most 8"):
        can_frame_bits(9)
    with pytest.raises(ValueError, match="at most 64"):
        can_frame_bits(65, fd=True)


@given(st.integers(min_value=0, max_value=64))
def test_fd_padding_is_the_next_valid_length(length: int) -> None:
    padded = can_fd_padded_length(length)
    assert padded in CAN_FD_LENGTHS and padded >= length
    assert all(size < length for size in CAN_FD_LENGTHS if size < padded)


def test_serial_character_and_silence() -> None:
    assert serial_char_bits(8, "E", 1) == 11
    assert serial_char_bits(8, "N", 1) == 10
    assert serial_char_bits(8, "N", 2) == 11
    assert modbus_silence_s(9600, 11) == pytest.approx(3.5 * 11 / 9600)
    assert modbus_silence_s(19_200, 11) == pytest.approx(3.5 * 11 / 19_200)
    assert modbus_silence_s(115_200) == 0.00175
    # 3.5 character times at every baud rate, for devices that time frames in hardware.
    assert modbus_silence_s(921_600, 11, "chars") == pytest.approx(3.5 * 11 / 921_600)
    assert modbus_silence_s(9600, 11, "chars") == modbus_silence_s(9600, 11, "spec")
    with pytest.raises(ValueError, match="frame gap"):
        modbus_silence_s(921_600, 11, "fast")


def test_serial_params_carry_the_frame_gap() -> None:
    assert SerialParams(921_600).silence_s == 0.00175
    assert SerialParams(921_600, frame_gap="chars").silence_s == pytest.approx(3.5 * 11 / 921_600)
    with pytest.raises(SerialConfigError, match="frame gap"):
        SerialParams(921_600, frame_gap="none")


def test_wire_clock_books_back_to_back_slots() -> None:
    clock = WireClock()
    first = clock.reserve(0.001, not_before=100.0)
    second = clock.reserve(0.001, not_before=100.0)
    assert first == pytest.approx(100.001)
    assert second == pytest.approx(100.002)
    # An idle bus starts the next frame when it is handed over, not in the past.
    assert clock.reserve(0.001, not_before=200.0) == pytest.approx(200.001)
