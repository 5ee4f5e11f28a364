"""What the agent suites against our fleet server (tests/fleet_e2e) and against the
hostile server (tests/attack_server) share: the vendor of the test releases, and a
package a compromised server could offer that another vendor signed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from bmsfw.package import (
    ComponentSource,
    HardwareCompat,
    VendorPki,
    build_release,
    create_pki,
    sign_release,
)
from bmsfw.sim import DeviceSpec, make_app_payload
from bmsfw.sim.lab import lab_pki, signed_package

MODEL = "BMS-16S"  # the virtual BMS's default DeviceSpec
HW_REV = "C"
IMAGE_SIZE = 3 * 1024


@dataclass(frozen=True)
class Vendor:
    pki: VendorPki
    root_pem: bytes

    @classmethod
    def lab(cls) -> Vendor:
        """A fresh vendor PKI (backdated, see ``lab_pki``) and its root certificate."""
        pki = lab_pki()
        return cls(pki, pki.root_certificate.public_bytes(serialization.Encoding.PEM))

    def release(self, version: str, counter: int, **kwargs: Any) -> bytes:
        return signed_package(
            self.pki,
            version,
            counter,
            spec=DeviceSpec(model=MODEL, hw_revision=HW_REV),
            size=IMAGE_SIZE,
            **kwargs,
        )


def foreign_release(version: str, counter: int) -> bytes:
    """A well-formed release for the test BMS, signed by another vendor's fresh PKI."""
    attacker = create_pki("ed25519")
    return sign_release(
        build_release(
            product="BMS-16S firmware",
            version=version,
            security_counter=counter,
            hardware=HardwareCompat(MODEL, (HW_REV,)),
            min_bootloader_version="2.0.0",
            components=[ComponentSource("app", make_app_payload(version, size=IMAGE_SIZE))],
            image_signing_key=attacker.image_signing_key,
            encoding="raw",
        ),
        attacker.signer(),
    )
