"""Fixtures for pipeline tests: a vendor PKI, signed releases, virtual BMS on a SimClock."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from bmsfw.package import (
    TrustAnchors,
    VendorPki,
    key_hash,
    verify_release,
)
from bmsfw.sim import DeviceSpec, FlashSpec, SimClock, VirtualBms, provision
from bmsfw.sim.direct import DirectSession
from bmsfw.sim.lab import lab_pki, signed_package
from bmsfw.update.events import Event
from bmsfw.update.pipeline import UpdateOptions, run_update
from bmsfw.update.profile import DEFAULT_CONFIRMATIONS
from bmsfw.update.report import UpdateReport

MODEL = "BMS-16S"
HW_REV = "C"
IMAGE_SIZE = 4096
SPEC = DeviceSpec(
    model=MODEL,
    hw_revision=HW_REV,
    flash=FlashSpec.small(bank_size=8 * 1024, sector_size=1024),
    transfer_block_size=512,
    watchdog_window_s=120.0,
)


@dataclass
class Vendor:
    pki: VendorPki

    def trust(self) -> TrustAnchors:
        pem = self.pki.root_certificate.public_bytes(serialization.Encoding.PEM)
        return TrustAnchors.from_root_certificate(pem)

    def release(
        self,
        version: str,
        counter: int,
        *,
        behaviour: str | None = None,
        revisions: tuple[str, ...] = (HW_REV,),
        encoding: str = "raw",
        delta_from: bytes | None = None,
        payload: bytes | None = None,
        encrypt_to: Any = None,
    ) -> bytes:
        """A signed release; ``delta_from`` (a base image) makes its app a delta patch."""
        return signed_package(
            self.pki,
            version,
            counter,
            spec=SPEC,
            size=IMAGE_SIZE,
            behaviour=behaviour,
            payload=payload,
            revisions=revisions,
            encoding=encoding,
            delta_from=delta_from,
            encrypt_to=encrypt_to,
        )


@pytest.fixture(scope="session")
def vendor() -> Vendor:
    return Vendor(lab_pki())


@pytest.fixture(scope="session")
def packages(vendor: Vendor) -> dict[str, bytes]:
    return {
        "1.0.0": vendor.release("1.0.0", 1),
        "2.0.0": vendor.release("2.0.0", 2),
        "fail-selftest": vendor.release("2.1.0", 2, behaviour="fail-selftest"),
        "never-confirm": vendor.release("2.2.0", 2, behaviour="never-confirm"),
        "rev-z": vendor.release("3.0.0", 3, revisions=("Z",)),
        "0.9.0": vendor.release("0.9.0", 0),
    }


@pytest.fixture(scope="session")
def template_device(
    tmp_path_factory: pytest.TempPathFactory, vendor: Vendor, packages: dict[str, bytes]
) -> Path:
    path = tmp_path_factory.mktemp("template") / "bms"
    image = verify_release(packages["1.0.0"], vendor.trust()).images["app"]
    provision(
        path,
        initial_image=image,
        root_key_hash=key_hash(vendor.pki.root_key),
        image_key_hash=key_hash(vendor.pki.image_signing_key),
        spec=SPEC,
        serial="SIM0000001",
    )
    return path


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def device_dir(tmp_path: Path, template_device: Path) -> Path:
    target = tmp_path / "bms"
    shutil.copytree(template_device, target)
    return target


@pytest.fixture
def open_bms(device_dir: Path, clock: SimClock) -> Callable[[], VirtualBms]:
    def opener() -> VirtualBms:
        bms = VirtualBms(device_dir, clock=clock)
        bms.wait_boot()
        return bms

    return opener


@pytest.fixture
def bms(open_bms: Callable[[], VirtualBms]) -> VirtualBms:
    return open_bms()


@pytest.fixture
def session(bms: VirtualBms) -> DirectSession:
    return DirectSession(bms)


@pytest.fixture
def options(tmp_path: Path) -> UpdateOptions:
    return UpdateOptions(
        backup_dir=tmp_path / "backups",
        confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
        audit_log=tmp_path / "backups" / "audit.jsonl",
        report_dir=tmp_path / "backups" / "reports",
        operator="tester",
    )


def run_on_sim_time(  # noqa: PLR0917 - a test helper
    session: DirectSession,
    package: bytes,
    vendor: Vendor,
    options: UpdateOptions,
    clock: SimClock,
    events: list[Event] | None = None,
    *,
    delta: bytes | None = None,
) -> UpdateReport:
    """``run_update`` on the device's simulated clock (waits and timeouts cost nothing)."""
    return run_update(
        session,
        package,
        vendor.trust(),
        options,
        sink=events.append if events is not None else None,
        sleep=clock.sleep,
        clock=clock.monotonic,
        delta=delta,
    )
