"""Fixtures: vendor PKI, tester certificate, small signed releases, provisioned BMS strings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bmsfw.package import VendorPki, create_pki
from bmsfw.protocol.session import TesterCredentials
from bmsfw.sim.bms import VirtualBms
from bmsfw.sim.flash import FlashSpec
from bmsfw.sim.lab import LabRelease, provision_nodes, signed_release, tester_for
from bmsfw.sim.sim_rs485 import SimRs485Process, node_state_dir
from bmsfw.sim.spec import DeviceSpec

KIB = 1024
IMAGE_SIZE = 16 * KIB
SPEC = DeviceSpec(flash=FlashSpec.small(bank_size=32 * KIB, sector_size=4 * KIB))
TIME_SCALE = 20.0

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

Release = LabRelease


@pytest.fixture(scope="session")
def pki() -> VendorPki:
    return create_pki("ed25519")


@pytest.fixture(scope="session")
def tester(pki: VendorPki) -> TesterCredentials:
    return tester_for(pki)


def make_release(pki: VendorPki, version: str, counter: int, *, size: int = IMAGE_SIZE) -> Release:
    """A signed raw release of ``size`` bytes (MCUboot overhead included)."""
    return signed_release(
        pki,
        version,
        counter,
        spec=SPEC,
        size=size - 1024,
        product="demo-bms",
        min_bootloader_version="1.0.0",
    )


@pytest.fixture(scope="session")
def release_v1(pki: VendorPki) -> Release:
    return make_release(pki, "1.0.0", 1)


@pytest.fixture(scope="session")
def release_v2(pki: VendorPki) -> Release:
    return make_release(pki, "1.1.0", 2)


def provision_string(
    state_dir: Path, pki: VendorPki, initial: Release, units: tuple[int, ...]
) -> Path:
    return provision_nodes(state_dir, pki, initial.image, units, spec=SPEC)


def set_line(state_dir: Path, unit: int, baud: int, *, char_timed_gap: bool) -> None:
    """Set a node's RS485 line settings (the preflight's link test compares them)."""
    bms = VirtualBms(node_state_dir(state_dir, unit))
    try:
        bms.wait_boot()
        gap = 1 if char_timed_gap else 0
        bms.write_config(replace(bms.config(), rs485_baud=baud, rs485_char_timed_gap=gap))
    finally:
        bms.close()


def break_cell_sensor(state_dir: Path, unit: int) -> None:
    """Make one node's cell-voltage self-test fail (ADC gain error beyond ±0.5 %)."""
    bms = VirtualBms(node_state_dir(state_dir, unit))
    try:
        bms.faults.adc_gain_error(0, 0.03)
    finally:
        bms.close()


@pytest.fixture
def string_of_one(tmp_path: Path, pki: VendorPki, release_v1: Release) -> Iterator[SimRs485Process]:
    state = provision_string(tmp_path / "sim", pki, release_v1, (1,))
    with SimRs485Process(state, (1,), time_scale=TIME_SCALE, log_file=tmp_path / "sim.log") as sim:
        yield sim


@pytest.fixture
def string_of_eight(
    tmp_path: Path, pki: VendorPki, release_v1: Release
) -> Iterator[SimRs485Process]:
    units = tuple(range(1, 9))
    state = provision_string(tmp_path / "sim", pki, release_v1, units)
    break_cell_sensor(state, 5)
    with SimRs485Process(state, units, time_scale=TIME_SCALE, log_file=tmp_path / "sim.log") as sim:
        yield sim
