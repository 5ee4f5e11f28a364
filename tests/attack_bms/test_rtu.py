"""The hostile BMS on RS485 (own Modbus RTU framer on a pty) against the real host."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bmsfw.errors import BmsfwError
from bmsfw.protocol.modbus import open_modbus_session
from bmsfw.protocol.modbus.registers import HOLDING, IDENTITY_OBJECTS, INPUT, MAP_VERSION

from .hostile_rtu import HostileRtuBms

IDENTITY = {
    "vendor": b"ACME",
    "model": b"BMS-16S",
    "serial": b"RS-0001",
    "hw_revision": b"C",
    "bootloader_version": b"2.1.0",
    "app_version": b"1.0.0+0",
    "security_counter": b"1",
    "active_bank": b"A",
    "map_version": str(MAP_VERSION).encode(),
}


@pytest.fixture
def rtu() -> Iterator[HostileRtuBms]:
    with HostileRtuBms() as bms:
        bms.identity = {IDENTITY_OBJECTS[k]: v for k, v in IDENTITY.items()}
        yield bms


def _error(call: object) -> BmsfwError:
    with pytest.raises(BmsfwError) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_the_fake_identifies(rtu: HostileRtuBms) -> None:
    with open_modbus_session(rtu.port, timeout_s=0.3, retries=0) as session:
        assert session.identify().serial == "RS-0001"


@pytest.mark.req("IEC62443-CR3.5")
@pytest.mark.parametrize("counter", [b"one", b"-1", b"99999999999", b"1e3", b"\xff"])
def test_identity_object_that_is_not_a_number(rtu: HostileRtuBms, counter: bytes) -> None:
    rtu.identity[IDENTITY_OBJECTS["security_counter"]] = counter
    with open_modbus_session(rtu.port, timeout_s=0.3, retries=0) as session:
        error = _error(session.identify)
    assert error.code == "BMSFW-E381"
    assert rtu.writes == []


@pytest.mark.req("IEC62443-CR3.5")
def test_document_length_of_4_gib(rtu: HostileRtuBms) -> None:
    """A document length of 0xFFFFFFFF: E381 at once, no 2-billion-register read."""
    rtu.input[INPUT.DOC_LENGTH] = 0xFFFF
    rtu.input[INPUT.DOC_LENGTH + 1] = 0xFFFF
    with open_modbus_session(rtu.port, timeout_s=0.3, retries=0) as session:
        started = time.monotonic()
        error = _error(session.read_config)
    assert error.code == "BMSFW-E381"
    assert time.monotonic() - started < 2


def test_every_answer_just_inside_the_time_out_still_ends_the_step(rtu: HostileRtuBms) -> None:
    """A full 32 KiB configuration window read with every answer 0.25 s late (inside the
    0.5 s time-out): ~130 requests, over half a minute; the step's 2 s bound ends it (E366)."""
    from bmsfw.protocol.deadline import StepBudgets

    window = 2 * INPUT.DOC_DATA_REGISTERS
    rtu.input[INPUT.DOC_LENGTH] = window >> 16
    rtu.input[INPUT.DOC_LENGTH + 1] = window & 0xFFFF
    rtu.delay_s = 0.25
    budgets = StepBudgets(config_s=2.0)
    with open_modbus_session(rtu.port, timeout_s=0.5, retries=0, budgets=budgets) as session:
        started = time.monotonic()
        error = _error(session.read_config)
        seconds = time.monotonic() - started
    assert error.code == "BMSFW-E366", error
    assert "read configuration" in str(error)
    assert 2.0 <= seconds < 3.0
    assert rtu.answered < 12  # stopped after the bound, not after ~130 answers
    assert rtu.writes == [(0x10, HOLDING.DOC_SELECT)]  # the document select, nothing more


@pytest.mark.req("IEC62443-CR3.5")
def test_cli_info_on_a_non_numeric_counter_exits_with_the_code(rtu: HostileRtuBms) -> None:
    """`bmsfw info` (the real CLI, its own process): E381 and its exit code, no traceback."""
    from cli_support import run_bmsfw

    rtu.identity[IDENTITY_OBJECTS["security_counter"]] = b"one"
    started = time.monotonic()
    result = run_bmsfw("info", "--serial", rtu.port, "--unit", "1", "--baud", "115200")
    assert result.returncode == 5, result.stderr  # transport (E3xx), docs/troubleshooting.md
    assert "BMSFW-E381" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert rtu.writes == []
    assert time.monotonic() - started < 30


def test_bank_layout_identity_object(rtu: HostileRtuBms) -> None:
    """Identity object 0x87 ``BANK/SECTOR/BANKS``: read into the identity the update core
    fits the image to (E525 there); absent: not reported."""
    from bmsfw.protocol.session import FlashLayout

    with open_modbus_session(rtu.port, timeout_s=0.3, retries=0) as session:
        assert session.identify().flash_layout is None
    rtu.identity[IDENTITY_OBJECTS["flash_layout"]] = b"8192/1024/2"
    with open_modbus_session(rtu.port, timeout_s=0.3, retries=0) as session:
        assert session.identify().flash_layout == FlashLayout(8192, 1024, 2)


@pytest.mark.parametrize(
    "layout", [b"8192/1024", b"8k/1k/2", b"0/1024/2", b"99999999999/1/2", b"8192/1024/256"]
)
def test_bank_layout_that_is_not_one_is_an_invalid_answer(
    rtu: HostileRtuBms, layout: bytes
) -> None:
    rtu.identity[IDENTITY_OBJECTS["flash_layout"]] = layout
    with open_modbus_session(rtu.port, timeout_s=0.3, retries=0) as session:
        error = _error(session.identify)
    assert error.code == "BMSFW-E381", error
    assert rtu.writes == []
