"""Run a string of virtual BMS on one simulated RS485 bus, each serving Modbus RTU.

In-process: :class:`Rs485Simulator` (``start()`` / ``stop()``) creates the bus
(:class:`~bmsfw.link.serialbus.RS485Bus`), attaches one pty per node and runs
one pymodbus RTU server per node on it, all in one asyncio loop thread, plus a
thread that lets the devices' firmware catch up with the clock (boots and
self-tests run concurrently, as on real hardware). Node ``n`` has unit id ``n``
and its state in ``STATE_DIR/node<n>``. In its own process (what tests and
``bmsfw sim rs485`` use, so killing it is a power loss): :class:`SimRs485Process`
runs ``python -m bmsfw.sim.sim_rs485`` and reads its ``READY {json}`` line,
which carries the host pty path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmsfw.link.serialbus import RS485Bus
from bmsfw.link.uart import SerialParams
from bmsfw.link.wire import FRAME_GAPS
from bmsfw.sim._simprocess import SimProcess
from bmsfw.sim.bms import VirtualBms
from bmsfw.sim.clock import Clock, RealClock
from bmsfw.sim.modbus_server import ModbusBmsNode, serve_node
from bmsfw.sim.sim_can import ScaledClock, node_state_dir, serve_until_stopped, stop_on_signals
from bmsfw.sim.sim_control import poll_commands

__all__ = ["Rs485SimConfig", "Rs485Simulator", "SimRs485Process", "node_state_dir"]

log = logging.getLogger(__name__)

CONTROL_POLL_S = 0.1  # how often `bmsfw sim set` command files are looked for


@dataclass(frozen=True)
class Rs485SimConfig:
    nodes: tuple[int, ...] = (1,)
    state_dir: str = "."
    baud_bps: int = 115_200
    parity: str = "E"
    stopbits: int = 1
    throttle: bool = False
    turnaround_s: float = 0.0002
    time_scale: float = 1.0
    poll_s: float = 0.01
    frame_gap: str = "spec"  # Modbus t3.5 on this line: bmsfw.link.wire.FRAME_GAPS
    # Nodes served through one bus attachment by one pymodbus server. 1 (the default)
    # gives every BMS its own transceiver tap and server, as on a real string. Larger
    # strings at high baud rates need more: every attachment is one pty write per
    # delivered piece and one decoder per frame, and 16 of them in one process
    # cannot follow a 921,600-baud broadcast. Nodes sharing an attachment decode each
    # frame once; each still has its own unit id, state and answers.
    nodes_per_port: int = 1
    # 0: the nodes are served in the simulator's process; N: by N processes of their
    # own (the bus stays here), so a long string at a high baud rate gets the CPU.
    node_processes: int = 0

    def __post_init__(self) -> None:
        if self.nodes_per_port < 1:
            raise ValueError("nodes_per_port must be at least 1")
        if self.node_processes < 0:
            raise ValueError("node_processes must be 0 or more")


class NodeServers:
    """Virtual BMS served by pymodbus on given ptys: one asyncio loop thread for all
    servers, plus a thread that lets the devices' firmware catch up with the clock
    (boots and self-tests run concurrently, as on real hardware).

    ``groups`` maps a device-side pty path to the unit ids served on it (one
    pymodbus server per path). Used by :class:`Rs485Simulator` in its own process,
    or in node processes of their own (``node_processes``).
    """

    def __init__(
        self,
        state_dir: str,
        groups: dict[str, tuple[int, ...]],
        params: SerialParams,
        *,
        time_scale: float = 1.0,
        poll_s: float = 0.01,
    ) -> None:
        self.state_dir = state_dir
        self.groups = groups
        self.params = params
        self.time_scale = time_scale
        self.poll_s = poll_s
        self.devices: dict[int, VirtualBms] = {}
        self.nodes: dict[int, ModbusBmsNode] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._servers: list[Any] = []

    def _clock(self) -> Clock:
        return RealClock() if self.time_scale == 1.0 else ScaledClock(self.time_scale)

    def start(self) -> NodeServers:
        for units in self.groups.values():
            for unit in units:
                bms = VirtualBms(node_state_dir(self.state_dir, unit), clock=self._clock())
                self.devices[unit] = bms
                self.nodes[unit] = ModbusBmsNode(bms, unit)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run_loop() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def start_servers() -> None:
                for path, units in self.groups.items():
                    server = await serve_node(
                        [self.nodes[unit] for unit in units],
                        path,
                        baud_bps=self.params.baud_bps,
                        parity=self.params.parity,
                        stopbits=self.params.stop_bits,
                    )
                    self._servers.append(server)

            try:
                loop.run_until_complete(start_servers())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            for server in self._servers:
                loop.run_until_complete(server.shutdown())
            loop.close()

        self._thread = threading.Thread(target=run_loop, name="modbus-sim", daemon=True)
        self._thread.start()
        ready.wait(20)
        if failure:
            self.stop()
            raise failure[0]
        self._poller = threading.Thread(target=self._poll, name="bms-poll", daemon=True)
        self._poller.start()
        return self

    def _poll(self) -> None:
        # The firmware's own time: boots, self-tests, watchdogs advance here; and
        # `bmsfw sim set` commands (sim_control) are applied, every CONTROL_POLL_S.
        next_control = 0.0
        while not self._stop.wait(self.poll_s):
            control = time.monotonic() >= next_control
            if control:
                next_control = time.monotonic() + CONTROL_POLL_S
            for unit, bms in self.devices.items():
                if bms.dead:
                    continue  # powered off: commands wait for the next power-on
                try:
                    bms.poll()
                    if control:
                        poll_commands(bms, node_state_dir(self.state_dir, unit))
                except Exception:  # a dead or faulted node must not stop the others
                    log.exception("node %s: poll failed", bms.serial)

    def stop(self) -> None:
        self._stop.set()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._poller is not None:
            self._poller.join(5)
        for bms in self.devices.values():
            if not bms.dead:
                bms.close()
        self.devices.clear()


class Rs485Simulator:
    """Virtual BMS nodes on one simulated RS485 bus.

    The bus (and its ptys) lives in this process. The nodes are served here too,
    unless ``config.node_processes`` asks for processes of their own: each then
    serves some of the ports (a string at 921,600 baud needs more than one
    interpreter's worth of CPU). :attr:`devices` holds the in-process devices only.
    """

    def __init__(self, config: Rs485SimConfig) -> None:
        self.config = config
        self.params = SerialParams(
            config.baud_bps, config.parity, config.stopbits, frame_gap=config.frame_gap
        )
        self.bus: RS485Bus | None = None
        self.devices: dict[int, VirtualBms] = {}
        self._servers: NodeServers | None = None
        self._processes: list[SimProcess] = []

    @property
    def host_path(self) -> str:
        if self.bus is None:
            raise RuntimeError("simulator not started")
        return self.bus.host_path

    def start(self) -> Rs485Simulator:
        self.bus = RS485Bus(self.params, throttle=self.config.throttle, name="rs485-sim").start()
        units = list(self.config.nodes)
        k = self.config.nodes_per_port
        groups: dict[str, tuple[int, ...]] = {}
        for i in range(0, len(units), k):
            group = tuple(units[i : i + k])
            name = f"node{group[0]}" if len(group) == 1 else f"nodes{group[0]}-{group[-1]}"
            attachment = self.bus.attach_pty(name, turnaround_s=self.config.turnaround_s)
            groups[attachment.path] = group
        try:
            if self.config.node_processes == 0:
                self._servers = NodeServers(
                    self.config.state_dir,
                    groups,
                    self.params,
                    time_scale=self.config.time_scale,
                    poll_s=self.config.poll_s,
                ).start()
                self.devices = self._servers.devices
            else:
                paths = list(groups)
                n = min(self.config.node_processes, len(paths))
                for shard in (paths[i::n] for i in range(n)):
                    process = _NodeProcess(self.config, {p: groups[p] for p in shard})
                    self._processes.append(process)
                    process.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in self._processes:
            process.stop()
        self._processes.clear()
        if self._servers is not None:
            self._servers.stop()
        if self.bus is not None:
            self.bus.close()
        self.devices = {}

    def describe(self) -> dict[str, Any]:
        return {
            "port": self.host_path,
            "baud": self.params.baud_bps,
            "parity": self.params.parity,
            "stopbits": self.params.stop_bits,
            "frame_gap": self.params.frame_gap,
            "nodes_per_port": self.config.nodes_per_port,
            "node_processes": self.config.node_processes,
            "throttle": self.config.throttle,
            "nodes": [
                {
                    "unit": unit,
                    "serial": self.devices[unit].serial if unit in self.devices else "",
                    "state_dir": str(node_state_dir(self.config.state_dir, unit)),
                }
                for unit in self.config.nodes
            ],
        }

    def __enter__(self) -> Rs485Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _NodeProcess(SimProcess):
    """Some ports of a string served in a process of their own (``--serve``)."""

    what = "RS485 node process"

    def __init__(self, config: Rs485SimConfig, groups: dict[str, tuple[int, ...]]) -> None:
        super().__init__(
            [
                sys.executable,
                "-m",
                "bmsfw.sim.sim_rs485",
                "--state-dir",
                config.state_dir,
                "--baud",
                str(config.baud_bps),
                "--parity",
                config.parity,
                "--stopbits",
                str(config.stopbits),
                "--time-scale",
                str(config.time_scale),
                "--serve",
                json.dumps({path: list(units) for path, units in groups.items()}),
            ]
        )


class SimRs485Process(SimProcess):
    """The string in its own process (``python -m bmsfw.sim.sim_rs485``)."""

    what = "RS485 simulator"

    def __init__(
        self,
        state_dir: str | Path,
        nodes: tuple[int, ...] = (1,),
        *,
        baud_bps: int = 115_200,
        parity: str = "E",
        stopbits: int = 1,
        throttle: bool = False,
        time_scale: float = 1.0,
        frame_gap: str = "spec",
        nodes_per_port: int = 1,
        node_processes: int = 0,
        log_file: str | Path | None = None,
    ) -> None:
        args = [
            sys.executable,
            "-m",
            "bmsfw.sim.sim_rs485",
            "--state-dir",
            str(state_dir),
            "--nodes",
            ",".join(str(n) for n in nodes),
            "--baud",
            str(baud_bps),
            "--parity",
            parity,
            "--stopbits",
            str(stopbits),
            "--time-scale",
            str(time_scale),
            "--frame-gap",
            frame_gap,
            "--nodes-per-port",
            str(nodes_per_port),
            "--node-processes",
            str(node_processes),
        ]
        if throttle:
            args.append("--throttle")
        super().__init__(args, log_file=log_file)

    @property
    def port(self) -> str:
        """The host-side serial port path (what pyserial / pymodbus open)."""
        return str(self.info["port"])


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this process when its parent dies (PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _serve_nodes(args: argparse.Namespace, stop: threading.Event) -> int:
    """A node process of a simulator: power goes with the simulator's.

    When the simulator is killed (a power cut in tests), its node processes must not
    go on serving the devices' state: the kernel kills this one with its parent, and
    should that not be available, it ends itself (no clean shutdown) within 0.2 s.
    """
    parent = os.getppid()
    _die_with_parent()
    groups = {path: tuple(units) for path, units in json.loads(args.serve).items()}
    params = SerialParams(args.baud, args.parity, args.stopbits)
    servers = NodeServers(args.state_dir, groups, params, time_scale=args.time_scale).start()
    try:
        print("READY " + json.dumps({"serving": groups}), flush=True)
        while not stop.wait(0.2):
            if os.getppid() != parent:
                os._exit(1)  # orphaned: the simulator lost power, so did we
    finally:
        servers.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a string of virtual BMS on one RS485 pty")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--nodes", default="1", help="comma-separated unit ids (1..247)")
    parser.add_argument("--baud", type=int, default=115_200)
    parser.add_argument("--parity", default="E", choices=("N", "E", "O"))
    parser.add_argument("--stopbits", type=int, default=1, choices=(1, 2))
    parser.add_argument("--throttle", action="store_true", help="pace bytes at the baud rate")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--frame-gap", default="spec", choices=FRAME_GAPS)
    parser.add_argument("--nodes-per-port", type=int, default=1)
    parser.add_argument("--node-processes", type=int, default=0)
    parser.add_argument(
        "--serve",
        metavar="JSON",
        help="internal: serve these nodes on these existing ptys, {path: [unit, ...]}",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    level = logging.WARNING
    if args.verbose:
        level = logging.DEBUG if args.verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    stop = stop_on_signals()
    if args.serve:
        return _serve_nodes(args, stop)
    sim = Rs485Simulator(
        Rs485SimConfig(
            nodes=tuple(int(n) for n in args.nodes.split(",")),
            state_dir=args.state_dir,
            baud_bps=args.baud,
            parity=args.parity,
            stopbits=args.stopbits,
            throttle=args.throttle,
            time_scale=args.time_scale,
            frame_gap=args.frame_gap,
            nodes_per_port=args.nodes_per_port,
            node_processes=args.node_processes,
        )
    )
    return serve_until_stopped(sim, stop)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
