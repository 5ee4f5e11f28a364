"""Fixtures for compressed, delta and encrypted transfers: a vendor, releases, small devices."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmsfw.device import DeviceSpec, FlashSpec, SimClock, VirtualBms, make_app_payload, provision
from bmsfw.device.images import APP_DESCRIPTOR_OFFSET
from bmsfw.package import (
    ComponentSource,
    HardwareCompat,
    VendorPki,
    build_release,
    create_pki,
    key_hash,
    release_header,
    sign_release,
)
from bmsfw.package._encrypt import EncPublicKey
from bmsfw.package._manifest import Manifest
from bmsfw.package._release import _Package

MODEL, HW_REV = "BMS-16S", "C"
IMAGE_SIZE = 4096


@dataclass(frozen=True)
class Release:
    version: str
    package: bytes
    header: bytes

    @property
    def manifest(self) -> Manifest:
        return Manifest.from_json_bytes(_Package(self.package).read("manifest.json", 65536))

    @property
    def stored(self) -> bytes:
        comp = self.manifest.component("app")
        return _Package(self.package).read(comp.member, comp.stored_size)


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
        if payload is None:
            payload = make_app_payload(version, size=IMAGE_SIZE)
        source = (
            ComponentSource.image("app", image)
            if image is not None
            else ComponentSource.firmware("app", payload)
        )
        unsigned = build_release(
            product="BMS-16S firmware",
            version=version,
            security_counter=counter,
            hardware=HardwareCompat(MODEL, (HW_REV,)),
            min_bootloader_version="2.0.0",
            components=[source],
            image_signing_key=self.pki.image_signing_key,
            encoding=encoding,
            delta_from=delta_from,
            encrypt_to=encrypt_to,
        )
        package = sign_release(unsigned, self.pki.signer())
        return Release(version, package, release_header(package))


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
    return Vendor(create_pki("ed25519", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1)))


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
