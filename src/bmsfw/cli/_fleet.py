"""``bmsfw fleet ...``: run the fleet server, bootstrap credentials, drive campaigns.

Commands that take ``--db`` work on the database directly (bootstrap: there is
no admin token yet, or it was lost); the others talk to a running server with
``--server URL --token-file FILE [--ca CA.pem]`` (also from BMSFW_FLEET_SERVER,
BMSFW_FLEET_TOKEN_FILE or BMSFW_FLEET_TOKEN, BMSFW_FLEET_CA). A token given as
``--token VALUE`` still works, with a warning: other users of the machine can read
a command line.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from bmsfw.cli._render import Table, console, err_console, one_line, print_json
from bmsfw.errors import UsageError
from bmsfw.fleet.ranges import TELEMETRY_INTERVAL_RANGE_S, TELEMETRY_KEEP_RANGE_S
from bmsfw.update.profile import OTA_MIN_BANDWIDTH_BPS

__all__ = ["fleet_group"]

_DB = click.option(
    "--db",
    "db_url",
    default="sqlite:///fleet.db",
    show_default=True,
    envvar="BMSFW_FLEET_DB",
    help="SQLAlchemy URL: sqlite:///fleet.db or postgresql+psycopg://user@host/db.",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def loopback_url(url: str) -> bool:
    """True when ``url``'s host is this machine (``localhost``, 127.0.0.0/8, ``::1``),
    parsed as a URL: ``http://127.0.0.1.example.com`` or ``http://localhost@host`` is not."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _insecure_http(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["bmsfw_fleet_insecure_http"] = value
    return value


def _token_file(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    ctx.meta["bmsfw_fleet_token_file"] = value
    return value


def _server_options(fn: Any) -> Any:
    fn = click.option(
        "--insecure-http",
        is_flag=True,
        expose_value=False,
        callback=_insecure_http,
        help="Allow a plain http:// URL to a host other than this machine (the token then "
        "crosses the network in clear text). Without it such a URL is refused.",
    )(fn)
    fn = click.option(
        "--ca",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="BMSFW_FLEET_CA",
        show_envvar=True,
        help="CA bundle that issued the server cert.",
    )(fn)
    fn = click.option(
        "--token",
        envvar="BMSFW_FLEET_TOKEN",
        show_envvar=True,
        default=None,
        help="The operator API token itself, from env BMSFW_FLEET_TOKEN (on the command "
        "line it is visible to other users of this machine: prefer --token-file).",
    )(fn)
    fn = click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="BMSFW_FLEET_TOKEN_FILE",
        show_envvar=True,
        expose_value=False,
        callback=_token_file,
        help="File whose first line is the operator API token (env BMSFW_FLEET_TOKEN_FILE); "
        "keep it readable by you only.",
    )(fn)
    fn = click.option(
        "--server",
        envvar="BMSFW_FLEET_SERVER",
        show_envvar=True,
        required=True,
        help="Server URL, e.g. https://fleet.example:8443",
    )(fn)
    return fn


def resolve_token(token: str | None) -> str:
    """The operator token: from ``--token-file`` / BMSFW_FLEET_TOKEN_FILE, else from
    BMSFW_FLEET_TOKEN or ``--token`` (warned about on the command line)."""
    ctx = click.get_current_context()
    path: Path | None = ctx.meta.get("bmsfw_fleet_token_file")
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the token file {path}: {exc}") from None
        lines = text.strip().splitlines()
        if not lines or not lines[0].strip():
            raise UsageError(f"the token file {path} is empty")
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:
                err_console.print(
                    f"warning: the token file {path} is readable by others (chmod 600 it)"
                )
        return lines[0].strip()
    if token:
        if ctx.get_parameter_source("token") == click.core.ParameterSource.COMMANDLINE:
            err_console.print(
                "warning: a token on the command line is visible to other users of this "
                "machine; use --token-file FILE or BMSFW_FLEET_TOKEN_FILE"
            )
        return token
    raise UsageError(
        "no operator token: give --token-file FILE (or set BMSFW_FLEET_TOKEN_FILE, or "
        "BMSFW_FLEET_TOKEN); an admin creates one with `bmsfw fleet token create`"
    )


def _client(server: str, token: str | None, ca: Path | None) -> Any:
    """A client for the operator commands: plain HTTP only to this machine, or anywhere
    with ``--insecure-http`` (an operator token must not cross a network in clear)."""
    from bmsfw.fleet.client import ClientConfig, FleetClient

    token = resolve_token(token)
    insecure = bool(click.get_current_context().meta.get("bmsfw_fleet_insecure_http"))
    if server.lower().startswith("http://") and not (insecure or loopback_url(server)):
        raise UsageError(
            f"refusing to send the operator token to {server} over plain HTTP: use https:// "
            "(with --ca for the server's CA), or --insecure-http if you accept that the "
            "token crosses the network in clear text"
        )
    return FleetClient(
        ClientConfig(
            server_url=server,
            token=token,
            ca_file=ca,
            allow_insecure_http=server.lower().startswith("http://"),
        )
    )


@click.group("fleet")
def fleet_group() -> None:
    """Fleet OTA server: releases, phased campaigns, inventory, access review."""


@fleet_group.command("serve")
@_DB
@click.option(
    "--artifacts",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="An older server's artifact directory: release files missing from the database "
    "are copied in at start (release files live in the database).",
)
@click.option(
    "--trust-root",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Vendor root CA certificate (PEM) uploads must chain to.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8443, show_default=True, type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    help="Server processes sharing the database.",
)
@click.option("--poll-interval-s", default=60, show_default=True, type=int)
@click.option("--tick-interval-s", default=15.0, show_default=True, type=float)
@click.option(
    "--telemetry-interval-s",
    default=600,
    show_default=True,
    type=click.IntRange(*TELEMETRY_INTERVAL_RANGE_S),
    help="How often each device's state of charge and temperature are kept in its history; "
    "agents are told to check in at least this often.",
)
@click.option(
    "--telemetry-keep-days",
    default=3.0,
    show_default=True,
    type=click.FloatRange(TELEMETRY_KEEP_RANGE_S[0] / 86_400, TELEMETRY_KEEP_RANGE_S[1] / 86_400),
    help="How long telemetry history is kept (older samples are deleted, a bounded batch "
    "per tick).",
)
@click.option(
    "--tuf-root-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Publish TUF metadata for the agents: the 1.root.json, 2.root.json... of the "
    "offline root ceremony (docs/agent.md).",
)
@click.option(
    "--tuf-online-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The online key (Ed25519 PEM) root.json names for targets, snapshot, timestamp.",
)
@click.option(
    "--metrics",
    type=click.Choice(["token", "open", "off"]),
    default="token",
    show_default=True,
    help="GET /metrics (Prometheus): needs a viewer token, answers anyone (only behind a "
    "network boundary you control), or is not served.",
)
@click.option(
    "--access-log",
    default="-",
    show_default=True,
    help="Where the access log (one JSON line per request) goes: a file, '-' for stderr, "
    "'' for none.",
)
@click.option(
    "--check-ins-per-s",
    default=5.0,
    show_default=True,
    type=float,
    help="Check-ins per gateway credential and second, shared by every server process "
    "on the database (0: no limit).",
)
@click.option("--check-in-burst", default=30.0, show_default=True, type=float)
@click.option(
    "--auth-failures-per-min",
    default=30.0,
    show_default=True,
    type=float,
    help="Failed authentications per source address and per presented token and minute "
    "before 429 (0: no limit).",
)
@click.option(
    "--approval-above-devices",
    type=click.IntRange(min=0),
    default=None,
    help="Four eyes: a campaign of more devices than this waits for a second person's "
    "approval (0: every campaign; default: none).",
)
@click.option(
    "--four-eyes",
    is_flag=True,
    help="Four eyes for every other safety-relevant action: release deactivation, token "
    "revocation, gateway and device decommissioning, resuming after the error threshold "
    "(docs/fleet.md).",
)
@click.option(
    "--approval-ttl-h",
    default=24.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Hours an approval request waits before it expires (nothing done).",
)
def serve_command(  # noqa: PLR0917 - one parameter per click option
    db_url: str,
    artifacts: Path | None,
    trust_root: Path,
    tls_cert: Path | None,
    tls_key: Path | None,
    host: str,
    port: int,
    workers: int,
    poll_interval_s: int,
    tick_interval_s: float,
    telemetry_interval_s: int,
    telemetry_keep_days: float,
    tuf_root_dir: Path | None,
    tuf_online_key: Path | None,
    metrics: str,
    access_log: str,
    check_ins_per_s: float,
    check_in_burst: float,
    auth_failures_per_min: float,
    approval_above_devices: int | None,
    four_eyes: bool,
    approval_ttl_h: float,
) -> None:
    """Migrate the database and serve the HTTP(S) API."""
    from bmsfw.fleet.server import ServeOptions, serve

    if tls_cert is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("warning: serving plain HTTP on a non-loopback address", err=True)
    serve(
        ServeOptions(
            db_url=db_url,
            artifacts_dir=artifacts,
            trust_root=trust_root,
            host=host,
            port=port,
            workers=workers,
            tls_cert=tls_cert,
            tls_key=tls_key,
            poll_interval_s=poll_interval_s,
            tick_interval_s=tick_interval_s,
            telemetry_interval_s=telemetry_interval_s,
            telemetry_keep_s=round(telemetry_keep_days * 86_400),
            tuf_root_dir=tuf_root_dir,
            tuf_online_key=tuf_online_key,
            access_log=access_log,
            metrics=metrics,
            check_ins_per_s=check_ins_per_s,
            check_in_burst=check_in_burst,
            auth_failures_per_min=auth_failures_per_min,
            approval_above_devices=approval_above_devices,
            four_eyes=four_eyes,
            approval_ttl_s=approval_ttl_h * 3600.0,
        )
    )


@fleet_group.command("init")
@_DB
@click.option("--admin-name", default="admin", show_default=True)
def init_command(db_url: str, admin_name: str) -> None:
    """Create or migrate the database and write the first admin token."""
    from bmsfw.fleet.bootstrap import init_database

    token = init_database(db_url, admin_name=admin_name)
    if token is None:
        click.echo("database is current; an admin token exists already (none created)")
        return
    click.echo(f"admin token (shown once, store it safely):\n{token}")


@fleet_group.group("token")
def token_group() -> None:
    """Operator API tokens: create (direct database access), revoke (through the server)."""


@token_group.command("create")
@_DB
@click.option(
    "--role", type=click.Choice(["viewer", "operator", "release_manager", "admin"]), required=True
)
@click.option("--name", required=True, help="Who holds it (for the access review).")
@click.option(
    "--expires-days",
    type=click.IntRange(1, 3650),
    default=None,
    help="Refuse the token after this many days (default: no expiry).",
)
@_JSON
def token_create(
    db_url: str, role: str, name: str, expires_days: int | None, as_json: bool
) -> None:
    """Create an operator token; the clear text is printed once."""
    from bmsfw.fleet.bootstrap import create_token

    result = create_token(db_url, role=role, name=name, expires_in_days=expires_days)
    if as_json:
        print_json(result)
    else:
        expiry = f", expires {result['expires_at']}" if result["expires_at"] else ""
        click.echo(
            f"{role} token for {name} (id {result['id']}{expiry}, shown once):\n{result['token']}"
        )


@fleet_group.command("access-review")
@_DB
@_JSON
def access_review_command(db_url: str, as_json: bool) -> None:
    """Every credential with its role, creation and last use (IEC 62443 access review)."""
    from bmsfw.fleet.bootstrap import access_review_report

    rows = access_review_report(db_url)
    if as_json:
        print_json(rows)
        return
    table = Table(title="fleet credentials")
    columns = (
        "id",
        "name",
        "kind",
        "role",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
        "expires_at",
        "failed_attempts",
        "last_failed_at",
    )
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if row.get(c) is None else str(row[c]) for c in columns))
    console.print(table)


@fleet_group.command("gateway-add")
@_server_options
@click.option("--name", required=True)
@click.option("--site", required=True)
@click.option("--tag", "tags", multiple=True)
@_JSON
def gateway_add(  # noqa: PLR0917 - one parameter per click option
    server: str,
    token: str | None,
    ca: Path | None,
    name: str,
    site: str,
    tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Register a gateway (admin); prints its token once."""
    with _client(server, token, ca) as client:
        result = client.post("gateways", {"name": name, "site": site, "tags": list(tags)})
    if as_json:
        print_json(result)
    else:
        click.echo(f"gateway {name} (id {result['id']}) token, shown once:\n{result['token']}")


@fleet_group.command("release-upload")
@_server_options
@click.argument("package", type=click.Path(dir_okay=False, path_type=Path))
@_JSON
def release_upload(
    server: str, token: str | None, ca: Path | None, package: Path, as_json: bool
) -> None:
    """Upload a .bmsfw release (release_manager); the server verifies it first."""
    try:
        data = package.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {package}: {exc.strerror}") from None
    with _client(server, token, ca) as client:
        result = client.upload_release(data, package.name)
    if as_json:
        print_json(result)
    else:
        console.print(  # the server's answer: shown as text, never as markup or controls
            f"release {result['id']}: {result['product']} {result['version']} "
            f"({result['safety_class']}, sha256 {result['sha256'][:16]}...)"
        )


def _parse_phases(text: str, soak_s: float, success_pct: float) -> list[dict[str, Any]]:
    phases = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, size = item.rpartition(":") if ":" in item else (item, "", item)
        try:
            spec: dict[str, Any] = (
                {"percent": float(size[:-1])} if size.endswith("%") else {"devices": int(size)}
            )
        except ValueError:
            raise UsageError(f"bad phase {item!r}: use N (devices) or N% (percent)") from None
        phases.append(
            {"name": name or size, **spec, "soak_s": soak_s, "success_threshold_pct": success_pct}
        )
    if phases:
        phases[-1]["soak_s"] = 0
    return phases


@fleet_group.command("campaign-create")
@_server_options
@click.option("--name", required=True)
@click.option("--release", "release_id", type=int, required=True)
@click.option(
    "--phases",
    default="canary:5,10%,50%,100%",
    show_default=True,
    help="Cumulative phases: N devices or N%, optionally NAME:SIZE.",
)
@click.option("--soak-s", default=3600.0, show_default=True, type=float)
@click.option("--success-pct", default=95.0, show_default=True, type=float)
@click.option("--error-threshold-pct", default=10.0, show_default=True, type=float)
@click.option(
    "--bandwidth-floor-bps", default=int(OTA_MIN_BANDWIDTH_BPS), show_default=True, type=int
)
@click.option("--model", "models", multiple=True)
@click.option("--hw-revision", "hw_revisions", multiple=True)
@click.option("--version-range", default="", help='e.g. ">=1.0.0,<1.4.0"')
@click.option("--site", "sites", multiple=True)
@click.option("--tag", "tags", multiple=True)
@click.option(
    "--dynamic",
    is_flag=True,
    help="Devices that match the selector later (new or changed) join the last phase, "
    "until the campaign is cancelled; it never completes.",
)
@click.option(
    "--downgrade",
    "downgrade_reason",
    default="",
    metavar="REASON",
    help="A downgrade campaign: devices that run a higher version are targets too. It waits "
    "for a release manager's approval; gateways install it only when started with "
    "--accept-approved-downgrades.",
)
@_JSON
def campaign_create(  # noqa: PLR0917 - one parameter per click option
    server: str,
    token: str | None,
    ca: Path | None,
    name: str,
    release_id: int,
    phases: str,
    soak_s: float,
    success_pct: float,
    error_threshold_pct: float,
    bandwidth_floor_bps: int,
    models: tuple[str, ...],
    hw_revisions: tuple[str, ...],
    version_range: str,
    sites: tuple[str, ...],
    tags: tuple[str, ...],
    dynamic: bool,
    downgrade_reason: str,
    as_json: bool,
) -> None:
    """Start a phased campaign (operator); ``--dynamic``: one that later devices join;
    ``--downgrade REASON``: one that may install a lower version (approved first)."""
    if downgrade_reason and not downgrade_reason.strip():
        raise UsageError("--downgrade needs a reason (it goes into the audit log)")
    body = {
        "name": name,
        "release_id": release_id,
        "phases": _parse_phases(phases, soak_s, success_pct),
        "error_threshold_pct": error_threshold_pct,
        "bandwidth_floor_bps": bandwidth_floor_bps,
        "selector": {
            "models": list(models),
            "hw_revisions": list(hw_revisions),
            "version_range": version_range,
            "sites": list(sites),
            "tags": list(tags),
            "downgrade_reason": downgrade_reason.strip(),
        },
        "dynamic": dynamic,
    }
    with _client(server, token, ca) as client:
        _render_campaign(client.post("campaigns", body), as_json)


@fleet_group.command("campaign")
@_server_options
@click.argument("campaign_id", type=int)
@click.argument(
    "action",
    type=click.Choice(["show", "devices", "approve", "pause", "resume", "cancel"]),
    default="show",
)
@click.option("--reason", default="")
@_JSON
def campaign_command(  # noqa: PLR0917 - one parameter per click option
    server: str,
    token: str | None,
    ca: Path | None,
    campaign_id: int,
    action: str,
    reason: str,
    as_json: bool,
) -> None:
    """Show a campaign, list its devices (state, error code), approve it (four eyes: not
    its creator), pause, resume or cancel it."""
    with _client(server, token, ca) as client:
        if action == "devices":
            from bmsfw.cli._fleet_ops import render_campaign_devices

            render_campaign_devices(client.get(f"campaigns/{campaign_id}/devices"), as_json)
            return
        if action == "show":
            result = client.get(f"campaigns/{campaign_id}")
        elif action in ("resume", "approve"):
            result = client.post(f"campaigns/{campaign_id}/{action}")
        else:
            result = client.post(f"campaigns/{campaign_id}/{action}", {"reason": reason})
    from bmsfw.cli._fleet_ops import show_result, waits_for_approval

    if waits_for_approval(result):  # a resume after the error threshold, with four eyes on
        show_result(result, as_json, str)
    else:
        _render_campaign(result, as_json)


def _render_campaign(campaign: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(campaign)
        return
    console.print(  # the server's answer: shown as text, never as markup or controls
        f"campaign {campaign['id']} {campaign['name']!r}: {campaign['status']}"
        f"{' (dynamic)' if campaign.get('dynamic') else ''}, "
        f"phase {campaign['current_phase'] + 1}/{len(campaign['phases'])} "
        f"({campaign['phase_name']}), {campaign['targets']} devices"
    )
    why = str((campaign.get("selector") or {}).get("downgrade_reason", ""))
    if why:
        console.print(f"  downgrade campaign: {why}")
    if campaign["pause_reason"]:
        console.print(f"  paused: {one_line(campaign['pause_reason'])}")
    states = ", ".join(f"{k} {v}" for k, v in campaign["states"].items() if v)
    console.print(f"  states: {states}")


def _add_tuf_commands() -> None:
    from bmsfw.cli._tuf import tuf_keygen_command, tuf_root_command

    fleet_group.add_command(tuf_keygen_command)
    fleet_group.add_command(tuf_root_command)


_add_tuf_commands()


def _add_evidence_command() -> None:
    from bmsfw.cli._fleet_evidence import fleet_evidence_command

    fleet_group.add_command(fleet_evidence_command(_server_options, _client))


_add_evidence_command()


def _add_operator_commands() -> None:
    from bmsfw.cli._fleet_ops import add_operator_commands

    add_operator_commands(fleet_group, _server_options, _client)


_add_operator_commands()
