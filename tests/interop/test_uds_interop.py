"""A stock udsoncan tester updates the virtual BMS over CAN, from docs/uds.md alone."""

from __future__ import annotations

import struct

import pytest
import udsoncan
from udsoncan.exceptions import NegativeResponseException

from . import uds_client as uds
from .conftest import Simulator, Vendor, sim_set
from .uds_client import Credentials


def _nrc(call: object, *args: object) -> int:
    with pytest.raises(NegativeResponseException) as refused:
        call(*args)  # type: ignore[operator]
    return int(refused.value.response.code)


@pytest.mark.req("IEC62443-CR3.10")
def test_full_flash_confirm(can_bench: tuple[Simulator, str, int], vendor: Vendor) -> None:
    _, group, port = can_bench
    package = vendor.packages["v2"]
    with uds.connect(group, port) as client:
        assert uds.read(client, uds.DID_SOFTWARE_VERSION) == "1.0.0"
        status = uds.flash(client, vendor.tester, package.header, package.image)
        assert (status.image_state, status.bank, status.version) == ("test", "B", "1.1.0")
        uds.confirm(client, vendor.tester)
        status = uds.boot_status(client)
        assert (status.image_state, status.version, status.security_counter) == (
            "confirmed",
            "1.1.0",
            2,
        )
        assert uds.read(client, uds.DID_SOFTWARE_VERSION) == "1.1.0"


@pytest.mark.parametrize("key_format", ["hash", "full"])
def test_imgtool_signed_image_reports_its_mcuboot_version(
    can_bench: tuple[Simulator, str, int], vendor: Vendor, key_format: str
) -> None:
    """An image from `imgtool sign --version 1.2.0` (no bmsfw descriptor): `1.2.0+0`.
    imgtool's default key format stores only the key's hash: the bootloader has the key."""
    _, group, port = can_bench
    package = vendor.packages[f"imgtool-{key_format}"]
    with uds.connect(group, port) as client:
        status = uds.flash(client, vendor.tester, package.header, package.image)
        assert (status.image_state, status.version) == ("test", "1.2.0+0")
        uds.confirm(client, vendor.tester)
        assert uds.read(client, uds.DID_SOFTWARE_VERSION) == "1.2.0+0"
        assert uds.boot_status(client).image_state == "confirmed"


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_staging_flags_over_the_air_and_an_authorised_downgrade(
    can_bench: tuple[Simulator, str, int], vendor: Vendor
) -> None:
    """docs/uds.md, routine 0x0201: flags byte bit 0 = over the air, bit 1 = a person
    authorised this downgrade. 0.9.0 at the running 1.0.0's counter: refused over the air
    (routine status 01, BMSFW-E145), staged with bit 1; an undefined bit is NRC 0x31."""
    sim, group, port = can_bench
    header = vendor.packages["older"].header
    with uds.connect(group, port) as client:
        uds.authenticate(client, vendor.tester, 0x02)
        before = sim.stored()
        refused = client.start_routine(uds.RID_STAGE, b"\x01" + header)
        record = refused.service_data.routine_status_record
        assert record[:1] == b"\x01" and b"BMSFW-E145" in record, record
        assert _nrc(client.start_routine, uds.RID_STAGE, b"\x04" + header) == 0x31
        assert sim.stored() == before  # refused: nothing staged, not a byte written
        staged = client.start_routine(uds.RID_STAGE, b"\x03" + header)
        assert staged.service_data.routine_status_record[:1] == b"\x00"


def test_after_a_revert_confirm_and_rollback_are_refused(
    can_bench: tuple[Simulator, str, int], vendor: Vendor
) -> None:
    """MCUboot semantics: the rejected image stays rejected, whatever the tester sends."""
    sim, group, port = can_bench
    package = vendor.packages["selftest-fails"]
    with uds.connect(group, port) as client:
        status = uds.flash(client, vendor.tester, package.header, package.image)
        assert (status.image_state, status.bank, status.version) == ("reverted", "A", "1.0.0")
        assert "self-test failed" in status.revert_reason
        before = sim.stored()
        assert _nrc(uds.confirm, client, vendor.tester) == 0x22  # conditionsNotCorrect
        assert _nrc(uds.rollback, client, vendor.tester) == 0x22
        assert sim.stored() == before  # refused: not a byte of flash or board state changed
        status = uds.boot_status(client)
        assert (status.run_state, status.bank, status.version, status.security_counter) == (
            "application",
            "A",
            "1.0.0",
            1,
        )
        assert uds.read(client, uds.DID_SOFTWARE_VERSION) == "1.0.0"


def test_authentication_codes_are_iso_14229_2020(
    can_bench: tuple[Simulator, str, int], vendor: Vendor
) -> None:
    _, group, port = can_bench
    tester = vendor.tester
    with uds.connect(group, port) as client:
        client.change_session(0x02)
        # a wrong proof of possession: ownershipVerificationFailed (0x58), not "revoked"
        response = client.verify_certificate_unidirectional(0x00, tester.certificate_client, b"")
        assert response.service_data.return_value == 0x11
        code = _nrc(client.proof_of_ownership, b"\x00" * 64, b"")
        assert code == udsoncan.Response.Code.OwnershipVerificationFailed == 0x58
        # the chain without the root: the BMS holds only the root key's hash
        leaf_and_intermediate = Credentials(
            b"".join(tester.chain_pem.split(b"-----END CERTIFICATE-----\n")[i] + b"-----END "
                     b"CERTIFICATE-----\n" for i in (0, 1)),
            tester.key_pem,
        )  # fmt: skip
        code = _nrc(
            client.verify_certificate_unidirectional,
            0x00,
            leaf_and_intermediate.certificate_client,
            b"",
        )
        assert code == udsoncan.Response.Code.CertificateVerificationFailed_InvalidChainOfTrust
        uds.authenticate(client, tester, 0x02)  # the full chain gets in


def test_software_version_while_booting_is_refused(
    can_bench: tuple[Simulator, str, int], vendor: Vendor
) -> None:
    _, group, port = can_bench
    with uds.connect(group, port) as client:
        client.ecu_reset(0x01)
        seen: set[int] = set()
        for _ in range(20):  # the boot takes ~0.2 s at the simulator's time scale
            try:
                uds.read(client, uds.DID_SOFTWARE_VERSION)
                break
            except NegativeResponseException as exc:
                seen.add(int(exc.response.code))
            except udsoncan.exceptions.TimeoutException:
                pass
        assert seen <= {0x22}
        assert uds.wait_application(client).version == "1.0.0"


def test_pack_current_sign_and_unit(can_bench: tuple[Simulator, str, int]) -> None:
    """DID 0x0112: int32 mA, + = charging."""
    sim, group, port = can_bench
    with uds.connect(group, port) as client:
        sim_set(sim, "--current", "-12.5")  # a 12.5 A discharge
        assert struct.unpack(">i", uds.read(client, uds.DID_PACK_CURRENT)) == (-12_500,)
        sim_set(sim, "--current", "40")  # charging
        assert struct.unpack(">i", uds.read(client, uds.DID_PACK_CURRENT)) == (40_000,)


@pytest.mark.req("SEED-SECURE-BOOT")
def test_fused_image_key_is_readable(can_bench: tuple[Simulator, str, int], vendor: Vendor) -> None:
    """DID 0x0103: the hash of the vendor's image-signing key, as imgtool's KEYHASH names
    it, so a tool can refuse a foreign-key image before it sends a byte."""
    _, group, port = can_bench
    expected = uds.key_hash((vendor.pki / "image-signing.pub").read_bytes())
    with uds.connect(group, port) as client:
        assert uds.image_keys(client) == [expected]


def test_bank_layout_is_readable(can_bench: tuple[Simulator, str, int]) -> None:
    """DID 0x0104, read from docs/uds.md alone: two banks of 256 KiB (the simulator's
    flash), each a whole number of sectors."""
    _, group, port = can_bench
    with uds.connect(group, port) as client:
        bank, sector, banks = uds.flash_layout(client)
    assert (bank, banks) == (256 * 1024, 2)
    assert sector in (8 * 1024, 128 * 1024) and bank % sector == 0
