"""Fixtures: a vendor PKI, a tester certificate, signed releases, provisioned virtual BMS nodes."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmsfw.device.flash import FlashSpec
from bmsfw.device.images import make_app_payload
from bmsfw.device.provision import provision
from bmsfw.device.sim_can import node_state_dir
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
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds import issue_tester_certificate, stored_component, tester_credentials

KIB = 1024
IMAGE_SIZE = 32 * KIB
SPEC = DeviceSpec(flash=FlashSpec.small(bank_size=64 * KIB, sector_size=4 * KIB))
_ports = itertools.count(0)


@dataclass(frozen=True)
class Release:
    version: str
    package: bytes
    header: bytes
    image: bytes
    stored: bytes = b""  # the app component as the package stores it


def unique_link(*extra: str) -> str:
    """A udp_multicast link no other test (or test run) shares."""
    n = next(_ports)
    pid = os.getpid()
    group = f"239.77.{pid % 250}.{n % 250 + 1}"
    port = 40000 + (pid * 7 + n) % 20000
    return ",".join([f"udp_multicast:{group}", f"port={port}", *extra])


@pytest.fixture(scope="session")
def pki() -> VendorPki:
    return create_pki("ed25519")


@pytest.fixture(scope="session")
def tester(pki: VendorPki) -> Credentials:
    key, cert = issue_tester_certificate(pki.intermediate_key, pki.intermediate_certificate)
    return tester_credentials(key, cert, [pki.intermediate_certificate, pki.root_certificate])


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
    """A signed release; ``delta_from`` (a base image) stores the app as a detools patch."""
    if payload is None:
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
            encoding=encoding,
            delta_from={"app": delta_from} if delta_from is not None else None,
        ),
        pki.signer(),
    )
    trust = TrustAnchors.from_key_hashes([key_hash(pki.root_key)]).with_image_key_hashes(
        [key_hash(pki.image_signing_key)]
    )
    verified = verify_release(package, trust, None)
    # a delta's image cannot be rebuilt on the host (no base): its transfer payload is the
    # stored patch, and ``image`` stays empty
    image = verified.images.get("app", b"")
    stored = stored_component(package, verified.manifest)
    return Release(version, package, release_header(package), image, stored)


@pytest.fixture(scope="session")
def release_v1(pki: VendorPki) -> Release:
    return make_release(pki, "1.0.0", 1)


@pytest.fixture(scope="session")
def release_v2(pki: VendorPki) -> Release:
    return make_release(pki, "1.1.0", 2)


def provision_nodes(
    state_dir: Path, pki: VendorPki, initial: Release, nodes: tuple[int, ...] = (1,)
) -> Path:
    for node in nodes:
        provision(
            node_state_dir(state_dir, node),
            initial_image=initial.image,
            root_key_hash=key_hash(pki.root_key),
            image_key_hash=key_hash(pki.image_signing_key),
            spec=SPEC,
            serial=f"BMS{node:07d}",
        )
    return state_dir


@pytest.fixture
def state_dir(tmp_path: Path, pki: VendorPki, release_v1: Release) -> Path:
    return provision_nodes(tmp_path / "sim", pki, release_v1)


NOW = dt.datetime.now(dt.UTC)
