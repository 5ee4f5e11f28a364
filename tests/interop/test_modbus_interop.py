"""A stock pymodbus client updates the virtual BMS over RS485, from docs/modbus.md alone."""

from __future__ import annotations

import struct

import pytest

from . import modbus_client as mb
from .conftest import Simulator, Vendor, sim_set
from .uds_client import key_hash


def _refusal(call: object, *args: object) -> tuple[int, int]:
    with pytest.raises(mb.Refused) as refused:
        call(*args)  # type: ignore[operator]
    return refused.value.exception_code, refused.value.result


@pytest.mark.req("IEC62443-CR3.10")
def test_full_flash_confirm(rs485_bench: tuple[Simulator, str], vendor: Vendor) -> None:
    _, pty = rs485_bench
    package = vendor.packages["v2"]
    client = mb.open_client(pty)
    try:
        assert mb.status(client).version == "1.0.0"
        status = mb.flash(client, vendor.tester, package.header, package.image)
        assert (status.image_state, status.version) == ("test", "1.1.0")
        assert mb.read_input(client, mb.SELFTEST_STATE, 1) == [2]  # passed
        # the reset ended the authentication (docs/modbus.md): CONFIRM alone is refused
        assert _refusal(mb.command, client, mb.CONFIRM) == (4, 349)
        mb.authenticate(client, vendor.tester)
        mb.command(client, mb.CONFIRM)
        status = mb.status(client)
        assert (status.image_state, status.version, status.security_counter) == (
            "confirmed",
            "1.1.0",
            2,
        )
    finally:
        client.close()


def test_after_a_revert_confirm_and_rollback_are_refused(
    rs485_bench: tuple[Simulator, str], vendor: Vendor
) -> None:
    sim, pty = rs485_bench
    package = vendor.packages["selftest-fails"]
    client = mb.open_client(pty)
    try:
        status = mb.flash(client, vendor.tester, package.header, package.image)
        assert (status.image_state, status.version) == ("reverted", "1.0.0")
        assert "self-test failed" in status.revert_reason
        mb.authenticate(client, vendor.tester)
        before = sim.stored()
        assert _refusal(mb.command, client, mb.CONFIRM) == (4, 210)  # nothing to confirm
        assert _refusal(mb.command, client, mb.ROLLBACK) == (4, 211)  # nothing to roll back to
        assert sim.stored() == before
        status = mb.status(client)
        assert (status.run_state, status.version, status.security_counter) == (
            "application",
            "1.0.0",
            1,
        )
    finally:
        client.close()


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_prepare_flags_over_the_air_and_an_authorised_downgrade(
    rs485_bench: tuple[Simulator, str], vendor: Vendor
) -> None:
    """docs/modbus.md, PREPARE's argument: bit 0 = over the air, bit 1 = a person
    authorised this downgrade. 0.9.0 at the running 1.0.0's counter: refused over the air
    (result 145), prepared with bit 1; an undefined bit is an illegal data value."""
    sim, pty = rs485_bench
    client = mb.open_client(pty)
    try:
        mb.authenticate(client, vendor.tester)
        mb.upload(client, vendor.packages["older"].header)
        before = sim.stored()
        assert _refusal(mb.command, client, mb.PREPARE, 1) == (4, 145)
        assert _refusal(mb.command, client, mb.PREPARE, 4) == (3, 1)  # illegal data value
        assert sim.stored() == before  # refused: nothing staged, not a byte written
        mb.command(client, mb.PREPARE, 3)
    finally:
        client.close()


@pytest.mark.parametrize("key_format", ["hash", "full"])
def test_imgtool_signed_image_over_rs485(
    rs485_bench: tuple[Simulator, str], vendor: Vendor, key_format: str
) -> None:
    _, pty = rs485_bench
    package = vendor.packages[f"imgtool-{key_format}"]
    client = mb.open_client(pty)
    try:
        status = mb.flash(client, vendor.tester, package.header, package.image)
        assert (status.image_state, status.version) == ("test", "1.2.0+0")
        mb.authenticate(client, vendor.tester)
        mb.command(client, mb.CONFIRM)
        assert mb.status(client).image_state == "confirmed"
    finally:
        client.close()


def test_pack_current_sign_and_unit(rs485_bench: tuple[Simulator, str]) -> None:
    """Input 0x0004: s32, 0.001 A, positive = charging."""
    sim, pty = rs485_bench
    client = mb.open_client(pty)
    try:
        sim_set(sim, "--current", "-12.5")
        high, low = mb.read_input(client, mb.PACK_CURRENT, 2)
        assert struct.unpack(">i", struct.pack(">HH", high, low)) == (-12_500,)
    finally:
        client.close()


@pytest.mark.req("SEED-SECURE-BOOT")
def test_fused_image_key_is_readable(rs485_bench: tuple[Simulator, str], vendor: Vendor) -> None:
    """Input registers image_key_count / image_key_hashes (docs/modbus.md "Image keys")."""
    _, pty = rs485_bench
    expected = key_hash((vendor.pki / "image-signing.pub").read_bytes())
    client = mb.open_client(pty)
    try:
        assert mb.image_keys(client) == [expected]
    finally:
        client.close()
