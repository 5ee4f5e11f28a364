"""End-to-end fixtures: run the `bmsfw` command against virtual BMS processes over CAN.

Everything a technician would have on disk is made once per session (vendor root
certificate, tester certificate, signed packages); each test gets fresh BMS state
directories and its own multicast port, and the simulator runs in its own process
(udp_multicast), so killing it is a real power loss.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmsfw.device import (
    DeviceSpec,
    FlashSpec,
    SimClock,
    VirtualBms,
)
from bmsfw.device.lab import (
    lab_pki,
    provision_nodes,
    signed_release,
    unique_multicast_link,
    write_tester_files,
)
from bmsfw.device.sim_can import SimCanProcess, node_state_dir

MODEL = "BMS-16S"
HW_REV = "C"
IMAGE_SIZE = 4096
BMSFW = str(Path(sys.executable).with_name("bmsfw"))
CONFIRM = ["--confirm", "flammables-removed", "--confirm", "stable-power"]


@dataclass(frozen=True)
class Kit:
    """The technician's files."""

    root: Path
    trust: Path
    tester_cert: Path
    tester_key: Path
    packages: dict[str, Path]
    template: Path  # a provisioned BMS running 1.0.0


SPEC = DeviceSpec(
    model=MODEL,
    hw_revision=HW_REV,
    flash=FlashSpec.small(bank_size=128 * 1024, sector_size=8192),
    transfer_block_size=512,
)


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("kit")
    pki = lab_pki()
    files = write_tester_files(pki, root)
    releases = {
        name: signed_release(pki, version, counter, spec=SPEC, size=size, behaviour=behaviour)
        for name, version, counter, behaviour, size in (
            ("v1", "1.0.0", 1, None, IMAGE_SIZE),
            ("v2", "2.0.0", 2, None, IMAGE_SIZE),
            ("fail-selftest", "2.1.0", 2, "fail-selftest", IMAGE_SIZE),
            ("never-confirm", "2.2.0", 2, "never-confirm", IMAGE_SIZE),
            # Big enough that the transfer takes a moment, so a test can cut the power in it.
            ("v2-big", "2.0.0", 2, None, 96 * 1024),
        )
    }
    packages: dict[str, Path] = {}
    for name, release in releases.items():
        packages[name] = root / f"{name}.bmsfw"
        packages[name].write_bytes(release.package)
    state = provision_nodes(
        root / "template", pki, releases["v1"].image, (1,), spec=SPEC, serial_format="SIM{node:07d}"
    )
    template = node_state_dir(state, 1)
    return Kit(root, files.trust, files.tester_cert, files.tester_key, packages, template)


@dataclass
class Bench:
    """Virtual BMS nodes on one CAN link, in their own process."""

    kit: Kit
    state_dir: Path
    work: Path
    link: str
    nodes: tuple[int, ...]
    process: SimCanProcess | None = None

    def node_dir(self, node: int) -> Path:
        return node_state_dir(self.state_dir, node)

    def prepare(self, node: int, change: Callable[[VirtualBms], None]) -> None:
        """Change the board of a node while its process is down (saved in board.json)."""
        assert self.process is None
        bms = VirtualBms(self.node_dir(node), clock=SimClock())
        bms.wait_boot(30)
        change(bms)
        bms.close()

    def offline(self, node: int) -> VirtualBms:
        """Open a node's state in this process (only while the simulator is stopped)."""
        assert self.process is None
        bms = VirtualBms(self.node_dir(node), clock=SimClock())
        bms.wait_boot(30)
        return bms

    def start(self) -> None:
        self.process = SimCanProcess(
            self.link,
            self.state_dir,
            self.nodes,
            time_scale=20.0,
            log_file=self.work / "sim.log",
        )
        self.process.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def power_cut(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None

    def link_args(self, *nodes: int) -> list[str]:
        args = ["--can", self.link]
        for node in nodes or self.nodes:
            args += ["--node", str(node)]
        return args

    def update_args(self, package: str, *nodes: int) -> list[str]:
        return [
            "update",
            *self.link_args(*nodes),
            str(self.kit.packages[package]),
            "--trust", str(self.kit.trust),
            "--backup-dir", str(self.work / "backups"),
            "--tester-cert", str(self.kit.tester_cert),
            "--tester-key", str(self.kit.tester_key),
            "--operator", "e2e",
            *CONFIRM,
        ]  # fmt: skip


@pytest.fixture
def make_bench(tmp_path: Path, kit: Kit) -> Iterator[Callable[..., Bench]]:
    benches: list[Bench] = []

    def make(nodes: tuple[int, ...] = (1,)) -> Bench:
        state = tmp_path / "state"
        for node in nodes:
            target = node_state_dir(state, node)
            shutil.copytree(kit.template, target)
            # Each node its own serial, as on a real string of packs.
            device = target / "device.json"
            device.write_text(device.read_text().replace("SIM0000001", f"SIM000000{node}"))
        bench = Bench(kit, state, tmp_path, unique_multicast_link(), nodes)
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
