"""``bmsfw sim rs485``: a string of virtual BMS behind one pty, speaking Modbus RTU."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

from bmsfw.cli._link import frame_gap_option

__all__ = ["sim_rs485_command"]


@click.command("rs485")
@click.option("--nodes", "-n", type=click.IntRange(1, 247), default=1, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Provisioned devices in STATE_DIR/node1, node2, ... (unit id = node number).",
)
@click.option("--baud", type=int, default=115_200, show_default=True)
@click.option("--parity", type=click.Choice(["N", "E", "O"]), default="E", show_default=True)
@click.option("--stopbits", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option("--throttle/--no-throttle", default=False, help="Pace bytes at the baud rate.")
@click.option("--time-scale", type=float, default=1.0, show_default=True)
@frame_gap_option
@click.option(
    "--nodes-per-port",
    type=click.IntRange(1, 247),
    default=1,
    show_default=True,
    help="Nodes behind one simulated transceiver tap (one decoder for them): for long "
    "strings at high baud rates.",
)
@click.option(
    "--node-processes",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Serve the nodes from this many processes of their own (0: in this one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def sim_rs485_command(
    *,
    nodes: int,
    state_dir: Path,
    baud: int,
    parity: str,
    stopbits: str,
    throttle: bool,
    time_scale: float,
    frame_gap: str,
    nodes_per_port: int,
    node_processes: int,
    as_json: bool,
) -> None:
    """Run NODES virtual BMS on one simulated RS485 bus and print the pty to open."""
    from bmsfw.sim.sim_rs485 import Rs485SimConfig, Rs485Simulator

    sim = Rs485Simulator(
        Rs485SimConfig(
            nodes=tuple(range(1, nodes + 1)),
            state_dir=str(state_dir),
            baud_bps=baud,
            parity=parity,
            stopbits=int(stopbits),
            throttle=throttle,
            time_scale=time_scale,
            frame_gap=frame_gap,
            nodes_per_port=nodes_per_port,
            node_processes=node_processes,
        )
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sim.start()
    try:
        info = sim.describe()
        if as_json:
            click.echo(json.dumps(info))
        else:
            click.echo(info["port"])
            click.echo(
                f"{nodes} node(s), unit ids 1..{nodes}, {baud} 8{parity}{stopbits}"
                f"{', throttled' if throttle else ''}; Ctrl-C to stop",
                err=True,
            )
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        sim.stop()
