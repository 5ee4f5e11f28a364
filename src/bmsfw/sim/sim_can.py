"""Run virtual BMS nodes on a CAN bus, each serving UDS over ISO-TP.

In-process: :class:`CanSimulator` (``start()`` / ``stop()``) opens one bus per
node (like one CAN controller per BMS) and serves node ``n`` from
``STATE_DIR/node<n>``. In its own process (what tests and ``bmsfw sim can`` use,
so killing it is a power loss): :class:`SimCanProcess` runs
``python -m bmsfw.sim.sim_can`` and waits for its ``READY`` line.

The device clock: wall time by default (a 128 KiB sector erase really takes
~1 s, so the server sends 0x78); ``time_scale`` > 1 runs the device's flash,
boot and self-test timing that many times faster (tests use 20).

Live fault injection: every ``control_poll_s`` (100 ms) the simulator applies the
commands queued in ``STATE_DIR/node<n>/control/`` (``bmsfw sim set``,
:mod:`bmsfw.sim.sim_control`) through the device's fault API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import can

from bmsfw.link.canlink import CanLinkSpec, open_can_bus, parse_can_link
from bmsfw.link.isotp_stack import (
    IsoTpParams,
    default_isotp_params,
    functional_address,
    make_isotp_stack,
    node_address,
)
from bmsfw.sim._simprocess import SimProcess
from bmsfw.sim.bms import VirtualBms
from bmsfw.sim.clock import Clock, RealClock
from bmsfw.sim.sim_control import poll_commands
from bmsfw.sim.uds_server import (
    UdsNodeRunner,
    UdsServer,
    UdsServerConfig,
)

__all__ = ["CanSimConfig", "CanSimulator", "ScaledClock", "SimCanProcess", "node_state_dir"]

log = logging.getLogger(__name__)


class ScaledClock:
    """Wall time running ``scale`` times faster: device timing shrinks, ordering stays real."""

    def __init__(self, scale: float) -> None:
        if scale <= 0:
            raise ValueError(f"time scale must be positive, got {scale}")
        self.scale = scale
        self._t0 = time.monotonic()
        self._wall0 = datetime.now(UTC)

    def monotonic(self) -> float:
        return (time.monotonic() - self._t0) * self.scale

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=self.monotonic())

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.scale)


class FunctionalListener(can.Listener):
    """Single-frame functional requests (``0x7DF``) for one node, without a second ISO-TP stack.

    Functional requests are single frames by definition (ISO 15765-2), so a
    filter on the id is all it takes; a full can-isotp stack here would spend
    two threads looking at every frame on the bus.
    """

    def __init__(self, functional_id: int) -> None:
        self.functional_id = functional_id
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=64)

    def on_message_received(self, msg: can.Message) -> None:
        if msg.arbitration_id != self.functional_id or msg.is_error_frame or not msg.data:
            return
        data = bytes(msg.data)
        if data[0] >> 4 != 0:  # not a single frame
            return
        length, start = (data[0] & 0x0F, 1) if data[0] & 0x0F else (data[1], 2)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(data[start : start + length])

    def recv(self, block: bool = True, timeout: float | None = None) -> bytes | None:
        try:
            return self._queue.get(block=block, timeout=timeout)
        except queue.Empty:
            return None


def node_state_dir(state_dir: str | Path, node: int) -> Path:
    return Path(state_dir) / f"node{node}"


@dataclass(frozen=True)
class CanSimConfig:
    link: str
    nodes: tuple[int, ...] = (1,)
    state_dir: str = "."
    time_scale: float = 1.0
    server: UdsServerConfig = field(default_factory=UdsServerConfig)
    isotp_block_size: int | None = None  # None: the link default (16 on udp_multicast, else 0)
    isotp_timeout_s: float = 1.0  # N_Bs / N_Cr (ISO 15765-2: 1000 ms)
    control_poll_s: float = 0.1  # how often `bmsfw sim set` commands are picked up; 0: never

    def isotp_params(self, spec: CanLinkSpec) -> IsoTpParams:
        """The BMS side's ISO-TP settings: the link's defaults (one rule for both ends)."""
        overrides: dict[str, Any] = {
            "rx_flowcontrol_timeout_s": self.isotp_timeout_s,
            "rx_consecutive_frame_timeout_s": self.isotp_timeout_s,
            # the runner waits for nothing after a response: do not block its thread
            "blocking_send": False,
        }
        if self.isotp_block_size is not None:
            overrides["block_size"] = self.isotp_block_size
        return default_isotp_params(spec, **overrides)


class CanSimulator:
    """Virtual BMS nodes serving UDS on one CAN link, in this process."""

    def __init__(self, config: CanSimConfig) -> None:
        self.config = config
        self.spec: CanLinkSpec = parse_can_link(config.link)
        self.devices: dict[int, VirtualBms] = {}
        self.buses: dict[int, Any] = {}
        self._runners: list[UdsNodeRunner] = []
        self._notifiers: list[can.Notifier] = []
        self._stacks: list[Any] = []
        self._control_stop = threading.Event()
        self._control: threading.Thread | None = None

    def _clock(self) -> Clock:
        if self.config.time_scale == 1.0:
            return RealClock()
        return ScaledClock(self.config.time_scale)

    def start(self, *, wait_boot: bool = True) -> None:
        """Power the nodes on and serve them; by default return once every node has booted."""
        params = self.config.isotp_params(self.spec)
        for node in self.config.nodes:
            address = node_address(node)
            request_id, response_id = address.request_id, address.response_id
            bms = VirtualBms(node_state_dir(self.config.state_dir, node), clock=self._clock())
            bus = open_can_bus(self.spec)
            notifier = can.Notifier(bus, [], timeout=0.05)
            physical = make_isotp_stack(
                bus, notifier, txid=response_id, rxid=request_id, params=params
            )
            functional = FunctionalListener(functional_address())
            notifier.add_listener(functional)
            physical.start()
            server = UdsServer(bms, address, self.config.server)
            runner = UdsNodeRunner(server, physical, functional)
            runner.start()
            self.devices[node] = bms
            self.buses[node] = bus
            self._runners.append(runner)
            self._notifiers.append(notifier)
            self._stacks.append(physical)
            log.info(
                "node %d on %s: request 0x%03X response 0x%03X",
                node,
                self.spec,
                request_id,
                response_id,
            )
        if self.config.control_poll_s > 0:
            self._control_stop.clear()
            self._control = threading.Thread(
                target=self._control_loop, name="sim-control", daemon=True
            )
            self._control.start()
        if wait_boot:
            self._wait_booted()

    def _control_loop(self) -> None:
        while not self._control_stop.wait(self.config.control_poll_s):
            for node, bms in list(self.devices.items()):
                if bms.dead:
                    continue  # powered off: commands wait for the next power-on
                try:
                    poll_commands(bms, node_state_dir(self.config.state_dir, node))
                except OSError as exc:
                    log.warning("node %d control directory: %s", node, exc)

    def _wait_booted(self) -> None:
        for bms in self.devices.values():
            bms.wait_boot(timeout_s=60.0)

    def stop(self) -> None:
        self._control_stop.set()
        if self._control is not None:
            self._control.join(timeout=2)
            self._control = None
        for runner in self._runners:
            runner.stop()
        for stack in self._stacks:
            stack.stop()
        for notifier in self._notifiers:
            notifier.stop()
        for bus in self.buses.values():
            bus.shutdown()
        for bms in self.devices.values():
            if not bms.dead:
                bms.close()
        self._runners.clear()
        self._stacks.clear()
        self._notifiers.clear()

    def describe(self) -> dict[str, Any]:
        return {
            "link": str(self.spec),
            "nodes": [
                {
                    "node": node,
                    "request_id": f"0x{node_address(node).request_id:03X}",
                    "response_id": f"0x{node_address(node).response_id:03X}",
                    "serial": bms.serial,
                    "state_dir": str(bms.state_dir),
                }
                for node, bms in self.devices.items()
            ],
            "functional_id": f"0x{functional_address():03X}",
        }

    def __enter__(self) -> CanSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SimCanProcess(SimProcess):
    """The simulator in its own process (``python -m bmsfw.sim.sim_can``)."""

    def __init__(
        self,
        link: str,
        state_dir: str | Path,
        nodes: tuple[int, ...] = (1,),
        *,
        time_scale: float = 1.0,
        lockout_s: float | None = None,
        s3_s: float | None = None,
        max_block_length: int | None = None,
        log_file: str | Path | None = None,
    ) -> None:
        args = [
            sys.executable,
            "-m",
            "bmsfw.sim.sim_can",
            "--link",
            link,
            "--state-dir",
            str(state_dir),
            "--nodes",
            ",".join(str(n) for n in nodes),
            "--time-scale",
            str(time_scale),
        ]
        if lockout_s is not None:
            args += ["--lockout-s", str(lockout_s)]
        if s3_s is not None:
            args += ["--s3-s", str(s3_s)]
        if max_block_length is not None:
            args += ["--max-block-length", str(max_block_length)]
        super().__init__(args, log_file=log_file)


class _Simulator(Protocol):
    def start(self) -> object: ...
    def stop(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets (a simulator process's clean shutdown)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def serve_until_stopped(sim: _Simulator, stop: threading.Event) -> int:
    """Start ``sim``, print ``READY {its description}`` and serve until ``stop`` is set."""
    sim.start()
    try:
        print("READY " + json.dumps(sim.describe()), flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="virtual BMS nodes serving UDS on a CAN link")
    parser.add_argument("--link", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--nodes", default="1", help="comma-separated node numbers (1..8)")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--lockout-s", type=float, default=None)
    parser.add_argument("--s3-s", type=float, default=None)
    parser.add_argument(
        "--max-block-length",
        type=int,
        default=UdsServerConfig.max_block_length,
        help="maxNumberOfBlockLength announced by RequestDownload (whole 0x36 request)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = UdsServerConfig(
        lockout_s=args.lockout_s if args.lockout_s is not None else UdsServerConfig.lockout_s,
        s3_s=args.s3_s if args.s3_s is not None else UdsServerConfig.s3_s,
        max_block_length=args.max_block_length,
    )
    sim = CanSimulator(
        CanSimConfig(
            link=args.link,
            nodes=tuple(int(n) for n in args.nodes.split(",")),
            state_dir=args.state_dir,
            time_scale=args.time_scale,
            server=server,
        )
    )
    return serve_until_stopped(sim, stop_on_signals())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
