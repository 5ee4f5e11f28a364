"""Shared fixtures: a vendor PKI, signed releases built with the package module, devices."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from cryptography.hazmat.primitives import serialization

from bmsfw.package import (
    TrustAnchors,
    VendorPki,
    key_hash,
)
from bmsfw.sim import DeviceSpec, FlashSpec, SimClock, VirtualBms, provision
from bmsfw.sim.lab import LabRelease, lab_pki, signed_release

MODEL = "BMS-16S"
HW_REV = "C"
IMAGE_SIZE = 4096


Release = LabRelease


@dataclass
class Vendor:
    pki: VendorPki

    @property
    def root_key_hash(self) -> bytes:
        return key_hash(self.pki.root_key)

    @property
    def image_key_hash(self) -> bytes:
        return key_hash(self.pki.image_signing_key)

    def trust(self) -> TrustAnchors:
        pem = self.pki.root_certificate.public_bytes(serialization.Encoding.PEM)
        return TrustAnchors.from_root_certificate(pem)

    def release(
        self,
        version: str,
        security_counter: int,
        *,
        behaviour: str | None = None,
        size: int = IMAGE_SIZE,
        revisions: tuple[str, ...] = (HW_REV,),
        safety_class: Literal["standard", "safety-critical"] = "standard",
        pki: VendorPki | None = None,
    ) -> Release:
        """A signed release; ``pki`` signs it with another vendor's keys."""
        return signed_release(
            pki or self.pki,
            version,
            security_counter,
            spec=small_spec(),
            size=size,
            behaviour=behaviour,
            revisions=revisions,
            safety_class=safety_class,
        )


def small_spec(**overrides: object) -> DeviceSpec:
    """Small sectors and banks so exhaustive power-cut runs stay fast."""
    base: dict[str, object] = {
        "model": MODEL,
        "hw_revision": HW_REV,
        "flash": FlashSpec.small(bank_size=8 * 1024, sector_size=1024),
        "transfer_block_size": 512,
        "watchdog_window_s": 120.0,
    }
    base.update(overrides)
    return DeviceSpec(**base)  # type: ignore[arg-type]


def _pki() -> VendorPki:
    return lab_pki()


@pytest.fixture(scope="session")
def vendor() -> Vendor:
    return Vendor(_pki())


@pytest.fixture(scope="session")
def other_vendor() -> Vendor:
    return Vendor(_pki())


@pytest.fixture(scope="session")
def release_v1(vendor: Vendor) -> Release:
    return vendor.release("1.0.0", 1)


@pytest.fixture(scope="session")
def release_v2(vendor: Vendor) -> Release:
    return vendor.release("2.0.0", 2)


@pytest.fixture(scope="session")
def template_device(
    tmp_path_factory: pytest.TempPathFactory, vendor: Vendor, release_v1: Release
) -> Path:
    path = tmp_path_factory.mktemp("template") / "bms"
    provision(
        path,
        initial_image=release_v1.image,
        root_key_hash=vendor.root_key_hash,
        image_key_hash=vendor.image_key_hash,
        spec=small_spec(),
        serial="SIM0000001",
    )
    return path


@pytest.fixture
def device_dir(tmp_path: Path, template_device: Path) -> Path:
    """A fresh copy of the provisioned device (copying beats re-provisioning for speed)."""
    target = tmp_path / "bms"
    shutil.copytree(template_device, target)
    return target


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def open_device(device_dir: Path, clock: SimClock) -> Callable[[], VirtualBms]:
    def opener() -> VirtualBms:
        bms = VirtualBms(device_dir, clock=clock)
        bms.wait_boot()
        return bms

    return opener


@pytest.fixture
def bms(open_device: Callable[[], VirtualBms]) -> VirtualBms:
    return open_device()


def install(bms: VirtualBms, release: Release, *, chunk: int = 512, channel: str = "wired") -> None:
    """The wired update up to and including the reset (not the confirm)."""
    bms.begin_update(release.header, channel=channel)  # type: ignore[arg-type]
    bms.erase_inactive()
    for offset in range(0, len(release.image), chunk):
        bms.write_inactive(offset, release.image[offset : offset + chunk])
    bms.verify_inactive()
    bms.activate()
    bms.reset()
    bms.wait_boot()
