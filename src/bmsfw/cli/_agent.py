"""``bmsfw agent`` (the gateway agent) and ``bmsfw sim fleet`` (many agents with virtual BMS).

Exit codes: 0 when stopped (Ctrl-C, ``--once``/``--max-polls`` done); otherwise the
error family's code (see ``bmsfw --help``), e.g. a usage error for bad options.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from bmsfw.cli._keys import tester_credentials_from_files, tester_passphrase_option
from bmsfw.cli._link import read_secret
from bmsfw.cli._render import console, line, print_json
from bmsfw.errors import UsageError

__all__ = ["agent_command", "sim_fleet_command"]


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _client(
    server: str, token: str, ca: Path | None, insecure: bool, artifact_origins: tuple[str, ...] = ()
) -> Any:
    from bmsfw.fleet.client import ClientConfig, FleetClient

    return FleetClient(
        ClientConfig(
            server,
            token,
            ca_file=ca,
            allow_insecure_http=insecure,
            artifact_origins=artifact_origins,
        )
    )


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


_INSECURE = click.option(
    "--insecure-http",
    is_flag=True,
    help="Allow a plain http:// server URL (local tests only; production is HTTPS).",
)


@click.command("agent")
@click.option("--server", envvar="BMSFW_FLEET_SERVER", required=True, help="Fleet server URL.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File holding this gateway's token (from `POST /api/v1/gateways`).",
)
@click.option(
    "--ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA that issued the server certificate (default: the system store).",
)
@click.option(
    "--trust-root",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Vendor root certificate; every package must verify against it (not the server).",
)
@click.option(
    "--tuf-root",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The fleet server's TUF root.json (from its offline root ceremony): no offer is "
    "trusted before the server's signed metadata verifies. Without it, freshness is not "
    "checked (not for production).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Agent state, downloads, backups, reports and audit log.",
)
@click.option("--can", help="CAN link INTERFACE:CHANNEL, e.g. socketcan:can0.")
@click.option("--node", "nodes", type=int, multiple=True, help="UDS node id (repeat).")
@click.option("--bitrate", type=int, default=500_000, show_default=True)
@click.option("--serial", "serial_port", help="RS485/USB port, e.g. /dev/ttyUSB0.")
@click.option("--unit", "units", type=int, multiple=True, help="Modbus unit id (repeat).")
@click.option("--baud", type=int, default=115_200, show_default=True)
@click.option(
    "--sim",
    "sim_count",
    type=click.IntRange(1, 64),
    help="N in-process virtual BMS (DirectSession, no bus) in STATE_DIR/sim.",
)
@click.option(
    "--sim-initial",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --sim: the release the virtual BMS get at the factory (first start only).",
)
@click.option("--profile", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--confirm",
    "confirmed",
    multiple=True,
    help="Manual confirmation id the site installer attests (repeat), e.g. stable-power.",
)
@click.option("--tester-cert", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tester-key", type=click.Path(dir_okay=False, path_type=Path))
@tester_passphrase_option
@click.option("--site", help="Report this site for the gateway (default: the server's).")
@click.option(
    "--bandwidth-floor",
    "bandwidth_floor_bps",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Local floor in bit/s; the higher of this and the campaign's (5 Mbit/s) applies.",
)
@click.option(
    "--artifact-origin",
    "artifact_origins",
    multiple=True,
    help="Another https://HOST[:PORT] the server may name for artifacts (repeat); it gets "
    "no credential. Default: artifacts only from the server itself.",
)
@click.option(
    "--max-poll-interval",
    "max_poll_interval_s",
    type=click.FloatRange(min=0.05),
    help="Seconds; lowers the cap on the server's poll interval (3600 s) and on the backoff "
    "(1800 s) after a failed poll (benches, simulations).",
)
@click.option(
    "--accept-approved-downgrades",
    is_flag=True,
    help="Install a lower version than a BMS runs when a downgrade campaign (approved by a "
    "second person on the server) offers it; its reason goes into the report and audit log. "
    "Default: every downgrade is refused (BMSFW-E414).",
)
@click.option("--once", is_flag=True, help="Poll once and exit.")
@click.option("--max-polls", type=click.IntRange(1), help="Exit after this many polls.")
@_INSECURE
@click.option("--json", "as_json", is_flag=True, help="Each state change as a JSON line.")
def agent_command(
    *,
    server: str,
    token_file: Path,
    ca: Path | None,
    trust_root: Path,
    tuf_root: Path | None,
    state_dir: Path,
    can: str | None,
    nodes: tuple[int, ...],
    bitrate: int,
    serial_port: str | None,
    units: tuple[int, ...],
    baud: int,
    sim_count: int | None,
    sim_initial: Path | None,
    profile: Path | None,
    confirmed: tuple[str, ...],
    tester_cert: Path | None,
    tester_key: Path | None,
    tester_key_passphrase_file: Path | None,
    site: str | None,
    bandwidth_floor_bps: int,
    artifact_origins: tuple[str, ...],
    max_poll_interval_s: float | None,
    accept_approved_downgrades: bool,
    once: bool,
    max_polls: int | None,
    insecure_http: bool,
    as_json: bool,
) -> None:
    """Run the gateway agent: poll the fleet server and update the local BMS."""
    from bmsfw.fleet.agent import Agent, AgentConfig, BmsProvider, LinkProvider
    from bmsfw.update.connect import parse_links
    from bmsfw.update.profile import load_profile

    token = read_secret(token_file, "token file")
    root_pem = _read_bytes(trust_root, "trust root")
    chosen = [name for name, given in (("--can", can), ("--serial", serial_port),
                                        ("--sim", sim_count)) if given]  # fmt: skip
    if len(chosen) != 1:
        raise UsageError("name exactly one of --can, --serial or --sim")
    # the tester key is unlocked before anything is set up (E135/E136 change nothing)
    if (tester_cert is None) != (tester_key is None):
        raise UsageError("--tester-cert and --tester-key go together")
    credentials = None
    if tester_cert is not None and tester_key is not None:
        credentials = tester_credentials_from_files(
            tester_cert, tester_key, tester_key_passphrase_file
        )
    provider: BmsProvider
    if sim_count is not None:
        provider = _sim_provider(state_dir, sim_count, sim_initial, root_pem)
    else:
        links = parse_links(
            can=can, nodes=nodes, bitrate_bps=bitrate, serial=serial_port, units=units, baud=baud
        )
        provider = LinkProvider(tuple(links))
    chosen_profile = load_profile(profile)
    known = {c.id for c in chosen_profile.confirmations}
    unknown = set(confirmed) - known
    if unknown:
        listed = ", ".join(sorted(known))
        raise UsageError(f"--confirm {', '.join(sorted(unknown))}: not in the profile ({listed})")
    config = AgentConfig(
        state_dir=state_dir,
        trust_root_pem=root_pem,
        credentials=credentials,
        profile=chosen_profile,
        confirmed=frozenset(confirmed),
        site=site,
        bandwidth_floor_bps=bandwidth_floor_bps,
        max_poll_interval_s=max_poll_interval_s,
        error_retry_interval_s=min(30.0, max_poll_interval_s or 30.0),
        tuf_root=_read_bytes(tuf_root, "TUF root") if tuf_root is not None else None,
        accept_approved_downgrades=accept_approved_downgrades,
    )
    stop = threading.Event()
    _stop_on_signals(stop)
    for origin in artifact_origins:
        if not origin.startswith("https://") or origin.count("/") != 2:
            raise UsageError(f"--artifact-origin {origin}: give https://HOST[:PORT], no path")
    with _client(server, token, ca, insecure_http, artifact_origins) as client:
        # In-process virtual BMS live on a simulated clock; the pipeline waits on it too.
        agent = Agent(config, client, provider, clock=getattr(provider, "clock", None))
        polls = 1 if once else max_polls
        seen = 0

        def show_new() -> None:
            nonlocal seen
            for change in agent.history[seen:]:
                if as_json:  # JSON Lines: one state change per line, as it happens
                    click.echo(json.dumps(dataclasses.asdict(change), sort_keys=True))
                else:
                    console.print(
                        line(
                            f"{change.serial} campaign {change.campaign_id}: ",
                            (change.state, "bold"),
                            f" {change.error_code} {change.detail}",
                        )
                    )
            seen = len(agent.history)

        count = 0
        while not stop.is_set():
            if once:
                try:
                    agent.run_once()  # --once: the error ends the command with its code
                finally:
                    show_new()
                break
            # The daemon: no answer of the server and no error ends it; the agent says
            # when to poll again (the server's interval, clamped; backoff after a failure).
            outcome = agent.poll()
            show_new()
            if outcome.error is not None:
                # The server's words are text, never markup.
                console.print(
                    line(
                        ("poll failed", "yellow"),
                        f" {outcome.error}; retry in {outcome.wait_s:.1f} s",
                    )
                )
            count += 1
            if polls is not None and count >= polls:
                break
            stop.wait(outcome.wait_s)


def _sim_provider(state_dir: Path, count: int, initial: Path | None, root_pem: bytes) -> Any:
    from bmsfw.sim import SimClock
    from bmsfw.sim.fleet import SimBmsProvider, provision_sim_bms

    sim_dir = state_dir / "sim"
    serials = [f"SIM{n:04d}" for n in range(1, count + 1)]
    missing = [s for s in serials if not (sim_dir / s / "device.json").is_file()]
    if missing and initial is None:
        raise UsageError("--sim needs --sim-initial RELEASE.bmsfw on the first start")
    data = _read_bytes(initial, "initial release") if initial is not None else b""
    paths = (
        provision_sim_bms(sim_dir, serials, data, root_pem)
        if missing
        else [sim_dir / s for s in serials]
    )
    return SimBmsProvider(paths, SimClock())


@click.command("fleet")
@click.option("--server", envvar="BMSFW_FLEET_SERVER", required=True, help="Fleet server URL.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Admin token file (registers the simulated gateways on first start).",
)
@click.option("--ca", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trust-root", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--initial",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Release every virtual BMS gets at the factory.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("simfleet"),
    show_default=True,
)
@click.option("--gateways", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--bms-per-gateway", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--fail-preflight", type=click.FloatRange(0, 100), default=0.0, help="% of BMS.")
@click.option("--fail-selftest", type=click.FloatRange(0, 100), default=0.0, help="% of BMS.")
@click.option("--drop", type=click.FloatRange(0, 100), default=0.0, help="% of requests.")
@click.option("--power-loss", type=click.FloatRange(0, 100), default=0.0, help="% of BMS.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-poll-interval", type=click.FloatRange(min=0.05), help="Seconds (cap).")
@click.option(
    "--tuf-root",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The server's TUF root.json: every agent verifies the server's signed metadata.",
)
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@_INSECURE
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def sim_fleet_command(
    *,
    server: str,
    token_file: Path,
    ca: Path | None,
    trust_root: Path,
    initial: Path,
    state_dir: Path,
    gateways: int,
    bms_per_gateway: int,
    fail_preflight: float,
    fail_selftest: float,
    drop: float,
    power_loss: float,
    seed: int,
    max_poll_interval: float | None,
    tuf_root: Path | None,
    duration: float | None,
    insecure_http: bool,
    as_json: bool,
) -> None:
    """Run GATEWAYS agents with BMS-PER-GATEWAY in-process virtual BMS each."""
    from bmsfw.sim.fleet import SimFleet, SimFleetConfig

    config = SimFleetConfig(
        server_url=server,
        state_dir=state_dir,
        trust_root_pem=_read_bytes(trust_root, "trust root"),
        initial_release=_read_bytes(initial, "initial release"),
        gateways=gateways,
        bms_per_gateway=bms_per_gateway,
        fail_preflight_pct=fail_preflight,
        fail_selftest_pct=fail_selftest,
        drop_pct=drop,
        power_loss_pct=power_loss,
        seed=seed,
        ca_file=ca,
        allow_insecure_http=insecure_http,
        max_poll_interval_s=max_poll_interval,
        tuf_root=_read_bytes(tuf_root, "TUF root") if tuf_root is not None else None,
    )
    stop = threading.Event()
    _stop_on_signals(stop)
    with SimFleet(config) as fleet:
        with _client(server, read_secret(token_file, "token file"), ca, insecure_http) as admin:
            fleet.build(fleet.register(admin))
        fleet.start()
        started = time.monotonic()
        if not as_json:
            console.print(
                f"{gateways} gateway(s) x {bms_per_gateway} virtual BMS polling {server}; "
                "Ctrl-C stops"
            )
        while not stop.is_set():
            if duration is not None and time.monotonic() - started >= duration:
                break
            stop.wait(0.2 if duration is not None else 1.0)
        fleet.stop()
        summary = {
            "gateways": gateways,
            "bms": gateways * bms_per_gateway,
            "faults": {kind: sorted(serials) for kind, serials in fleet.faults.items()},
            "state_changes": sum(len(gw.agent.history) for gw in fleet.gateways),
            "dropped_requests": sum(gw.transport.dropped for gw in fleet.gateways),
            "cut_downloads": sum(gw.transport.cut_downloads for gw in fleet.gateways),
            "power_cycles": sum(gw.provider.power_cycles for gw in fleet.gateways),
            "versions": _versions(fleet),
            "gateway_errors": {gw.name: gw.errors for gw in fleet.gateways if gw.errors},
        }
        if as_json:
            print_json(summary)
        else:
            for key, value in summary.items():
                console.print(f"{key}: {value}")


def _versions(fleet: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for serial in fleet.serials():
        version = fleet.device(serial).boot_status().running_version or "none"
        counts[version] = counts.get(version, 0) + 1
    return counts
