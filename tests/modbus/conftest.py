"""Fixtures: vendor PKI, tester certificate, small signed releases, provisioned BMS strings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmsfw.device.bms import VirtualBms
from bmsfw.device.flash import FlashSpec
from bmsfw.device.images import make_app_payload
from bmsfw.device.provision import provision
from bmsfw.device.sim_rs485 import SimRs485Process, node_state_dir
from bmsfw.device.spec import DeviceSpec
from bmsfw.package import (
    ComponentSource,
    HardwareCompat,
    TrustAnchors,
    VendorPki,
    build_release,
    create_pki,
    key_hash,
    release_header,
    sign_release,
    verify_release,
)
from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.uds import issue_tester_certificate, tester_credentials

KIB = 1024
IMAGE_SIZE = 16 * KIB
SPEC = DeviceSpec(flash=FlashSpec.small(bank_size=32 * KIB, sector_size=4 * KIB))
TIME_SCALE = 20.0

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Release:
    version: str
    package: bytes
    header: bytes
    image: bytes


@pytest.fixture(scope="session")
def pki() -> VendorPki:
    return create_pki("ed25519")


@pytest.fixture(scope="session")
def tester(pki: VendorPki) -> TesterCredentials:
    key, cert = issue_tester_certificate(pki.intermediate_key, pki.intermediate_certificate)
    return tester_credentials(key, cert, [pki.intermediate_certificate, pki.root_certificate])


def make_release(pki: VendorPki, version: str, counter: int, *, size: int = IMAGE_SIZE) -> Release:
    payload = make_app_payload(version, size=size - 1024)
    package = sign_release(
        build_release(
            product="demo-bms",
            version=version,
            security_counter=counter,
            hardware=HardwareCompat(SPEC.model, (SPEC.hw_revision,)),
            min_bootloader_version="1.0.0",
            components=[ComponentSource.firmware("app", payload)],
            image_signing_key=pki.image_signing_key,
            encoding="raw",
        ),
        pki.signer(),
    )
    trust = TrustAnchors.from_key_hashes([key_hash(pki.root_key)]).with_image_key_hashes(
        [key_hash(pki.image_signing_key)]
    )
    image = verify_release(package, trust, None).image("app")
    return Release(version, package, release_header(package), image)


@pytest.fixture(scope="session")
def release_v1(pki: VendorPki) -> Release:
    return make_release(pki, "1.0.0", 1)


@pytest.fixture(scope="session")
def release_v2(pki: VendorPki) -> Release:
    return make_release(pki, "1.1.0", 2)


def provision_string(
    state_dir: Path, pki: VendorPki, initial: Release, units: tuple[int, ...]
) -> Path:
    for unit in units:
        provision(
            node_state_dir(state_dir, unit),
            initial_image=initial.image,
            root_key_hash=key_hash(pki.root_key),
            image_key_hash=key_hash(pki.image_signing_key),
            spec=SPEC,
            serial=f"BMS{unit:07d}",
        )
    return state_dir


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
