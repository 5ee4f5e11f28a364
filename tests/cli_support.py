"""What the CLI end-to-end tests over CAN (tests/cli) and RS485 (tests/cli_rs485) share:
the technician's files, a bench of virtual BMS state directories, and running `bmsfw`
as a user would (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmsfw.sim import DeviceSpec, SimClock, VirtualBms
from bmsfw.sim.lab import lab_pki, provision_nodes, signed_release, write_tester_files
from bmsfw.sim.sim_can import node_state_dir

BMSFW = str(Path(sys.executable).with_name("bmsfw"))
CONFIRM = ["--confirm", "flammables-removed", "--confirm", "stable-power"]

# (package name, version, security counter, behaviour marker or None, image size)
ReleasePlan = tuple[str, str, int, str | None, int]


@dataclass(frozen=True)
class Kit:
    """The technician's files."""

    root: Path
    trust: Path
    tester_cert: Path
    tester_key: Path
    packages: dict[str, Path]
    template: Path  # a provisioned BMS running the first release
    serial_prefix: str  # the template's serial is f"{serial_prefix}{1:07d}"


def make_kit(root: Path, spec: DeviceSpec, plan: Iterable[ReleasePlan], serial_prefix: str) -> Kit:
    """Vendor PKI, tester files, signed packages (first = what the template runs)."""
    pki = lab_pki()
    files = write_tester_files(pki, root)
    releases = {
        name: signed_release(pki, version, counter, spec=spec, size=size, behaviour=behaviour)
        for name, version, counter, behaviour, size in plan
    }
    packages: dict[str, Path] = {}
    for name, release in releases.items():
        packages[name] = root / f"{name}.bmsfw"
        packages[name].write_bytes(release.package)
    first = next(iter(releases.values()))
    state = provision_nodes(
        root / "template",
        pki,
        first.image,
        (1,),
        spec=spec,
        serial_format=serial_prefix + "{node:07d}",
    )
    template = node_state_dir(state, 1)
    return Kit(
        root, files.trust, files.tester_cert, files.tester_key, packages, template, serial_prefix
    )


def copy_template(kit: Kit, state_dir: Path, ids: Sequence[int]) -> None:
    """One BMS state per id from the kit's template, each with its own serial."""
    for n in ids:
        target = node_state_dir(state_dir, n)
        shutil.copytree(kit.template, target)
        device = target / "device.json"
        device.write_text(
            device.read_text().replace(f"{kit.serial_prefix}{1:07d}", f"{kit.serial_prefix}{n:07d}")
        )


@dataclass
class BenchBase:
    """BMS state directories and the simulator serving them in its own process."""

    kit: Kit
    state_dir: Path
    work: Path
    ids: tuple[int, ...]  # CAN node ids or Modbus unit ids
    process: Any = None
    operator: str = "e2e"

    def node_dir(self, n: int) -> Path:
        return node_state_dir(self.state_dir, n)

    def offline(self, n: int) -> VirtualBms:
        """Open a BMS's state in this process (only while the simulator is stopped)."""
        assert self.process is None
        bms = VirtualBms(self.node_dir(n), clock=SimClock())
        bms.wait_boot(30)
        return bms

    def prepare(self, n: int, change: Callable[[VirtualBms], None]) -> None:
        """Change a BMS while the simulator is down (kept in its state files)."""
        bms = self.offline(n)
        try:
            change(bms)
        finally:
            bms.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def power_cut(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None

    def link_args(self, *ids: int) -> list[str]:
        raise NotImplementedError

    def update_args(self, package: str, *ids: int, link: Sequence[str] = ()) -> list[str]:
        return [
            "update",
            *(link or self.link_args(*ids)),
            str(self.kit.packages[package]),
            "--trust", str(self.kit.trust),
            "--backup-dir", str(self.work / "backups"),
            "--tester-cert", str(self.kit.tester_cert),
            "--tester-key", str(self.kit.tester_key),
            "--operator", self.operator,
            *CONFIRM,
        ]  # fmt: skip


def run_bmsfw(
    *args: str,
    timeout_s: float = 90.0,
    check: int | None = None,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `bmsfw ARGS` as a user would; ``check`` asserts the exit code; ``env_extra``
    adds environment variables.

    The terminal is wide enough that no line wraps: a line with a path under pytest's
    temporary directory (longer under pytest-xdist, ``.../popen-gwN/...``) and a
    SHA-256 passed 200 columns."""
    env = dict(os.environ, COLUMNS="1000", PYTHONUNBUFFERED="1", **(env_extra or {}))
    result = subprocess.run(
        [BMSFW, *args], capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    if check is not None:
        assert result.returncode == check, (
            f"bmsfw {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


class SimProcess:
    """`bmsfw sim can|rs485` in its own process, on a copy of a provisioned state directory
    (from `bmsfw sim provision`); `start` returns the simulator's JSON description."""

    def __init__(self, template: Path, work: Path, *, time_scale: str = "20") -> None:
        self.state = work / "bench"
        shutil.copytree(template, self.state)
        self.time_scale = time_scale
        self.process: subprocess.Popen[str] | None = None

    def node_path(self, node: int) -> Path:
        return self.state / f"node{node}"

    @property
    def node_dir(self) -> Path:
        return self.node_path(1)

    def stored(self, node: int = 1) -> tuple[bytes, bytes]:
        """The BMS's flash (boot record, OTP, banks, fault log) and board file."""
        path = self.node_path(node)
        return (path / "flash.bin").read_bytes(), (path / "board.json").read_bytes()

    def start(self, *args: str) -> dict[str, object]:
        self.process = subprocess.Popen(
            [BMSFW, "sim", *args, "--state-dir", str(self.state), "--time-scale",
             self.time_scale, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the simulator did not start"
        info: dict[str, object] = json.loads(line)
        return info

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
