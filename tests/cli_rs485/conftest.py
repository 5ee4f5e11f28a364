"""Fixtures: the `bmsfw` command run as a user would, against a string of virtual BMS
behind one pty (Modbus RTU), the string in its own process.

The technician's files (vendor root certificate, tester certificate and key, signed
packages) are made once per session; each test gets fresh BMS state directories.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bmsfw.device import DeviceSpec, FlashSpec, SimClock, VirtualBms
from bmsfw.device._state import bank_region
from bmsfw.device.lab import lab_pki, provision_nodes, signed_release, write_tester_files
from bmsfw.device.sim_rs485 import SimRs485Process, node_state_dir

MODEL = "BMS-16S"
HW_REV = "C"
IMAGE_SIZE = 6 * 1024
BMSFW = str(Path(sys.executable).with_name("bmsfw"))
CONFIRM = ["--confirm", "flammables-removed", "--confirm", "stable-power"]
TIME_SCALE = 20.0

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Kit:
    trust: Path
    tester_cert: Path
    tester_key: Path
    packages: dict[str, Path]
    template: Path  # a provisioned BMS running 1.0.0


SPEC = DeviceSpec(
    model=MODEL,
    hw_revision=HW_REV,
    flash=FlashSpec.small(bank_size=64 * 1024, sector_size=4096),
    transfer_block_size=512,
)


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("rs485-kit")
    pki = lab_pki()
    files = write_tester_files(pki, root)
    releases = {
        name: signed_release(pki, version, counter, spec=SPEC, size=IMAGE_SIZE)
        for name, version, counter in (("v1", "1.0.0", 1), ("v2", "2.0.0", 2))
    }
    packages: dict[str, Path] = {}
    for name, release in releases.items():
        packages[name] = root / f"{name}.bmsfw"
        packages[name].write_bytes(release.package)
    state = provision_nodes(
        root / "template", pki, releases["v1"].image, (1,), spec=SPEC, serial_format="RS4{node:07d}"
    )
    template = node_state_dir(state, 1)
    return Kit(files.trust, files.tester_cert, files.tester_key, packages, template)


@dataclass
class StringBench:
    """Virtual BMS units on one simulated RS485 bus, in their own process."""

    kit: Kit
    state_dir: Path
    work: Path
    units: tuple[int, ...]
    process: SimRs485Process | None = None

    def offline(self, unit: int) -> VirtualBms:
        """Open a unit's state in this process (only while the string is stopped)."""
        assert self.process is None
        bms = VirtualBms(node_state_dir(self.state_dir, unit), clock=SimClock())
        bms.wait_boot(30)
        return bms

    def prepare(self, unit: int, change: Callable[[VirtualBms], None]) -> None:
        """Change a unit's board while the string is down (kept in its state files)."""
        bms = self.offline(unit)
        try:
            change(bms)
        finally:
            bms.close()

    def inactive_bank(self, unit: int) -> tuple[str, str, bool]:
        """(bank, SHA-256 of its flash, transfer staged?) of a unit, read offline."""
        bms = self.offline(unit)
        try:
            status = bms.boot_status()
            bank = "B" if status.active_bank == "A" else "A"
            digest = hashlib.sha256(bytes(bms.flash.view(bank_region(bank)))).hexdigest()
            return bank, digest, bms.transfer_status().staged
        finally:
            bms.close()

    def start(self, baud_bps: int = 115_200, **line: Any) -> str:
        """Start the string; ``line``: more SimRs485Process settings (frame_gap, throttle)."""
        self.process = SimRs485Process(
            self.state_dir,
            self.units,
            baud_bps=baud_bps,
            time_scale=TIME_SCALE,
            log_file=self.work / "sim.log",
            **line,
        )
        self.process.start()
        return self.process.port

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def link_args(self, *units: int, baud: int = 115_200) -> list[str]:
        assert self.process is not None
        chosen = units or self.units
        spec = f"{min(chosen)}-{max(chosen)}" if units == () else ",".join(map(str, chosen))
        return ["--serial", self.process.port, "--unit", spec, "--baud", str(baud)]

    def update_args(self, package: str, *units: int, link: Sequence[str] = ()) -> list[str]:
        return [
            "update",
            *(link or self.link_args(*units)),
            str(self.kit.packages[package]),
            "--trust", str(self.kit.trust),
            "--backup-dir", str(self.work / "backups"),
            "--tester-cert", str(self.kit.tester_cert),
            "--tester-key", str(self.kit.tester_key),
            "--operator", "rs485-e2e",
            *CONFIRM,
        ]  # fmt: skip


@pytest.fixture
def make_string(tmp_path: Path, kit: Kit) -> Iterator[Callable[..., StringBench]]:
    benches: list[StringBench] = []

    def make(units: tuple[int, ...] = (1,)) -> StringBench:
        state = tmp_path / "state"
        for unit in units:
            target = node_state_dir(state, unit)
            shutil.copytree(kit.template, target)
            device = target / "device.json"  # each pack its own serial, as on a real string
            device.write_text(device.read_text().replace("RS40000001", f"RS4000000{unit}"))
        bench = StringBench(kit, state, tmp_path, units)
        benches.append(bench)
        return bench

    yield make
    for bench in benches:
        bench.stop()


def run_bmsfw(
    *args: str, timeout_s: float = 90.0, check: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `bmsfw ARGS` as a user would; ``check`` asserts the exit code."""
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [BMSFW, *args], capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    if check is not None:
        assert result.returncode == check, (
            f"bmsfw {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result
