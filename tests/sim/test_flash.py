"""Flash semantics, the power-cut choke point, journals, OTP counter, images, timing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bmsfw.protocol.device_errors import EraseNeededError, FlashProgramError, PowerCutError
from bmsfw.sim import FlashSpec, SimClock, VirtualBms, find_app_descriptor, make_app_payload
from bmsfw.sim._journal import Journal
from bmsfw.sim.flash import Flash, PowerCutInjector
from bmsfw.sim.otp import Otp

from .conftest import Release


@pytest.fixture
def flash(tmp_path: Path) -> Flash:
    spec = FlashSpec.small(bank_size=4096, sector_size=1024)
    Flash.create_blank(tmp_path / "f.bin", spec)
    return Flash(tmp_path / "f.bin", spec, SimClock(), PowerCutInjector())


def test_program_needs_erased_flash_and_equal_bytes_are_free(flash: Flash) -> None:
    flash.program("bank_a", 8, b"\x12\x34")
    ops = flash.op_count
    flash.program("bank_a", 8, b"\x12\x34")  # same data again: no operation
    assert flash.op_count == ops
    with pytest.raises(EraseNeededError):
        flash.program("bank_a", 8, b"\x00\x00")
    flash.erase_sector("bank_a", 0)
    flash.program("bank_a", 8, b"\x00\x00")
    assert flash.read("bank_a", 8, 2) == b"\x00\x00"


def test_timing_follows_the_spec(tmp_path: Path) -> None:
    spec = FlashSpec.stm32f4_like(bank_size=256 * 1024)
    Flash.create_blank(tmp_path / "f.bin", spec)
    clock = SimClock()
    flash = Flash(tmp_path / "f.bin", spec, clock)
    flash.erase_sector("bank_a", 0)  # one 128 KiB sector: about one second
    assert 0.9 < clock.monotonic() < 1.1
    t0 = clock.monotonic()
    flash.program("bank_a", 0, b"\0" * 4096)  # 512 double words at 16 µs
    assert clock.monotonic() - t0 == pytest.approx(512 * 16e-6)
    flash.slow_factor = 10.0
    t0 = clock.monotonic()
    flash.erase_sector("bank_a", 1)
    assert clock.monotonic() - t0 > 9.0


def test_power_cut_leaves_a_partial_write_and_kills_the_flash(flash: Flash, tmp_path: Path) -> None:
    flash.power.arm_at(1, seed=3)
    with pytest.raises(PowerCutError):
        flash.program("bank_a", 0, bytes(range(256)) * 4)
    assert flash.dead
    with pytest.raises(PowerCutError):
        flash.read("bank_a", 0, 4)
    on_disk = (tmp_path / "f.bin").read_bytes()
    region = flash.spec.region("bank_a")
    written = on_disk[region.offset : region.offset + 1024]
    intended = bytes(range(256)) * 4
    assert written != intended  # never the whole operation
    prefix = next(i for i in range(1024) if written[i] != intended[i])
    assert written[:prefix] == intended[:prefix]
    assert set(written[prefix:]) == {0xFF}  # the rest was never programmed


def test_journal_survives_a_cut_at_every_operation(tmp_path: Path) -> None:
    spec = FlashSpec.small()
    path = tmp_path / "j.bin"
    Flash.create_blank(path, spec)
    flash = Flash(path, spec, SimClock())
    journal = Journal(flash, "config")
    for i in range(200):  # fills sector 0, switches to sector 1, and back
        journal.write(f"value-{i}".encode() * 20)
    flash.close()
    pristine = path.read_bytes()
    for k in (1, 2):
        for seed in range(8):
            path.write_bytes(pristine)
            flash = Flash(path, spec, SimClock(), PowerCutInjector())
            journal = Journal(flash, "config")
            flash.power.arm_at(k, seed=seed)
            try:
                for j in range(40):
                    journal.write(f"next-{j}".encode() * 20)
            except PowerCutError:
                pass
            flash.close()
            again = Journal(Flash(path, spec, SimClock()), "config")
            value = again.read()
            assert value is not None and (value.startswith((b"value-199", b"next-")))


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_otp_counter_is_monotonic_and_cannot_be_erased(flash: Flash) -> None:
    otp = Otp(flash)
    otp.fuse(root_key_hash=b"\1" * 32, image_key_hash=b"\2" * 32, security_counter=3)
    assert otp.locked and otp.security_counter == 3
    assert otp.raise_security_counter(13) and otp.security_counter == 13
    assert not otp.raise_security_counter(5) and otp.security_counter == 13
    with pytest.raises(FlashProgramError):
        flash.erase_sector("otp", 0)
    with pytest.raises(FlashProgramError):
        flash.program("otp", 0, b"\xff")  # bits cannot go back to 1
    flash.power.arm_at(1, seed=1)
    with pytest.raises(PowerCutError):
        otp.raise_security_counter(200)


def test_app_payload_is_deterministic_and_carries_marker() -> None:
    a = make_app_payload("1.2.3", size=8192, behaviour="boot-loop")
    assert a == make_app_payload("1.2.3", size=8192, behaviour="boot-loop")
    assert len(a) == 8192 and a[:4] == (0x2002_0000).to_bytes(4, "little")
    assert int.from_bytes(a[4:8], "little") & 1  # Thumb reset handler
    desc = find_app_descriptor(a)
    assert desc is not None and (desc.version, desc.behaviour) == ("1.2.3", "boot-loop")
    with pytest.raises(ValueError):
        make_app_payload("1.0.0", behaviour="explode")


def test_resume_after_power_cut_mid_transfer(
    tmp_path: Path, device_dir: Path, release_v2: Release
) -> None:
    clock = SimClock()
    bms = VirtualBms(device_dir, clock=clock)
    bms.wait_boot()
    image = release_v2.image
    bms.begin_update(release_v2.header)
    bms.erase_inactive()
    for offset in range(0, 2048, 512):
        bms.write_inactive(offset, image[offset : offset + 512])
    status = bms.transfer_status()
    assert status.contiguous_bytes == 2048 and status.blocks_written[:5] == (
        True,
        True,
        True,
        True,
        False,
    )
    bms.faults.power_cut_at(1, seed=9)
    with pytest.raises(PowerCutError):
        bms.write_inactive(2048, image[2048:2560])
    bms = VirtualBms(device_dir, clock=clock)
    bms.wait_boot()
    # Same header again: the device resumes and says where to continue.
    status = bms.begin_update(release_v2.header)
    assert status.erased and 1024 <= status.contiguous_bytes <= 2048
    for offset in range(status.contiguous_bytes, len(image), 512):
        bms.write_inactive(offset, image[offset : offset + 512])
    assert bms.transfer_status().missing_ranges == ()
    bms.verify_inactive()
    bms.activate()
    bms.reset()
    assert bms.wait_boot().running_version == "2.0.0"


def test_state_directory_is_a_copyable_device(tmp_path: Path, device_dir: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(device_dir, clone)
    a = VirtualBms(device_dir, clock=SimClock())
    b = VirtualBms(clone, clock=SimClock())
    assert a.wait_boot() == b.wait_boot()
    assert a.identity() == b.identity()


def test_power_cut_in_the_final_block_is_resent_not_trusted(
    tmp_path: Path, device_dir: Path, release_v2: Release
) -> None:
    # Regression: a cut while programming the image's last block left a partial block
    # that the device counted as written after reboot, so verify failed (E205).
    clock = SimClock()
    bms = VirtualBms(device_dir, clock=clock)
    bms.wait_boot()
    image = release_v2.image
    block = 512
    last = (len(image) - 1) // block * block
    bms.begin_update(release_v2.header)
    bms.erase_inactive()
    for offset in range(0, last, block):
        bms.write_inactive(offset, image[offset : offset + block])
    bms.faults.power_cut_at(1, seed=3)
    with pytest.raises(PowerCutError):
        bms.write_inactive(last, image[last:])
    bms = VirtualBms(device_dir, clock=clock)
    bms.wait_boot()
    status = bms.begin_update(release_v2.header)
    assert status.contiguous_bytes < len(image), "a partly programmed final block was trusted"
    for offset in range(status.contiguous_bytes, len(image), block):
        bms.write_inactive(offset, image[offset : offset + block])
    bms.verify_inactive()
    bms.activate()
    bms.reset()
    assert bms.wait_boot().running_version == "2.0.0"
