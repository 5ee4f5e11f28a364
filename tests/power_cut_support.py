"""A power cut through the CLI, as a technician meets it: `bmsfw update` runs against a
virtual BMS in its own process (CAN or RS485), the BMS process is killed (its flash,
OTP and config files stay as they were at that instant), power comes back, and the
same command runs again.

Used by the CI tests (tests/cli/test_power_cut_cli.py: cuts at chosen phases) and by
the campaign ``python -m benchmarks.power_cut_cli`` (cuts at random times over the
whole update, printed as a table).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bmsfw.sim import DeviceSpec, FlashSpec
from bmsfw.sim.lab import unique_multicast_link
from bmsfw.sim.sim_can import SimCanProcess
from bmsfw.sim.sim_rs485 import SimRs485Process
from cli_support import BMSFW, CONFIRM, Kit, copy_template, make_kit, run_bmsfw

__all__ = ["CutResult", "Site", "make_power_cut_kit"]

Link = Literal["can", "rs485"]
TIME_SCALE = 20.0
SPEC = DeviceSpec(
    model="BMS-16S",
    hw_revision="C",
    flash=FlashSpec.small(bank_size=128 * 1024, sector_size=8192),
    transfer_block_size=512,
)
# Short boot windows: the virtual BMS boots in well under a second at TIME_SCALE, and a
# dead BMS should not keep the first updater waiting 30 s.
PROFILE = "[boot]\nboot_timeout_s = 6.0\nrevert_timeout_s = 6.0\n"


def make_power_cut_kit(root: Path) -> Kit:
    return make_kit(
        root,
        SPEC,
        (("v1", "1.0.0", 1, None, 4096), ("v2", "2.0.0", 2, None, 40 * 1024)),
        serial_prefix="CUT",
    )


@dataclass
class CutResult:
    """One cut: what the first run said, what the BMS ran after it, what the retry did."""

    link: Link
    cut_at_s: float
    first_exit: int
    first_error: str
    after_cut: str  # "2.0.0 test", "1.0.0 confirmed", "bootloader" ...
    bricked: bool
    retry_exit: int
    retry_outcome: str
    retry_start: str  # the core's start decision
    resumed_from: int
    bytes_sent: int
    resent_held: bool  # the retry sent image bytes the BMS already held as its new image

    @property
    def finished(self) -> bool:
        return self.retry_exit == 0 and self.retry_outcome in ("updated", "already-installed")


@dataclass
class Site:
    """One BMS (node/unit 1) on a CAN or RS485 link, its state in files."""

    kit: Kit
    work: Path
    link: Link
    state: Path = field(init=False)
    process: Any = None
    can_link: str = ""

    def __post_init__(self) -> None:
        self.state = self.work / "state"

    @property
    def serial_port(self) -> Path:
        """This site's RS485 port: a link to the running simulator's pty, removed before
        the power goes. A pty's number is free the moment its simulator dies, and the
        next pty opened on this machine takes it (another test's, under pytest-xdist or
        in a second run): the `bmsfw update` still running from before the cut would
        open that one by its old name, talk to another test's BMS, and lock that test
        out of its port (pymodbus opens a port exclusively)."""
        return self.work / "ttyRS485"

    def reset_state(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
        copy_template(self.kit, self.state, (1,))
        for name in ("backups",):
            shutil.rmtree(self.work / name, ignore_errors=True)
        (self.work / "profile.toml").write_text(PROFILE)

    def power_on(self) -> None:
        if self.link == "can":
            self.can_link = self.can_link or unique_multicast_link()
            self.process = SimCanProcess(
                self.can_link,
                self.state,
                (1,),
                time_scale=TIME_SCALE,
                log_file=self.work / "sim.log",
            )
        else:
            self.process = SimRs485Process(
                self.state, (1,), time_scale=TIME_SCALE, log_file=self.work / "sim.log"
            )
        self.process.start()
        if self.link == "rs485":
            new = self.serial_port.with_name(self.serial_port.name + ".new")
            new.unlink(missing_ok=True)
            new.symlink_to(self.process.port)
            new.replace(self.serial_port)

    def power_cut(self) -> None:
        if self.process is not None:
            self.serial_port.unlink(missing_ok=True)
            self.process.kill()
            self.process = None

    def power_off(self) -> None:
        if self.process is not None:
            self.serial_port.unlink(missing_ok=True)
            self.process.stop()
            self.process = None

    def link_args(self) -> list[str]:
        if self.link == "can":
            return ["--can", self.can_link, "--node", "1"]
        return ["--serial", str(self.serial_port), "--unit", "1", "--baud", "115200"]

    def update_args(self) -> list[str]:
        return [
            "update", *self.link_args(), str(self.kit.packages["v2"]),
            "--trust", str(self.kit.trust),
            "--backup-dir", str(self.work / "backups"),
            "--tester-cert", str(self.kit.tester_cert),
            "--tester-key", str(self.kit.tester_key),
            "--profile", str(self.work / "profile.toml"),
            "--operator", "power-cut", *CONFIRM, "--json",
        ]  # fmt: skip

    def info(self) -> dict[str, Any]:
        result = run_bmsfw("info", *self.link_args(), "--json", timeout_s=60)
        if result.returncode != 0:
            return {}
        entries: list[dict[str, Any]] = json.loads(result.stdout)
        return entries[0]["boot"] if entries else {}

    def cut(self, when: Callable[[str], bool] | float, *, timeout_s: float = 120.0) -> CutResult:
        """Update, cut the power when ``when`` (a -v log line test, or seconds after the
        start), power on, and run the same command again."""
        self.reset_state()
        self.power_on()
        started = time.monotonic()
        env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [BMSFW, "-v", *self.update_args()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stderr is not None
        cut_at = 0.0
        timer: threading.Timer | None = None
        if callable(when):
            for line in proc.stderr:
                if when(line):
                    cut_at = time.monotonic() - started
                    self.power_cut()
                    break
        else:
            cut_at = when
            timer = threading.Timer(when, self.power_cut)
            timer.start()
        out, _ = proc.communicate(timeout=timeout_s)
        if timer is not None:
            timer.cancel()
        self.power_cut()  # the update finished before the cut: cut now (after the confirm)
        first = _json(out)
        self.power_on()
        boot = self.info()
        after = (
            "no answer"
            if not boot
            else f"{boot['running_version'] or '-'} {boot['run_state']}/{boot['image_state']}"
        )
        bricked = not boot or boot["run_state"] != "application" or not boot["running_version"]
        again = subprocess.run(
            [BMSFW, *self.update_args()],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
        retry = _json(again.stdout)
        self.power_off()
        transfer = retry.get("transfer", {})
        held_new = bool(boot) and boot.get("running_version") == "2.0.0"
        return CutResult(
            link=self.link,
            cut_at_s=round(cut_at, 2),
            first_exit=proc.returncode,
            first_error=first.get("error", {}).get("code", "") or first.get("outcome", ""),
            after_cut=after,
            bricked=bricked,
            retry_exit=again.returncode,
            retry_outcome=retry.get("outcome", again.stderr.strip()[-200:]),
            retry_start=retry.get("decisions", {}).get("start", ""),
            resumed_from=int(transfer.get("resumed_from", 0)),
            bytes_sent=int(transfer.get("bytes_sent", 0)),
            resent_held=held_new and bool(transfer),
        )


def _json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def random_cut_times(rng: random.Random, count: int, span_s: float) -> list[float]:
    """Cut times spread over the whole update: one uniform draw per equal slice."""
    return [round((i + rng.random()) * span_s / count, 2) for i in range(count)]
