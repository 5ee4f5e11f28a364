"""Exhaustive power-cut test, in the spirit of MCUboot's simulator.

Count the flash operations N of one complete update (header staging, erase,
transfer, activate, test boot, confirm), then for every k = 1..N repeat the
update with the power cut during operation k. After each cut the device must
boot a valid image (old or new, never none), keep configuration and
calibration, and a retried update must succeed.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from bmsfw.protocol.device_errors import PowerCutError
from bmsfw.sim import DeviceConfig, SimClock, VirtualBms

from .conftest import Release, Vendor, install

OLD, NEW = "2.0.0", "3.0.0"


def _update(bms: VirtualBms, release: Release) -> None:
    install(bms, release)
    bms.confirm()


def _complete(bms: VirtualBms, release: Release) -> None:
    """What the update pipeline does after an interruption: look, then finish."""
    status = bms.boot_status()
    if status.running_version == release.version and status.image_state == "test":
        bms.confirm()
    elif status.running_version != release.version:
        _update(bms, release)
    final = bms.boot_status()
    assert (final.running_version, final.image_state) == (release.version, "confirmed")
    assert final.security_counter == release.security_counter


@pytest.fixture(scope="module")
def releases(vendor: Vendor) -> tuple[Release, Release]:
    return vendor.release(OLD, 2), vendor.release(NEW, 3)


@pytest.fixture(scope="module")
def base_device(
    tmp_path_factory: pytest.TempPathFactory,
    template_device: Path,
    releases: tuple[Release, Release],
) -> Path:
    """A device that already took one update: OLD confirmed in bank B, 1.0.0 left in bank A,
    a non-default configuration. The update under test then has real data to erase."""
    path = tmp_path_factory.mktemp("pc") / "base"
    shutil.copytree(template_device, path)
    bms = VirtualBms(path, clock=SimClock())
    bms.wait_boot()
    _update(bms, releases[0])
    bms.write_config(DeviceConfig(capacity_ah=280.0, rs485_unit_id=7, can_bitrate_bps=250_000))
    bms.close()
    return path


@pytest.mark.req("SEED-DUAL-BANK", "SEED-INTERRUPTION", "R156-SAFE-STATE", "NIST800-193-RECOVER")
def test_exhaustive_power_cut_during_update(
    tmp_path: Path, base_device: Path, releases: tuple[Release, Release]
) -> None:
    _, new = releases
    reference = VirtualBms(base_device, clock=SimClock())
    reference.wait_boot()
    expected = reference.config_snapshot()
    reference.close()

    work = tmp_path / "count"
    shutil.copytree(base_device, work)
    bms = VirtualBms(work, clock=SimClock())
    bms.wait_boot()
    start = bms.flash_op_count
    _update(bms, new)
    n_ops = bms.flash_op_count - start
    assert n_ops >= 20  # erase of 5 sectors, 10 program runs, journals, OTP

    outcomes: dict[str, int] = {OLD: 0, NEW: 0}
    for k in range(1, n_ops + 1):
        work = tmp_path / f"cut{k}"
        shutil.copytree(base_device, work)
        clock = SimClock()
        bms = VirtualBms(work, clock=clock)
        bms.wait_boot()
        bms.faults.power_cut_at(k, seed=k)
        with pytest.raises(PowerCutError):
            _update(bms, new)
        assert bms.dead
        with pytest.raises(PowerCutError):
            bms.boot_status()

        # Power comes back.
        bms = VirtualBms(work, clock=clock)
        status = bms.wait_boot()
        assert status.run_state == "application", (k, status)
        assert status.running_version in (OLD, NEW), (k, status)
        assert bms.self_test().passed, (k, bms.self_test())
        assert bms.contactors_closed
        outcomes[status.running_version] += 1
        snapshot = bms.config_snapshot()
        assert snapshot.checksum == expected.checksum, k
        assert snapshot.config == expected.config and snapshot.calibration == expected.calibration

        _complete(bms, new)
        bms.close()
        again = VirtualBms(work, clock=clock)
        final = again.wait_boot()
        assert (final.running_version, final.image_state) == (NEW, "confirmed"), k
        assert again.config_snapshot().checksum == expected.checksum
        again.close()

    print(
        f"\npower-cut sweep: N={n_ops} flash operations per update; {n_ops} cuts, all recovered;"
        f" booted old image after {outcomes[OLD]} cuts, new after {outcomes[NEW]}"
    )
    assert outcomes[OLD] > 0 and outcomes[NEW] > 0


def test_random_power_cut_is_reproducible(
    tmp_path: Path, base_device: Path, releases: tuple[Release, Release]
) -> None:
    results = []
    for attempt in range(2):
        work = tmp_path / f"r{attempt}"
        shutil.copytree(base_device, work)
        bms = VirtualBms(work, clock=SimClock())
        bms.wait_boot()
        chosen = bms.faults.power_cut_random(20, seed=1234)
        with pytest.raises(PowerCutError):
            _update(bms, releases[1])
        results.append((chosen, (work / "flash.bin").read_bytes()))
        revived = VirtualBms(work, clock=SimClock())
        assert revived.wait_boot().running_version in (OLD, NEW)
        revived.close()
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]  # identical partial writes


def test_power_cut_during_config_write_keeps_a_valid_config(
    tmp_path: Path, base_device: Path
) -> None:
    """Config lives in a two-sector journal: a cut while writing leaves old or new, never junk."""
    new_config = DeviceConfig(capacity_ah=150.0)
    seen = set()
    for k in (1, 2):
        work = tmp_path / f"c{k}"
        shutil.copytree(base_device, work)
        bms = VirtualBms(work, clock=SimClock())
        old_config = bms.wait_boot() and bms.config()
        bms.faults.power_cut_at(k, seed=k)
        with contextlib.suppress(PowerCutError):
            bms.write_config(new_config)
        revived = VirtualBms(work, clock=SimClock())
        revived.wait_boot()
        assert revived.config() in (old_config, new_config)
        seen.add(revived.config().capacity_ah)
        revived.close()
    assert 280.0 in seen  # the first cut lands inside the write: the old record survives
