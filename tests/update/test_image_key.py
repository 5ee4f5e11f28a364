"""The image key in the update procedure, on a virtual BMS (direct session, simulated clock).

A BMS that reports its fused image keys gets no image signed by another key (E134,
before the transfer: :mod:`tests.firmware_inputs.test_foreign_key` shows it over CAN and
RS485). A BMS that does not report them is updated as before: the report says the key
check was left to it, and its secure boot refuses a foreign-key image after the transfer.
"""

from __future__ import annotations

import dataclasses

import pytest

from bmsfw.package import generate_key
from bmsfw.protocol.session import DeviceIdentity
from bmsfw.sim import SimClock, VirtualBms
from bmsfw.sim.direct import DirectSession
from bmsfw.update.pipeline import UpdateOptions

from .conftest import Vendor
from .conftest import run_on_sim_time as _run


class _KeysNotReported(DirectSession):
    """A BMS whose firmware predates DID 0x0103 / the image_key registers."""

    def identify(self) -> DeviceIdentity:
        return dataclasses.replace(super().identify(), image_key_hashes=())


@pytest.fixture(scope="module")
def foreign(vendor: Vendor) -> bytes:
    """Signed by the vendor's manifest signer, its image by another image key."""
    other = dataclasses.replace(vendor.pki, image_signing_key=generate_key(vendor.pki.algorithm))
    return Vendor(other).release("2.0.0", 2)


@pytest.mark.req("SEED-SECURE-BOOT")
def test_reported_keys_refuse_before_the_transfer(
    bms: VirtualBms, vendor: Vendor, foreign: bytes, options: UpdateOptions, clock: SimClock
) -> None:
    stored = bms.flash.path.read_bytes()  # banks, OTP, journals: flash.bin mirrors them
    report = _run(DirectSession(bms), foreign, vendor, options, clock)
    assert report.error.code == "BMSFW-E134", report.error
    assert report.decisions.start == "refuse-image-key"
    assert not bms.transfer_status().staged  # not even the release header was sent
    assert bms.flash.path.read_bytes() == stored


@pytest.mark.req("SEED-SECURE-BOOT")
def test_unreported_keys_leave_the_check_to_the_bms(
    bms: VirtualBms, vendor: Vendor, foreign: bytes, options: UpdateOptions, clock: SimClock
) -> None:
    report = _run(_KeysNotReported(bms), foreign, vendor, options, clock)
    assert report.decisions.image_key.startswith("left to the BMS")
    assert any("image key check left to the BMS" in w for w in report.warnings)
    # today's behaviour: the whole image went over, the BMS's secure boot refused it
    assert report.outcome != "updated"
    assert report.failed_step == "device-verify"
    assert report.error.code == "BMSFW-E124"  # the BMS's own refusal, after the transfer
    assert bms.boot_status().running_version == "1.0.0"


def test_vendor_key_is_named_in_the_report(
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    report = _run(DirectSession(bms), packages["2.0.0"], vendor, options, clock)
    assert report.outcome == "updated", report.error
    assert report.decisions.image_key.startswith("signed by key")
    assert not any("image key" in w for w in report.warnings)
