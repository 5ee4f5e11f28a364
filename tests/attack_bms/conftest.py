"""Fixtures of the hostile-BMS suite: a vendor PKI and a release, and a runner that
puts the real host (``run_update`` over a real :class:`UdsSession` on python-can's
virtual bus) in front of :class:`~.hostile_can.HostileUdsBms`."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import pytest
from cryptography.hazmat.primitives import serialization

from bmsfw.package import TrustAnchors, VendorPki
from bmsfw.protocol.uds import UdsClientConfig, open_uds_session
from bmsfw.sim import DeviceSpec, FlashSpec
from bmsfw.sim.lab import (
    LabRelease,
    lab_pki,
    signed_package,
    signed_release,
    tester_for,
    write_tester_files,
)
from bmsfw.update.pipeline import UpdateOptions, run_update
from bmsfw.update.profile import (
    DEFAULT_CONFIRMATIONS,
    BootLimits,
    TransferLimits,
    UpdateProfile,
)
from bmsfw.update.report import UpdateReport

from .hostile_can import Behaviour, HostileUdsBms
from .hostile_rtu import RtuBehaviour, RtuBms

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


# --- RS485: the real `bmsfw update` (its own process) against the fake on a pty ---------

# short bounds through the product profile the CLI reads (the defaults are in docs/)
RTU_PROFILE = """\
[product]
name = "attack suite"
[preflight]
supply_window_s = 0.0
supply_samples = 2
[transfer]
rate_grace_s = 1.0
min_rate_rs485_bps = 1000.0
[boot]
boot_timeout_s = 2.0
revert_timeout_s = 2.0
"""


@dataclass
class CliAttack:
    """The outcome of `bmsfw update --json` against a hostile RS485 BMS."""

    result: subprocess.CompletedProcess[str]
    bms: RtuBms
    seconds: float
    work: Path

    @property
    def report(self) -> dict[str, Any]:
        """The saved report (the one the run wrote under the backup directory)."""
        saved = sorted((self.work / "backups" / "reports").glob("*.json"))
        assert len(saved) == 1, saved
        document: dict[str, Any] = json.loads(saved[0].read_text())
        return document

    @property
    def audit_log(self) -> Path:
        return self.work / "backups" / "audit.jsonl"

    @property
    def code(self) -> str:
        return str((self.report.get("error") or {}).get("code", ""))


@pytest.fixture(scope="session")
def rtu_release(pki: VendorPki) -> LabRelease:
    return signed_release(pki, NEW_VERSION, 2, spec=SPEC, size=4096)


@pytest.fixture
def rtu_update(pki: VendorPki, rtu_release: LabRelease, tmp_path: Path) -> Callable[..., CliAttack]:
    files = write_tester_files(pki, tmp_path / "kit")
    package = tmp_path / "kit" / "release.bmsfw"
    package.write_bytes(rtu_release.package)
    profile = tmp_path / "kit" / "profile.toml"
    profile.write_text(RTU_PROFILE)

    def run(behaviour: RtuBehaviour, *, as_json: bool = True) -> CliAttack:
        from cli_support import CONFIRM, run_bmsfw

        with RtuBms(behaviour) as bms:
            bms.new_version = NEW_VERSION + "+0"
            bms.image_size = len(rtu_release.image)
            started = time.monotonic()
            result = run_bmsfw(
                "update", "--serial", bms.port, "--unit", "1", "--timeout", "0.5",
                str(package), "--trust", str(files.trust), "--profile", str(profile),
                "--backup-dir", str(tmp_path / "backups"),
                "--tester-cert", str(files.tester_cert), "--tester-key", str(files.tester_key),
                "--operator", "attack-suite", *CONFIRM, *(["--json"] if as_json else []),
                timeout_s=60,
            )  # fmt: skip
            seconds = time.monotonic() - started
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        attack = CliAttack(result, bms, seconds, tmp_path)
        if as_json:  # stdout is exactly the saved report
            assert json.loads(result.stdout)["audit_hash"] == attack.report["audit_hash"]
        return attack

    return run
