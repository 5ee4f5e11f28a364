"""``bmsfw fleet releases / devices / gateways / campaigns / flags / audit / approvals``
(lists, one page or ``--all``) and the operator actions that change things: ``token
revoke``, ``site windows``, ``release deactivate``, ``gateway decommission``, ``device
decommission`` and ``device move``, ``approve`` and ``reject`` (four eyes); ``campaign ID
devices`` shows each device's state. With four eyes on, a safety-relevant action answers
with the approval request it waits on, and the command says so (exit code 0).

Thin over the HTTP API: every command is one or a few requests with the operator's
token (``--token-file``); the server decides and audits. Tables on a terminal,
``--json`` for scripts (the rows as the API answers them); exit codes in docs/cli.md.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from bmsfw.cli._render import Table, console, err_console, one_line, print_json
from bmsfw.errors import UsageError

__all__ = ["add_operator_commands", "show_result", "waits_for_approval"]

ServerOptions = Callable[[Any], Any]
ClientFactory = Callable[[str, str | None, Path | None], Any]


@dataclass(frozen=True)
class _ListSpec:
    """One list command: its API path, title and table columns (API field names)."""

    name: str
    path: str
    title: str
    columns: tuple[str, ...]
    help: str


_LISTS = (
    _ListSpec(
        "releases",
        "releases",
        "releases",
        (
            "id",
            "product",
            "version",
            "hw_model",
            "safety_class",
            "ota_allowed",
            "uploaded_at",
            "deactivated_at",
        ),
        "Releases in upload order (deactivated ones show when they were pulled).",
    ),
    _ListSpec(
        "gateways",
        "gateways",
        "gateways",
        ("id", "name", "site", "devices", "agent_version", "last_seen_at", "decommissioned_at"),
        "Gateways by name, with their device count and last check-in.",
    ),
    _ListSpec(
        "campaigns",
        "campaigns",
        "campaigns",
        (
            "id",
            "name",
            "release_id",
            "status",
            "dynamic",
            "current_phase",
            "targets",
            "progress",
            "created_by",
        ),
        "Campaigns in creation order, with progress (succeeded/failed of all targets); "
        "dynamic ones take packs that match later.",
    ),
    _ListSpec(
        "audit",
        "audit",
        "audit log (newest first)",
        ("id", "at", "actor", "action", "target", "detail"),
        "The audit log, newest first (admin).",
    ),
)
_DEVICE_COLUMNS = (
    "serial", "gateway", "site", "model", "hw_revision", "firmware_version", "soc_pct",
    "temperature_c", "last_seen_at", "flags",
)  # fmt: skip
_APPROVAL_COLUMNS = (
    "id", "action", "target", "summary", "min_role", "requested_by", "requested_at",
    "expires_at", "status",
)  # fmt: skip
_APPROVAL_STATES = ("waiting", "approved", "rejected", "withdrawn", "expired", "failed", "all")
_FLAG_COLUMNS = ("id", "device_serial", "kind", "detail", "raised_at", "acknowledged_at")
_CAMPAIGN_DEVICE_COLUMNS = (
    "device_serial", "phase", "state", "error_code", "detail", "state_changed_at",
)  # fmt: skip


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "progress":
        states = row.get("states", {})
        failed = sum(states.get(s, 0) for s in ("failed", "rolled_back", "rejected"))
        return f"{states.get('succeeded', 0)} ok, {failed} failed / {row.get('targets', 0)}"
    value = row.get(column)
    if value is None or value == "":
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())[:80] or "-"
    return str(value)


def _table(title: str, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row, c) for c in columns))
    console.print(table)


_json_flag = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _emit(result: Any, as_json: bool, show: Callable[[Any], None]) -> None:
    """``--json``: the API's answer as it is; otherwise ``show`` renders it for a person."""
    if as_json:
        print_json(result)
    else:
        show(result)


def _paging_options(fn: Any) -> Any:
    """``--limit``, ``--cursor``, ``--all`` and ``--json``, passed on as one ``listing``."""
    fn = _json_flag(fn)
    fn = click.option(
        "--all", "all_pages", is_flag=True, help="Follow every page (the whole list)."
    )(fn)
    fn = click.option(
        "--cursor",
        default=None,
        help="Start after this position (the cursor the previous page named).",
    )(fn)
    fn = click.option(
        "--limit",
        type=click.IntRange(1, 1000),
        default=100,
        show_default=True,
        help="Rows per page (the server's maximum is 1000).",
    )(fn)

    @functools.wraps(fn)
    def wrapper(
        *args: Any, limit: int, cursor: str | None, all_pages: bool, as_json: bool, **kw: Any
    ) -> Any:
        return fn(*args, listing=_Listing(limit, cursor, all_pages, as_json), **kw)

    return wrapper


@dataclass(frozen=True)
class _Listing:
    """How a list command was asked to page and print."""

    limit: int
    cursor: str | None
    every: bool  # --all
    as_json: bool

    def fetch(self, client: Any, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One page (with a hint on stderr when more follow) or, with --all, all pages."""
        query = {k: v for k, v in params.items() if v not in (None, "")}
        if self.every:
            rows: list[dict[str, Any]] = client.get_all(path, **query, limit=self.limit)
            return rows
        if self.cursor:
            query["cursor"] = self.cursor
        rows, following = client.get_page(path, **query, limit=self.limit)
        if following:
            err_console.print(f"more rows follow: add --cursor {following} (or --all)")
        return rows

    def show(self, rows: list[dict[str, Any]], title: str, columns: Sequence[str]) -> None:
        _emit(rows, self.as_json, lambda r: _table(title, columns, r))


def add_operator_commands(
    group: click.Group,
    server_options: ServerOptions,
    client: ClientFactory,
) -> None:
    """Register the list and operator commands on the ``fleet`` group."""
    for spec in _LISTS:
        group.add_command(_list_command(spec, server_options, client))
    group.add_command(_devices_command(server_options, client))
    group.add_command(_flags_command(server_options, client))
    group.add_command(_release_group(server_options, client))
    group.add_command(_gateway_group(server_options, client))
    group.add_command(_device_group(server_options, client))
    group.add_command(_site_group(server_options, client))
    group.add_command(_approvals_command(server_options, client))
    group.add_command(_decide_command("approve", server_options, client))
    group.add_command(_decide_command("reject", server_options, client))
    token = group.commands.get("token")
    assert isinstance(token, click.Group)
    token.add_command(_token_revoke(server_options, client))


def _list_command(spec: _ListSpec, server_options: ServerOptions, client: ClientFactory) -> Any:
    @click.command(spec.name, help=spec.help)
    @server_options
    @_paging_options
    def command(server: str, token: str | None, ca: Path | None, listing: _Listing) -> None:
        with client(server, token, ca) as c:
            rows = listing.fetch(c, spec.path, {})
        listing.show(rows, spec.title, spec.columns)

    return command


def _devices_command(server_options: ServerOptions, client: ClientFactory) -> Any:
    @click.command("devices")
    @server_options
    @click.option("--model", default="", help="Only this model (exact).")
    @click.option("--revision", default="", help="Only this hardware revision.")
    @click.option("--version", "firmware_version", default="", help="Only this firmware version.")
    @click.option("--site", default="", help="Only this site.")
    @click.option("--tag", default="", help="Only devices with this tag.")
    @click.option(
        "--flagged/--not-flagged", default=None, help="Only devices with (or without) open flags."
    )
    @click.option(
        "--online/--offline",
        default=None,
        help="Only devices checked in within three poll intervals (or not).",
    )
    @_paging_options
    def devices(  # noqa: PLR0917 - one parameter per click option
        server: str,
        token: str | None,
        ca: Path | None,
        model: str,
        revision: str,
        firmware_version: str,
        site: str,
        tag: str,
        flagged: bool | None,
        online: bool | None,
        listing: _Listing,
    ) -> None:
        """Devices by serial; every filter given must match."""
        params = {
            "model": model,
            "revision": revision,
            "version": firmware_version,
            "site": site,
            "tag": tag,
            "flagged": None if flagged is None else str(flagged).lower(),
            "online": None if online is None else str(online).lower(),
        }
        with client(server, token, ca) as c:
            rows = listing.fetch(c, "devices", params)
        listing.show(rows, "devices", _DEVICE_COLUMNS)

    return devices


def _flags_command(server_options: ServerOptions, client: ClientFactory) -> Any:
    @click.command("flags")
    @server_options
    @click.option(
        "--include-acknowledged", is_flag=True, help="Also flags an operator acknowledged."
    )
    @_paging_options
    def flags(
        server: str,
        token: str | None,
        ca: Path | None,
        include_acknowledged: bool,
        listing: _Listing,
    ) -> None:
        """Devices flagged for integrity faults, unexpected firmware hash or version."""
        params = {"include_acknowledged": "true" if include_acknowledged else None}
        with client(server, token, ca) as c:
            rows = listing.fetch(c, "flags", params)
        listing.show(rows, "flags", _FLAG_COLUMNS)

    return flags


def _retire_command(  # noqa: PLR0917 - what differs between the retiring commands
    name: str,
    argument: str,
    path: Callable[[str], str],
    help_text: str,
    render: Callable[[dict[str, Any]], str],
    server_options: ServerOptions,
    client: ClientFactory,
) -> Any:
    @click.command(name, help=help_text)
    @server_options
    @click.argument(argument)
    @click.option("--reason", default="", help="Why (kept in the audit log).")
    @_json_flag
    def command(
        server: str, token: str | None, ca: Path | None, reason: str, as_json: bool, **kw: str
    ) -> None:
        with client(server, token, ca) as c:
            result = c.post(path(kw[argument.lower()]), {"reason": reason})
        show_result(result, as_json, render)

    return command


def waits_for_approval(result: Any) -> bool:
    """Whether an action's answer is the approval request it waits on (four eyes)."""
    return isinstance(result, dict) and result.get("status") == "waiting" and "min_role" in result


def show_result(result: Any, as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """An action's answer: done (``render``) or waiting for a second person."""

    def show(r: dict[str, Any]) -> None:
        if waits_for_approval(r):
            console.print(
                f"waiting for approval: request {r['id']} ({one_line(r['summary'])}); "
                f"a second person with the role {r['min_role']} or above approves it "
                f"with `bmsfw fleet approve {r['id']}` before {r['expires_at']}"
            )
        else:
            console.print(render(r))

    _emit(result, as_json, show)


def _approvals_command(server_options: ServerOptions, client: ClientFactory) -> Any:
    @click.command("approvals")
    @server_options
    @click.option(
        "--status",
        type=click.Choice(_APPROVAL_STATES),
        default="waiting",
        show_default=True,
        help="Only requests in this state ('all': every one).",
    )
    @_paging_options
    def approvals(
        server: str, token: str | None, ca: Path | None, status: str, listing: _Listing
    ) -> None:
        """Four eyes: what waits for a second person's approval (or, with --status, what
        was decided), oldest first. Approve with `bmsfw fleet approve ID`."""
        with client(server, token, ca) as c:
            rows = listing.fetch(c, "approvals", {"status": status})
        listing.show(rows, f"approval requests ({status})", _APPROVAL_COLUMNS)

    return approvals


def _decide_command(verb: str, server_options: ServerOptions, client: ClientFactory) -> Any:
    helps = {
        "approve": "Approve a waiting request as a second person with the role it names "
        "(never your own: E650); the action runs now.",
        "reject": "Reject a waiting request (your own: withdraw it); nothing is done.",
    }

    @click.command(verb, help=helps[verb])
    @server_options
    @click.argument("approval_id", type=click.IntRange(min=1))
    @click.option("--note", default="", help="Why (reject only; kept in the audit log).")
    @_json_flag
    def command(  # noqa: PLR0917 - one parameter per click option
        server: str, token: str | None, ca: Path | None, approval_id: int, note: str, as_json: bool
    ) -> None:
        with client(server, token, ca) as c:
            body = {"note": note} if verb == "reject" else None
            result = c.post(f"approvals/{approval_id}/{verb}", body)

        def show(r: dict[str, Any]) -> None:
            request = r["approval"] if verb == "approve" else r
            console.print(
                f"request {request['id']} {request['status']} by {request['decided_by']}: "
                f"{one_line(request['summary'])}"
            )

        _emit(result, as_json, show)

    return command


def _release_group(server_options: ServerOptions, client: ClientFactory) -> click.Group:
    @click.group("release")
    def release() -> None:
        """One release: pull it from service."""

    @release.command("deactivate")
    @server_options
    @click.argument("release_id", metavar="RELEASE_ID")
    @click.option("--reason", default="", help="Why (kept in the audit log).")
    @click.option(
        "--running",
        type=click.Choice(["stop", "finish"]),
        default="stop",
        show_default=True,
        help="Its running and paused campaigns: 'stop' (cancelled, offers not yet taken "
        "withdrawn) or 'finish' (they run to their end).",
    )
    @_json_flag
    def deactivate(  # noqa: PLR0917 - one parameter per click option
        server: str,
        token: str | None,
        ca: Path | None,
        release_id: str,
        reason: str,
        running: str,
        as_json: bool,
    ) -> None:
        """Pull a release (release_manager): no new campaign may use it; its running
        campaigns stop or finish (--running); with four eyes on, it waits for approval."""
        number = _positive_id(release_id)
        with client(server, token, ca) as c:
            result = c.post(f"releases/{number}/deactivate", {"reason": reason, "running": running})
        show_result(
            result,
            as_json,
            lambda r: (
                f"release {r['id']} ({r['product']} {r['version']}) deactivated at "
                f"{r['deactivated_at']}; running campaigns: {running}"
            ),
        )

    return release


def _gateway_group(server_options: ServerOptions, client: ClientFactory) -> click.Group:
    @click.group("gateway")
    def gateway() -> None:
        """One gateway: decommission it."""

    decommission = _retire_command(
        "decommission",
        "NAME",
        lambda name: f"gateways/{quote(name, safe='')}/decommission",
        "Decommission a gateway (admin): every credential of it is revoked; its devices "
        "and their history stay (move them with `bmsfw fleet device move`). Also "
        "`gateway remove`.",
        lambda g: (
            f"gateway {g['name']} decommissioned at {g['decommissioned_at']} "
            f"({g['devices']} devices still behind it)"
        ),
        server_options,
        client,
    )
    gateway.add_command(decommission)
    gateway.add_command(decommission, name="remove")  # the same, by the name
    return gateway


class _DeviceGroup(click.Group):
    """``device SERIAL`` is ``device show SERIAL``: a first word that names no subcommand
    is a serial (a device whose serial is a subcommand's name: ``device show SERIAL``)."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().resolve_command(ctx, args)


_IDENTITY_FIELDS = (
    "serial", "model", "hw_revision", "bootloader_version", "firmware_version",
    "firmware_sha256", "security_counter", "gateway", "site", "tags", "integrity_ok",
    "integrity_detail", "first_seen_at", "last_seen_at", "decommissioned_at",
)  # fmt: skip
_UPDATE_COLUMNS = (
    "campaign_id", "campaign_name", "release_version", "state", "outcome", "error_code",
    "failed_step", "state_changed_at",
)  # fmt: skip


def _print_device(device: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    identity = Table(title=f"device {device['serial']}", show_header=False)
    identity.add_column("field")
    identity.add_column("value")
    for name in _IDENTITY_FIELDS:
        identity.add_row(name, _cell(device, name))
    console.print(identity)
    seen = _cell(device, "last_seen_at")
    console.print(
        f"last telemetry ({seen}): state of charge {_cell(device, 'soc_pct')} %, "
        f"temperature {_cell(device, 'temperature_c')} °C"
    )
    console.print(f"open flags: {_cell(device, 'flags')}")
    rows = [
        {
            **run,
            "outcome": (run.get("report") or {}).get("outcome", ""),
            "failed_step": (run.get("report") or {}).get("failed_step", ""),
        }
        for run in runs
    ]
    _table("update history (newest first)", _UPDATE_COLUMNS, rows)
    for run in runs:
        report = run.get("report") or {}
        if report.get("error_code") or report.get("error_message"):
            console.print(
                f"campaign {run['campaign_id']}: {report.get('error_code') or '-'} at "
                f"{report.get('failed_step') or '-'}: {report.get('error_message') or ''}"
            )


def _device_group(server_options: ServerOptions, client: ClientFactory) -> click.Group:
    @click.group("device", cls=_DeviceGroup)
    def device() -> None:
        """One device: its history (``device SERIAL``), decommission it, or move it."""

    @device.command("show")
    @server_options
    @click.argument("serial")
    @_paging_options
    def show(
        server: str, token: str | None, ca: Path | None, serial: str, listing: _Listing
    ) -> None:
        """A device's history: identity, current version, open flags, last telemetry, and
        its runs in campaigns with state, outcome and error code (newest first; paged)."""
        path = f"devices/{quote(serial, safe='')}"
        with client(server, token, ca) as c:
            info = c.get(path)
            runs = listing.fetch(c, f"{path}/updates", {})
        info.pop("campaigns", None)  # the paged update history replaces this summary
        _emit(
            {"device": info, "updates": runs},
            listing.as_json,
            lambda d: _print_device(d["device"], d["updates"]),
        )

    device.add_command(
        _retire_command(
            "decommission",
            "SERIAL",
            lambda serial: f"devices/{quote(serial, safe='')}/decommission",
            "Decommission a device (operator): it takes part in no new campaign; its history "
            "stays. Refused while it has open work in a campaign.",
            lambda d: f"device {d['serial']} decommissioned at {d['decommissioned_at']}",
            server_options,
            client,
        )
    )

    @device.command("move")
    @server_options
    @click.argument("serial")
    @click.option("--gateway", "gateway_name", required=True, help="The gateway it is behind now.")
    @_json_flag
    def move(  # noqa: PLR0917 - one parameter per click option
        server: str,
        token: str | None,
        ca: Path | None,
        serial: str,
        gateway_name: str,
        as_json: bool,
    ) -> None:
        """Move a device to another gateway (operator)."""
        with client(server, token, ca) as c:
            result = c.post(f"devices/{quote(serial, safe='')}/move", {"gateway": gateway_name})
        _emit(
            result,
            as_json,
            lambda r: console.print(f"device {r['serial']} is behind gateway {r['gateway']}"),
        )

    return device


_WINDOW = re.compile(r"^(?:(?P<days>[0-6](?:,[0-6])*)\s+)?(?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)$")


def _parse_window(text: str) -> dict[str, Any]:
    match = _WINDOW.match(text.strip())
    if match is None:
        raise UsageError(
            f"bad window {text!r}: use 'HH:MM-HH:MM' (every day) or 'D,D HH:MM-HH:MM' "
            "with days 0 (Monday) to 6"
        )
    window: dict[str, Any] = {"start": match["start"], "end": match["end"]}
    if match["days"]:
        window["days"] = sorted({int(d) for d in match["days"].split(",")})
    return window


def _site_group(server_options: ServerOptions, client: ClientFactory) -> click.Group:
    @click.group("site")
    def site() -> None:
        """One site: its maintenance windows."""

    @site.command("windows")
    @server_options
    @click.argument("site_name", metavar="SITE")
    @click.option(
        "--window",
        "windows",
        multiple=True,
        help="When installs may start, local time: 'HH:MM-HH:MM' or '5,6 01:00-05:00' "
        "(days 0=Monday..6); repeat for several. None given: installs at any time.",
    )
    @click.option("--timezone", default="UTC", show_default=True, help="e.g. Europe/Amsterdam")
    @_json_flag
    def windows_command(  # noqa: PLR0917 - one parameter per click option
        server: str,
        token: str | None,
        ca: Path | None,
        site_name: str,
        windows: tuple[str, ...],
        timezone: str,
        as_json: bool,
    ) -> None:
        """Set a site's maintenance windows (operator); downloads run at any time."""
        body = {"timezone": timezone, "windows": [_parse_window(w) for w in windows]}
        with client(server, token, ca) as c:
            result = c.put(f"sites/{quote(site_name, safe='')}/maintenance-windows", body)
        _emit(result, as_json, _print_windows)

    return site


def _print_windows(site: dict[str, Any]) -> None:
    shown = [
        f"{','.join(str(d) for d in w.get('days', range(7)))} {w['start']}-{w['end']}"
        for w in site["windows"]
    ]
    console.print(
        f"site {site['site']} ({site['timezone']}): "
        + ("; ".join(shown) if shown else "installs at any time")
    )


def _token_revoke(server_options: ServerOptions, client: ClientFactory) -> Any:
    @click.command("revoke")
    @server_options
    @click.argument("credential_id", type=click.IntRange(min=1))
    @_json_flag
    def revoke(
        server: str, token: str | None, ca: Path | None, credential_id: int, as_json: bool
    ) -> None:
        """Revoke an operator token by its id (admin; ids in `bmsfw fleet access-review`)."""
        with client(server, token, ca) as c:
            result = c.post(f"tokens/{credential_id}/revoke")
        show_result(result, as_json, lambda r: f"credential {r['id']} revoked at {r['revoked_at']}")

    return revoke


def _positive_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < 1 << 31:
        raise UsageError(f"{text!r} is not a release id (a whole number from 1)")
    return value


def render_campaign_devices(rows: list[dict[str, Any]], as_json: bool) -> None:
    """``campaign ID devices``: each target with its state and error code."""
    _emit(rows, as_json, lambda r: _table("campaign devices", _CAMPAIGN_DEVICE_COLUMNS, r))
