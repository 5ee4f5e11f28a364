"""``bmsfw sim``: run virtual BMS for tests and demos; ``sim can`` serves UDS on a CAN bus,
``sim set`` changes a running one (faults, supply, pack state)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

__all__ = ["sim_can_command", "sim_group", "sim_set_command"]


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
@click.option(
    "--max-block-length",
    type=click.IntRange(3, 0xFFFF),
    default=4095,
    show_default=True,
    help="maxNumberOfBlockLength the BMS announces (> 4095: ISO-TP escaped first frames).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def sim_can_command(
    *,
    link: str,
    nodes: int,
    state_dir: Path,
    throttle: bool,
    fd: bool,
    time_scale: float,
    max_block_length: int,
    as_json: bool,
) -> None:
    """Run NODES virtual BMS serving UDS on a CAN bus and print how to reach them."""
    from bmsfw.link import parse_can_link
    from bmsfw.sim.sim_can import CanSimConfig, CanSimulator
    from bmsfw.sim.uds_server import UdsServerConfig

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
            server=UdsServerConfig(max_block_length=max_block_length),
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


@sim_group.command("set")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The STATE_DIR a running `bmsfw sim can` serves.",
)
@click.option("--node", "-n", type=click.IntRange(1, 247), default=1, show_default=True)
@click.option("--soc", "soc_pct", type=click.FloatRange(0, 100), help="State of charge, %.")
@click.option("--temperature", "temperature_c", type=float, help="Every NTC, °C.")
@click.option(
    "--current",
    "pack_current_a",
    type=click.FloatRange(-2000, 2000),
    help="Pack current, A: + = charging, - = discharging (flows while contactors are closed).",
)
@click.option("--supply-sag", "supply_sag_v", type=click.FloatRange(0), help="Volts below nominal.")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    help="Raise a protection fault (repeatable), e.g. overcurrent.",
)
@click.option(
    "--power-cut-after-ops",
    type=click.IntRange(1),
    help="Cut the power during the N-th flash operation from now.",
)
@click.option("--clear", is_flag=True, help="Remove every injected fault first.")
@click.option(
    "--wait-s",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="Wait this long for the simulator to apply it (0: queue and return).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the simulator's result as JSON.")
def sim_set_command(
    *,
    state_dir: Path,
    node: int,
    soc_pct: float | None,
    temperature_c: float | None,
    pack_current_a: float | None,
    supply_sag_v: float | None,
    faults: tuple[str, ...],
    power_cut_after_ops: int | None,
    clear: bool,
    wait_s: float,
    as_json: bool,
) -> None:
    """Change a running virtual BMS: pack state, supply, faults, power cut (live).

    The command goes into STATE_DIR/node<N>/control/; the simulator applies it
    within 100 ms through the device's fault API. Exit code 1 when no
    simulator applied it in time (it stays queued) or it was refused.
    """
    from bmsfw.errors import UsageError
    from bmsfw.sim.sim_can import node_state_dir
    from bmsfw.sim.sim_control import SimCommand, send_command

    try:
        command = SimCommand(
            clear=clear,
            soc_pct=soc_pct,
            temperature_c=temperature_c,
            pack_current_a=pack_current_a,
            supply_sag_v=supply_sag_v,
            faults=faults,
            power_cut_after_ops=power_cut_after_ops,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if command.empty:
        raise UsageError(
            "nothing to set: give --soc, --temperature, --current, --supply-sag, --fault, ..."
        )
    directory = node_state_dir(state_dir, node)
    try:
        result = send_command(directory, command, wait_s=wait_s)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result))
    if result is None:
        if wait_s > 0:
            click.echo(
                f"queued in {directory}/control: no simulator applied it within {wait_s:g} s "
                "(is `bmsfw sim can` running on this state dir?)",
                err=True,
            )
            raise SystemExit(1)
        return
    if result.get("error"):
        click.echo(f"node {node} refused it: {result['error']}", err=True)
        raise SystemExit(1)
    if not as_json:
        click.echo(f"node {node}: " + ("; ".join(result.get("applied", [])) or "applied"))
