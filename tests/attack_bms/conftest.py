"""Fixtures of the hostile-BMS suite: a vendor PKI and a release, and a runner that
puts the real host (``run_update`` over a real :class:`UdsSession` on python-can's
virtual bus) in front of :class:`~.hostile_can.HostileUdsBms`."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import can
import pytest
from cryptography.hazmat.primitives import serialization

from bmsfw.package import TrustAnchors, VendorPki
from bmsfw.protocol.uds import UdsClientConfig, open_uds_session
from bmsfw.sim import DeviceSpec, FlashSpec
from bmsfw.sim.lab import lab_pki, signed_package, tester_for
from bmsfw.update.pipeline import UpdateOptions, run_update
from bmsfw.update.profile import (
    DEFAULT_CONFIRMATIONS,
    BootLimits,
    TransferLimits,
    UpdateProfile,
)
from bmsfw.update.report import UpdateReport

from .hostile_can import Behaviour, HostileUdsBms

SPEC = DeviceSpec(
    model="BMS-16S",
    hw_revision="C",
    flash=FlashSpec.small(bank_size=8 * 1024, sector_size=1024),
    transfer_block_size=512,
)
NEW_VERSION = "2.0.0"
# short bounds: every attack ends in seconds (the defaults are documented in docs/)
PROFILE = UpdateProfile(boot=BootLimits(boot_timeout_s=2.0, revert_timeout_s=2.0))
CLIENT = UdsClientConfig(p2_min_s=0.25, p2_star_s=1.0, p2_star_max_s=2.0, step_timeout_s=5.0)
_channels = itertools.count()


@dataclass
class Attack:
    """The outcome of one update against a hostile BMS."""

    report: UpdateReport
    bms: HostileUdsBms
    seconds: float

    @property
    def code(self) -> str:
        return self.report.error.code if self.report.error else ""


@pytest.fixture(scope="session")
def pki() -> VendorPki:
    return lab_pki()


@pytest.fixture(scope="session")
def package(pki: VendorPki) -> bytes:
    return signed_package(pki, NEW_VERSION, 2, spec=SPEC, size=4096)


@pytest.fixture
def attack(pki: VendorPki, package: bytes, tmp_path: Path) -> Callable[..., Attack]:
    trust = TrustAnchors.from_root_certificate(
        pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    )
    options = UpdateOptions(
        backup_dir=tmp_path / "backups",
        credentials=tester_for(pki),
        confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
        audit_log=tmp_path / "audit.jsonl",
        report_dir=tmp_path / "reports",
        operator="attack-suite",
    )

    def run(
        behaviour: Behaviour,
        *,
        pkg: bytes | None = None,
        profile_transfer: dict[str, float] | None = None,
        client: UdsClientConfig = CLIENT,
    ) -> Attack:
        channel = f"hostile-bms-{next(_channels)}"
        with HostileUdsBms(channel, behaviour) as bms:
            bms.new_version = NEW_VERSION + "+0"
            bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
            session = open_uds_session(f"virtual:{channel}", 1, config=client, bus=bus)
            started = time.monotonic()
            try:
                report = run_update(
                    session,
                    pkg or package,
                    trust,
                    options,
                    profile=dataclasses.replace(
                        PROFILE, transfer=TransferLimits(**(profile_transfer or {}))
                    ),
                    sleep=lambda s: None,
                )
            finally:
                session.close()
                bus.shutdown()
            return Attack(report, bms, time.monotonic() - started)

    return run
