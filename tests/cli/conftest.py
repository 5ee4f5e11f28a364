"""End-to-end fixtures: run the `bmsfw` command against virtual BMS processes over CAN.

Everything a technician would have on disk is made once per session (vendor root
certificate, tester certificate, signed packages); each test gets fresh BMS state
directories and its own multicast port, and the simulator runs in its own process
(udp_multicast), so killing it is a real power loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmsfw.sim import DeviceSpec, FlashSpec
from bmsfw.sim.lab import unique_multicast_link
from bmsfw.sim.sim_can import SimCanProcess
from cli_support import BMSFW, BenchBase, Kit, copy_template, make_kit, run_bmsfw

__all__ = ["BMSFW", "HW_REV", "MODEL", "Bench", "Kit", "run_bmsfw"]

MODEL = "BMS-16S"
HW_REV = "C"
IMAGE_SIZE = 4096

SPEC = DeviceSpec(
    model=MODEL,
    hw_revision=HW_REV,
    flash=FlashSpec.small(bank_size=128 * 1024, sector_size=8192),
    transfer_block_size=512,
)


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return make_kit(
        tmp_path_factory.mktemp("kit"),
        SPEC,
        (
            ("v1", "1.0.0", 1, None, IMAGE_SIZE),
            ("v2", "2.0.0", 2, None, IMAGE_SIZE),
            ("fail-selftest", "2.1.0", 2, "fail-selftest", IMAGE_SIZE),
            ("never-confirm", "2.2.0", 2, "never-confirm", IMAGE_SIZE),
            # Big enough that the transfer takes a moment, so a test can cut the power in it.
            ("v2-big", "2.0.0", 2, None, 96 * 1024),
        ),
        serial_prefix="SIM",
    )


@dataclass
class Bench(BenchBase):
    """Virtual BMS nodes on one CAN link, in their own process."""

    link: str = ""

    def start(self) -> None:
        self.process = SimCanProcess(
            self.link,
            self.state_dir,
            self.ids,
            time_scale=20.0,
            log_file=self.work / "sim.log",
        )
        self.process.start()

    def link_args(self, *nodes: int) -> list[str]:
        args = ["--can", self.link]
        for node in nodes or self.ids:
            args += ["--node", str(node)]
        return args


@pytest.fixture
def make_bench(tmp_path: Path, kit: Kit) -> Iterator[Callable[..., Bench]]:
    benches: list[Bench] = []

    def make(nodes: tuple[int, ...] = (1,)) -> Bench:
        state = tmp_path / "state"
        copy_template(kit, state, nodes)  # each node its own serial, as on a real string
        bench = Bench(kit, state, tmp_path, nodes, link=unique_multicast_link())
        benches.append(bench)
        return bench

    yield make
    for bench in benches:
        bench.stop()
