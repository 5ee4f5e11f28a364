"""Shared fixtures: PKIs are made once per session (key generation is the slow part)."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from bmsfw.package import (
    ComponentSource,
    DeviceFacts,
    HardwareCompat,
    TrustAnchors,
    VendorPki,
    build_release,
    create_pki,
    key_hash,
    sign_release,
)

HW = HardwareCompat("BMS-48V", ("B", "C"))
NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
FACTS = DeviceFacts("BMS-48V", "C", "1.2.0", security_counter=4, channel="wired")


@pytest.fixture(scope="session", params=["ed25519", "ecdsa-p256"])
def pki(request: pytest.FixtureRequest) -> VendorPki:
    return create_pki(request.param, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))


@pytest.fixture(scope="session")
def ed_pki() -> VendorPki:
    return create_pki("ed25519", now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))


@pytest.fixture(scope="session")
def firmware() -> bytes:
    return os.urandom(3000)


def make_release(pki: VendorPki, firmware: bytes, **overrides: object) -> bytes:
    args: dict[str, object] = {
        "product": "demo-bms",
        "version": "1.4.0",
        "security_counter": 5,
        "hardware": HW,
        "min_bootloader_version": "1.1.0",
        "components": [ComponentSource.firmware("app", firmware)],
        "image_signing_key": pki.image_signing_key,
        "release_notes": "notes",
        "created_at": NOW,
    }
    args.update(overrides)
    return build_release(**args)  # type: ignore[arg-type]


def trust_for(pki: VendorPki) -> TrustAnchors:
    return TrustAnchors.from_key_hashes([key_hash(pki.root_key)]).with_image_key_hashes(
        [key_hash(pki.image_signing_key)]
    )


@pytest.fixture(scope="session")
def signed(pki: VendorPki, firmware: bytes) -> bytes:
    return sign_release(make_release(pki, firmware), pki.signer())


@pytest.fixture(scope="session")
def ed_signed(ed_pki: VendorPki, firmware: bytes) -> bytes:
    return sign_release(make_release(ed_pki, firmware, encoding="raw"), ed_pki.signer())


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`bmsfw ARGV` through the real entry point in this process: (exit code, stdout, stderr)."""
    from bmsfw.cli import main

    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
