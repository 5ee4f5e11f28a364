"""Fixtures for compressed, delta and encrypted transfers: a vendor, releases, small devices."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmsfw.package import (
    VendorPki,
    key_hash,
)
from bmsfw.package._encrypt import EncPublicKey
from bmsfw.sim import DeviceSpec, FlashSpec, SimClock, VirtualBms, make_app_payload, provision
from bmsfw.sim.images import APP_DESCRIPTOR_OFFSET
from bmsfw.sim.lab import LabRelease, lab_pki, signed_release

MODEL, HW_REV = "BMS-16S", "C"
IMAGE_SIZE = 4096


Release = LabRelease


@dataclass
class Vendor:
    pki: VendorPki

    def release(
        self,
        version: str,
        counter: int,
        *,
        encoding: str = "raw",
        delta_from: Mapping[str, bytes] | None = None,
        encrypt_to: EncPublicKey | None = None,
        image: bytes | None = None,
        payload: bytes | None = None,
    ) -> Release:
        """A signed release; ``delta_from={"app": base}`` stores the app as a patch."""
        return signed_release(
            self.pki,
            version,
            counter,
            spec=small_spec(),
            size=IMAGE_SIZE,
            payload=payload,
            image=image,
            encoding=encoding,
            delta_from=delta_from["app"] if delta_from is not None else None,
            encrypt_to=encrypt_to,
        )


def patch_release_payload(version: str, base_version: str = "1.0.0") -> bytes:
    """A patch release of ``base_version``'s firmware: same binary, new version string in
    the app descriptor, and a 24-byte bug fix, so a delta is realistically small."""
    out = bytearray(make_app_payload(base_version, size=IMAGE_SIZE))
    field = APP_DESCRIPTOR_OFFSET + 12
    out[field : field + 32] = version.encode().ljust(32, b"\0")
    out[2000:2024] = bytes(range(24))
    return bytes(out)


def small_spec() -> DeviceSpec:
    return DeviceSpec(
        model=MODEL,
        hw_revision=HW_REV,
        flash=FlashSpec.small(bank_size=8 * 1024, sector_size=1024),
        transfer_block_size=512,
        watchdog_window_s=120.0,
    )


@pytest.fixture(scope="session")
def vendor() -> Vendor:
    return Vendor(lab_pki())


@pytest.fixture(scope="session")
def v1(vendor: Vendor) -> Release:
    return vendor.release("1.0.0", 1)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, vendor: Vendor, v1: Release) -> Path:
    from bmsfw.package._release import component_image

    path = tmp_path_factory.mktemp("tpl") / "bms"
    provision(
        path,
        initial_image=component_image(v1.package),
        root_key_hash=key_hash(vendor.pki.root_key),
        image_key_hash=key_hash(vendor.pki.image_signing_key),
        spec=small_spec(),
        serial="SIM0000008",
    )
    return path


@pytest.fixture
def device_dir(tmp_path: Path, template: Path) -> Path:
    target = tmp_path / "bms"
    shutil.copytree(template, target)
    return target


def power_on(path: Path, clock: SimClock | None = None) -> VirtualBms:
    bms = VirtualBms(path, clock=clock or SimClock())
    bms.wait_boot()
    return bms
