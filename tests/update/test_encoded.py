"""The pipeline sends what the package stores (compressed, delta) and picks delta or full."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from bmsfw.package import Component, Manifest, decode_header, release_header, verify_release
from bmsfw.sim import SimClock, VirtualBms, make_app_payload
from bmsfw.sim.direct import DirectSession
from bmsfw.sim.images import APP_DESCRIPTOR_OFFSET
from bmsfw.update.events import Event, TransferProgress
from bmsfw.update.pipeline import UpdateOptions
from bmsfw.update.report import render_text

from .conftest import IMAGE_SIZE, Vendor
from .conftest import run_on_sim_time as _update


def _app(package: bytes) -> Component:
    return Manifest.from_json_bytes(decode_header(release_header(package)).manifest).component(
        "app"
    )


def _patch_payload(version: str) -> bytes:
    """1.0.0's firmware with a new version string and a small fix: a realistic patch release."""
    out = bytearray(make_app_payload("1.0.0", size=IMAGE_SIZE))
    field = APP_DESCRIPTOR_OFFSET + 12
    out[field : field + 32] = version.encode().ljust(32, b"\0")
    out[2000:2024] = bytes(range(24))
    return bytes(out)


@pytest.mark.parametrize("encoding", ["zstd", "lz4", "heatshrink", "lzma2thumb"])
def test_compressed_release_goes_over_as_stored_bytes(
    *,
    encoding: str,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    package = vendor.release("2.0.0", 2, encoding=encoding)
    component = _app(package)
    stored, image = component.stored_size, component.image_size
    assert stored < image
    events: list[Event] = []
    report = _update(session, package, vendor, options, clock, events=events)
    assert report.outcome == "updated", report.error
    status = bms.boot_status()
    assert (status.running_version, status.image_state) == ("2.0.0", "confirmed")
    # progress, totals and the report count the stored bytes that went over
    progress = [e for e in events if isinstance(e, TransferProgress)]
    assert {e.total for e in progress} == {stored}
    assert progress[-1].offset == stored
    assert report.transfer.total == report.transfer.bytes_sent == stored
    assert report.transfer.encoding == encoding
    assert report.transfer.image_bytes == image
    assert report.package.payload == "full"
    assert f"{stored}/{stored} bytes {encoding} (image {image} bytes)" in render_text(report)
    # the bank holds the decoded image the manifest names
    assert bms.bank_info(status.active_bank).valid


def test_delta_is_sent_when_the_device_runs_its_base(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    base = verify_release(packages["1.0.0"], vendor.trust()).image("app")
    full = vendor.release("1.0.1", 1, payload=_patch_payload("1.0.1"))
    delta = vendor.release("1.0.1", 1, payload=_patch_payload("1.0.1"), delta_from=base)
    patch = _app(delta)
    assert patch.is_delta
    report = _update(session, full, vendor, options, clock, delta=delta)
    assert report.outcome == "updated", report.error
    assert bms.boot_status().running_version == "1.0.1"
    stored = patch.stored_size
    digest = hashlib.sha256(base).hexdigest()
    assert report.package.payload == "delta"
    assert report.package.payload_reason == (
        f"delta {stored} B against base {digest[:16]}…: device runs that base"
    )
    assert report.package.payload_sha256 == hashlib.sha256(delta).hexdigest()
    assert report.transfer.total == report.transfer.bytes_sent == stored
    assert stored * 10 < len(base)
    assert report.transfer.encoding.startswith("delta")
    assert f"sent:            delta {stored} B" in render_text(report)


def test_delta_for_another_base_falls_back_to_the_full_image(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    running = verify_release(packages["1.0.0"], vendor.trust()).image("app")
    other_base = verify_release(packages["0.9.0"], vendor.trust()).image("app")
    full = vendor.release("1.0.1", 1, payload=_patch_payload("1.0.1"), encoding="zstd")
    delta = vendor.release("1.0.1", 1, payload=_patch_payload("1.0.1"), delta_from=other_base)
    flash_ops = bms.flash_op_count
    report = _update(session, full, vendor, options, clock, delta=delta)
    assert report.outcome == "updated", report.error
    assert bms.boot_status().running_version == "1.0.1"
    assert bms.flash_op_count > flash_ops
    actual = hashlib.sha256(running).hexdigest()
    base = hashlib.sha256(other_base).hexdigest()
    reason = (
        f"fell back to full image: device runs 1.0.0 with digest {actual[:16]}…, "
        f"delta base is {base[:16]}…"
    )
    assert report.package.payload == "full"
    assert report.package.payload_reason == reason
    assert reason in report.warnings
    assert report.package.payload_sha256 == hashlib.sha256(full).hexdigest()
    assert report.transfer.total == _app(full).stored_size
    assert report.transfer.encoding == "zstd"
    assert f"sent:            {reason}" in render_text(report)


def test_delta_of_another_release_is_refused_before_anything_is_written(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    packages: dict[str, bytes],
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    base = verify_release(packages["1.0.0"], vendor.trust()).image("app")
    delta = vendor.release("1.0.1", 1, payload=_patch_payload("1.0.1"), delta_from=base)
    flash_ops = bms.flash_op_count
    report = _update(session, packages["2.0.0"], vendor, options, clock, delta=delta)
    assert report.outcome == "refused"
    assert report.failed_step == "verify-package"
    assert report.error.code == "BMSFW-E001"
    assert "delta package is BMS-16S firmware 1.0.1" in report.error.message
    assert bms.flash_op_count == flash_ops
    # and a full package given as the "delta"
    report = _update(session, packages["2.0.0"], vendor, options, clock, delta=packages["2.0.0"])
    assert report.outcome == "refused"
    assert "not a delta" in report.error.message
    assert bms.flash_op_count == flash_ops


@pytest.mark.parametrize("cut_at", [3, 4])
def test_interrupted_encoded_transfer_restarts_from_zero(
    *,
    cut_at: int,
    open_bms: Callable[[], VirtualBms],
    vendor: Vendor,
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    package = vendor.release("2.0.0", 2, encoding="zstd")
    stored = _app(package).stored_size
    bms = open_bms()
    bms.faults.power_cut_at(cut_at)
    report = _update(DirectSession(bms), package, vendor, options, clock)
    assert report.outcome == "paused"
    assert report.error.code == "BMSFW-E501"
    assert 0 < report.transfer.offset < stored

    bms = open_bms()  # power back: the old image runs, the bank holds part of the new one
    assert bms.boot_status().running_version == "1.0.0"
    assert bms.transfer_status().contiguous_bytes > 0
    again = _update(DirectSession(bms), package, vendor, options, clock)
    assert again.outcome == "updated", again.error
    assert again.transfer.resumed_from == 0
    assert again.transfer.bytes_sent == stored
    assert any("cannot resume" in w and "from byte 0" in w for w in again.warnings)
    assert bms.boot_status().running_version == "2.0.0"


def test_every_device_side_reports_the_same_image_digest(
    *, bms: VirtualBms, vendor: Vendor, packages: dict[str, bytes]
) -> None:
    """DirectSession, UDS DID 0x0102 and Modbus ``image_sha256`` agree with the base digest."""
    from bmsfw.link import node_address
    from bmsfw.protocol.modbus import codec
    from bmsfw.protocol.modbus.registers import INPUT
    from bmsfw.sim.modbus_server import ModbusBmsNode
    from bmsfw.sim.uds_server import UdsServer

    expected = hashlib.sha256(verify_release(packages["1.0.0"], vendor.trust()).image("app"))
    assert DirectSession(bms).read_image_digest() == expected.digest()
    uds = UdsServer(bms, node_address(1))
    assert uds.handle(b"\x22\x01\x02") == b"\x62\x01\x02" + expected.digest()
    node = ModbusBmsNode(bms, 1)
    regs = node.read_input(INPUT.IMAGE_SHA256, 16)
    assert codec.registers_to_bytes(regs) == expected.digest()


def test_encrypted_release_goes_over_as_ciphertext_and_runs(
    *,
    session: DirectSession,
    bms: VirtualBms,
    vendor: Vendor,
    options: UpdateOptions,
    clock: SimClock,
) -> None:
    from bmsfw.package._encrypt import generate_encryption_key
    from bmsfw.sim._stream_decode import fuse_encryption_key

    device_key = generate_encryption_key("ecies-x25519")
    package = vendor.release("2.0.0", 2, encoding="zstd", encrypt_to=device_key.public_key())
    # a BMS without the device-class key refuses at prepare: nothing erased or written
    flash_ops = bms.flash_op_count
    report = _update(session, package, vendor, options, clock)
    assert (report.outcome, report.failed_step) == ("refused", "transfer")
    assert report.error.code == "BMSFW-E144"
    assert bms.boot_status().running_version == "1.0.0"
    assert bms.bank_info("B").state == "empty"
    assert bms.flash_op_count == flash_ops
    fuse_encryption_key(bms, device_key)
    report = _update(session, package, vendor, options, clock)
    assert report.outcome == "updated", report.error
    # the BMS decrypted into its bank: its digest is the manifest's signed decrypted one
    component = _app(package)
    assert component.decrypted_sha256 and component.decrypted_sha256 != component.image_sha256
    assert bms.image_digest() == component.decrypted_sha256
    assert report.decisions.installed_reason.startswith("active image digest matches")
    assert report.transfer.encoding == "zstd+encrypted ecies-x25519"
    assert report.transfer.bytes_sent == _app(package).stored_size
    assert bms.boot_status().running_version == "2.0.0"
