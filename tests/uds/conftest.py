"""Fixtures: a vendor PKI, a tester certificate, signed releases, provisioned virtual BMS nodes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bmsfw.package import VendorPki, create_pki
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.sim.flash import FlashSpec
from bmsfw.sim.lab import LabRelease, signed_release, tester_for, unique_multicast_link
from bmsfw.sim.lab import provision_nodes as _provision_nodes
from bmsfw.sim.spec import DeviceSpec

KIB = 1024
IMAGE_SIZE = 32 * KIB
SPEC = DeviceSpec(flash=FlashSpec.small(bank_size=64 * KIB, sector_size=4 * KIB))

Release = LabRelease
unique_link = unique_multicast_link


@pytest.fixture(scope="session")
def pki() -> VendorPki:
    return create_pki("ed25519")


@pytest.fixture(scope="session")
def tester(pki: VendorPki) -> Credentials:
    return tester_for(pki)


def make_release(
    pki: VendorPki,
    version: str,
    counter: int,
    *,
    size: int = IMAGE_SIZE,
    encoding: str = "raw",
    delta_from: bytes | None = None,
    payload: bytes | None = None,
) -> Release:
    """A signed release of ``size`` bytes (MCUboot overhead included); ``delta_from`` (a
    base image) stores the app as a detools patch."""
    return signed_release(
        pki,
        version,
        counter,
        spec=SPEC,
        size=size - 1024,
        payload=payload,
        encoding=encoding,
        delta_from=delta_from,
        product="demo-bms",
        min_bootloader_version="1.0.0",
    )


@pytest.fixture(scope="session")
def release_v1(pki: VendorPki) -> Release:
    return make_release(pki, "1.0.0", 1)


@pytest.fixture(scope="session")
def release_v2(pki: VendorPki) -> Release:
    return make_release(pki, "1.1.0", 2)


def provision_nodes(
    state_dir: Path, pki: VendorPki, initial: Release, nodes: tuple[int, ...] = (1,)
) -> Path:
    return _provision_nodes(state_dir, pki, initial.image, nodes, spec=SPEC)


@pytest.fixture
def state_dir(tmp_path: Path, pki: VendorPki, release_v1: Release) -> Path:
    return provision_nodes(tmp_path / "sim", pki, release_v1)


NOW = dt.datetime.now(dt.UTC)
