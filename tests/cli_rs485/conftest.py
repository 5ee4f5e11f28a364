"""Fixtures: the `bmsfw` command run as a user would, against a string of virtual BMS
behind one pty (Modbus RTU), the string in its own process.

The technician's files (vendor root certificate, tester certificate and key, signed
packages) are made once per session; each test gets fresh BMS state directories.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bmsfw.sim import DeviceSpec, FlashSpec
from bmsfw.sim._state import bank_region
from bmsfw.sim.sim_rs485 import SimRs485Process
from cli_support import BenchBase, Kit, copy_template, make_kit, run_bmsfw

__all__ = ["Kit", "StringBench", "run_bmsfw"]

MODEL = "BMS-16S"
HW_REV = "C"
IMAGE_SIZE = 6 * 1024
TIME_SCALE = 20.0

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

SPEC = DeviceSpec(
    model=MODEL,
    hw_revision=HW_REV,
    flash=FlashSpec.small(bank_size=64 * 1024, sector_size=4096),
    transfer_block_size=512,
)


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return make_kit(
        tmp_path_factory.mktemp("rs485-kit"),
        SPEC,
        (("v1", "1.0.0", 1, None, IMAGE_SIZE), ("v2", "2.0.0", 2, None, IMAGE_SIZE)),
        serial_prefix="RS4",
    )


@dataclass
class StringBench(BenchBase):
    """Virtual BMS units on one simulated RS485 bus, in their own process."""

    operator: str = "rs485-e2e"

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
            self.ids,
            baud_bps=baud_bps,
            time_scale=TIME_SCALE,
            log_file=self.work / "sim.log",
            **line,
        )
        self.process.start()
        return str(self.process.port)

    def wait_answering(self, baud_bps: int, timeout_s: float = 20.0) -> None:
        """Wait until every unit answers at ``baud_bps`` (a BMS still booting is silent, as a
        real one is, and a scan made in that moment would rightly miss it)."""
        from bmsfw.errors import BmsfwError
        from bmsfw.protocol.modbus.client import ModbusBus, SerialSettings

        assert self.process is not None
        settings = SerialSettings(port=str(self.process.port), baud_bps=baud_bps, timeout_s=0.2)
        deadline = time.monotonic() + timeout_s
        with ModbusBus(settings) as bus:
            for unit in self.ids:
                while True:
                    try:
                        bus.session(unit).identify()
                        break
                    except BmsfwError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)

    def link_args(self, *units: int, baud: int = 115_200) -> list[str]:
        assert self.process is not None
        chosen = units or self.ids
        spec = f"{min(chosen)}-{max(chosen)}" if units == () else ",".join(map(str, chosen))
        return ["--serial", self.process.port, "--unit", spec, "--baud", str(baud)]


@pytest.fixture
def make_string(tmp_path: Path, kit: Kit) -> Iterator[Callable[..., StringBench]]:
    benches: list[StringBench] = []

    def make(units: tuple[int, ...] = (1,)) -> StringBench:
        state = tmp_path / "state"
        copy_template(kit, state, units)  # each pack its own serial, as on a real string
        bench = StringBench(kit, state, tmp_path, units)
        benches.append(bench)
        return bench

    yield make
    for bench in benches:
        bench.stop()
