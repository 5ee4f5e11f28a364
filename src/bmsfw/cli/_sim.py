"""``bmsfw sim``: run virtual BMS for tests and demos; ``sim can`` serves UDS on a CAN bus."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

__all__ = ["sim_can_command", "sim_group"]


@click.group("sim")
def sim_group() -> None:
    """Run virtual BMS for tests and demos."""


@sim_group.command("can")
@click.option(
    "--bus",
    "link",
    default="udp_multicast:239.74.163.2",
    show_default=True,
    help="CAN link name, e.g. udp_multicast:239.74.163.2,port=43113 or virtual:bench.",
)
@click.option("--nodes", "-n", type=click.IntRange(1, 8), default=1, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Provisioned devices in STATE_DIR/node1, node2, ...",
)
@click.option("--throttle", is_flag=True, help="Pace frames at the physical bit rate.")
@click.option("--fd", is_flag=True, help="CAN FD (64-byte frames; data bitrate from the link).")
@click.option("--time-scale", type=float, default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def sim_can_command(
    *,
    link: str,
    nodes: int,
    state_dir: Path,
    throttle: bool,
    fd: bool,
    time_scale: float,
    as_json: bool,
) -> None:
    """Run NODES virtual BMS serving UDS on a CAN bus and print how to reach them."""
    from bmsfw.device.sim_can import CanSimConfig, CanSimulator
    from bmsfw.link import parse_can_link

    spec = parse_can_link(link)
    if throttle:
        spec = spec.with_(throttle=True)
    if fd:
        spec = spec.with_(fd=True)
    sim = CanSimulator(
        CanSimConfig(
            link=str(spec),
            nodes=tuple(range(1, nodes + 1)),
            state_dir=str(state_dir),
            time_scale=time_scale,
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
            click.echo(f"link {info['link']}  functional requests {info['functional_id']}")
            for node in info["nodes"]:
                click.echo(
                    f"  node {node['node']}: request {node['request_id']} -> response "
                    f"{node['response_id']}  serial {node['serial']}"
                )
            click.echo(f"find the nodes with: bmsfw scan --can '{info['link']}'", err=True)
            click.echo("Ctrl-C to stop", err=True)
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        sim.stop()
