"""The technician's commands: scan, info, preflight, backup, restore, diff, update,
rollback, diagnose, report. Thin: parse, call ``bmsfw.update``, render.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from bmsfw.cli._errors import TesterCredentialsRequiredError
from bmsfw.cli._evidence import start_evidence, tell_after, tell_before, write_evidence
from bmsfw.cli._keys import tester_credentials_from_files, tester_passphrase_option
from bmsfw.cli._link import (
    connect,
    link_options,
    links_from,
    load_trust,
    read_secret,
    trust_options,
)
from bmsfw.cli._render import Table, clean, console, err_console, line, one_line, print_json, styled
from bmsfw.errors import BmsfwError, TransportError, UsageError
from bmsfw.protocol.session import BmsSession, TesterCredentials
from bmsfw.update.audit import verify_audit_log
from bmsfw.update.backup import diff_snapshots, load_backup, restore_backup, write_backup
from bmsfw.update.errors import ConfigDriftError, ReportUnreadableError
from bmsfw.update.events import (
    CheckEvaluated,
    Event,
    StepFinished,
    StepStarted,
    TransferProgress,
    UpdateFinished,
    WarningRaised,
    event_to_dict,
)
from bmsfw.update.pipeline import UpdateOptions, run_updates
from bmsfw.update.preflight import run_preflight
from bmsfw.update.profile import ManualConfirmation, UpdateProfile, load_profile
from bmsfw.update.report import UpdateReport, load_report, render_text
from bmsfw.update.string import StringReport

if TYPE_CHECKING:
    from bmsfw.fleet.client import FleetClient

__all__ = ["FIELD_COMMANDS"]

logger = logging.getLogger("bmsfw.cli")

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
profile_option = click.option(
    "--profile",
    "profile_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="BMSFW_PROFILE",
    help="Product profile (TOML) with thresholds; default: the field guide's values.",
)


F = TypeVar("F", bound=Callable[..., Any])


def tester_options(func: F) -> F:
    """--tester-cert, --tester-key and the key's passphrase: who may write to the BMS."""
    func = tester_passphrase_option(func)
    func = click.option("--tester-key", type=click.Path(path_type=Path, dir_okay=False))(func)
    return click.option(
        "--tester-cert",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Tester certificate chain (PEM); required (issued with `bmsfw keys issue-tester`).",
    )(func)


def record_options(backup_help: str) -> Callable[[F], F]:
    """--backup-dir, --report-dir, --audit-log, --operator: where the record of a run that
    changes a BMS goes (`update`, `rollback`), and who ran it."""

    def apply(func: F) -> F:
        func = click.option("--operator", default="", help="Technician name for the audit log.")(
            func
        )
        func = click.option(
            "--audit-log",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Append-only audit log (default: BACKUP_DIR/audit.jsonl).",
        )(func)
        func = click.option(
            "--report-dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="Where the JSON report goes (default: BACKUP_DIR/reports).",
        )(func)
        return click.option(
            "--backup-dir",
            type=click.Path(path_type=Path, file_okay=False),
            required=True,
            envvar="BMSFW_BACKUP_DIR",
            help=f"{backup_help} [env BMSFW_BACKUP_DIR].",
        )(func)

    return apply


def _exit_for(reports: list[UpdateReport]) -> None:
    """Exit with the first failure's code; a run whose record was not written fails too."""
    from bmsfw.cli._main import exit_code_for

    for report in reports:
        if report.exception is not None and (not report.ok or report.record_error):
            sys.exit(exit_code_for(report.exception))


def _each_session(kwargs: dict[str, Any], profile: Any = None) -> Iterator[BmsSession]:
    with connect(kwargs, profile) as conn:
        yield from conn.sessions


# --- scan -------------------------------------------------------------------------


@click.command("scan")
@click.option("--can", metavar="INTERFACE:CHANNEL", help="CAN link to scan.")
@click.option("--serial", metavar="PORT", help="RS485/USB port to scan.")
@click.option("--baud", type=int, default=115_200, show_default=True)
@click.option("--bitrate", "bitrate_bps", type=int, default=500_000, show_default=True)
@click.option("--first", type=int, default=1, show_default=True, help="First node/unit id.")
@click.option("--last", type=int, default=8, show_default=True, help="Last node/unit id.")
@click.option("--timeout", "timeout_s", type=float, default=0.3, show_default=True)
@json_option
def scan_command(
    *,
    can: str | None,
    serial: str | None,
    baud: int,
    bitrate_bps: int,
    first: int,
    last: int,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Find the BMS that answer on a link (node ids FIRST..LAST)."""
    from bmsfw.update.connect import CanLink, open_sessions, parse_links

    if last < first:
        raise UsageError(f"--last {last} is below --first {first}")
    ids = list(range(first, last + 1))
    links = parse_links(
        can=can,
        nodes=ids if can else (),
        bitrate_bps=bitrate_bps,
        serial=serial,
        units=ids if serial else (),
        baud=baud,
        timeout_s=timeout_s,
    )
    if can is not None:
        # A functional TesterPresent finds every node at once; then identify only those.
        from bmsfw.protocol.uds import discover_nodes

        first_link = links[0]
        assert isinstance(first_link, CanLink)
        answering = set(discover_nodes(f"{first_link.interface}:{first_link.channel}"))
        links = [link for link in links if isinstance(link, CanLink) and link.node in answering]
    found: list[dict[str, Any]] = []
    with open_sessions(links) as conn:
        for link, session in zip(links, conn.sessions, strict=True):
            try:
                identity = session.identify()
            except TransportError:
                logger.info("%s: no answer", link)
                continue
            found.append({"link": str(link), **dataclasses.asdict(identity)})
    if as_json:
        print_json(found)
        return
    columns = ("link", "model", "hw_revision", "serial", "app_version", "bootloader_version")
    table = Table(title=f"BMS found ({len(found)})")
    for col in columns:
        table.add_column(col)
    for row in found:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)


# --- info -------------------------------------------------------------------------


@click.command("info")
@link_options
@json_option
def info_command(*, as_json: bool, **kwargs: Any) -> None:
    """Identity, boot status, telemetry and the last self-test of each BMS."""
    results = []
    for session in _each_session(kwargs):
        identity = session.identify()
        entry: dict[str, Any] = {
            "identity": dataclasses.asdict(identity),
            "boot": dataclasses.asdict(session.read_boot_status()),
            "telemetry": dataclasses.asdict(session.read_telemetry()),
        }
        try:
            entry["self_test"] = dataclasses.asdict(session.read_self_test())
        except BmsfwError as exc:
            entry["self_test"] = {"unavailable": exc.message}
        results.append(entry)
    if as_json:
        print_json(results)
        return
    for entry in results:
        table = Table(title=f"{entry['identity']['address'] or entry['identity']['serial']}")
        table.add_column("item")
        table.add_column("value")
        for section in ("identity", "boot", "telemetry"):
            for key, value in entry[section].items():
                table.add_row(f"{section}.{key}", _fmt(value))
        st = entry["self_test"]
        if "passed" in st:
            table.add_row("self_test", f"{'passed' if st['passed'] else 'FAILED'} {st['version']}")
        console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
    return str(value)


# --- preflight --------------------------------------------------------------------


def _checks_table(title: str, checks: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("check", "measured", "limit", "result"):
        table.add_column(col)
    for c in checks:
        if c["passed"]:
            verdict = styled("pass", "green")
        elif c.get("overridden"):
            verdict = line(("overridden", "yellow"), f" ({c['override_reason']})")
        else:
            verdict = styled("FAIL", "bold red")
        safety = "" if c.get("safety", True) else " *"
        table.add_row(c["name"] + safety, c["measured"], c["limit"], verdict)
    return table


@click.command("preflight")
@link_options
@profile_option
@click.option(
    "--package",
    "package_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Also check compatibility and anti-rollback for this package (needs --trust).",
)
@click.option("--trust", "trust_path", type=click.Path(path_type=Path, dir_okay=False))
@json_option
def preflight_command(
    *,
    profile_path: Path | None,
    package_path: Path | None,
    trust_path: Path | None,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Run the preflight checks without writing anything (exit 6 when one fails)."""
    from bmsfw.package import DeviceFacts, verify_release
    from bmsfw.update.pipeline import release_facts

    profile = load_profile(profile_path)
    if package_path is not None and trust_path is None:
        raise UsageError("--package needs --trust ROOT.crt to verify it")
    results: list[dict[str, Any]] = []
    first_error: BmsfwError | None = None
    for session in _each_session(kwargs, profile):
        identity = session.identify()
        facts = None
        if package_path is not None and trust_path is not None:
            release = verify_release(
                package_path.read_bytes(),
                load_trust(trust_path),
                DeviceFacts(
                    identity.model,
                    identity.hw_revision,
                    identity.bootloader_version,
                    identity.security_counter,
                ),
            )
            facts = release_facts(release)
        report = run_preflight(session, profile.preflight, facts, node=identity.address)
        checks = [dataclasses.asdict(c) for c in report.checks]
        results.append({"node": identity.address or identity.serial, "checks": checks})

        try:
            report.raise_if_failed()
        except BmsfwError as exc:
            first_error = first_error or exc
    if as_json:
        print_json(results)
    else:
        for r in results:
            console.print(_checks_table(f"preflight {r['node']} ({profile.name})", r["checks"]))
        console.print("* non-safety check: may be overridden with a reason during `update`")
    if first_error is not None:
        raise first_error


# --- backup / restore / diff -------------------------------------------------------


@click.command("backup")
@link_options
@click.option(
    "--to",
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory for the backup (an external drive).",
)
@click.option(
    "--server",
    help="Also file the backup on this fleet server (cloud backup), e.g. https://fleet:8443.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding your operator token for --server.",
)
@click.option(
    "--ca",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA bundle that issued the server certificate (default: the system store).",
)
@click.option(
    "--reason",
    default="technician backup",
    show_default=True,
    help="Why the backup was taken (kept with the server copy).",
)
@json_option
def backup_command(
    *,
    directory: Path,
    server: str | None,
    token_file: Path | None,
    ca: Path | None,
    reason: str,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Back up configuration and calibration to a JSON file, verified by reading it back.

    With --server the same JSON document is then filed on the fleet server; if
    that fails, the local file is still good and the command says where it is.
    """
    from bmsfw.cli._main import exit_code_for
    from bmsfw.cli._render import print_error

    # Fail on a bad token file or CA before talking to the BMS at all.
    fleet = _cloud_backup_client(server, token_file, ca)
    out: list[dict[str, Any]] = []
    upload_failure: BmsfwError | None = None
    try:
        for session in _each_session(kwargs):
            backup = write_backup(directory, session.identify(), session.read_config())
            assert backup.path is not None
            record: dict[str, Any] = {
                "path": str(backup.path),
                "checksum": backup.snapshot.checksum,
            }
            out.append(record)
            if not as_json:
                console.print(f"backup written and read back: {backup.path}")
            if fleet is None:
                continue
            try:
                record["server"] = _upload_backup(fleet, backup.path, reason)
            except BmsfwError as exc:
                record["server_error"] = exc.to_dict()
                upload_failure = upload_failure or exc
                err_console.print(
                    line(
                        (f"the local backup is safe at {backup.path}", "bold"),
                        f" (written and read back); only the server copy failed: {exc}",
                    )
                )
                continue
            if not as_json:
                console.print(
                    f"  filed on {server} as backup {record['server']['id']} "
                    f"(sha256 {record['server']['sha256']}, same as the local file)",
                    highlight=False,
                )
    finally:
        if fleet is not None:
            fleet.close()
    if as_json:
        print_json(out)
    if upload_failure is not None:
        print_error(upload_failure)
        sys.exit(exit_code_for(upload_failure))


def _cloud_backup_client(
    server: str | None, token_file: Path | None, ca: Path | None
) -> FleetClient | None:
    if server is None:
        if token_file is not None or ca is not None:
            raise UsageError("--token-file and --ca only go with --server")
        return None
    if token_file is None:
        raise UsageError("--server needs --token-file (a file holding your operator token)")
    token = read_secret(token_file, "token file")
    # Plain HTTP only to this machine (a local test server), as `bmsfw fleet` does.
    from bmsfw.cli._fleet import loopback_url
    from bmsfw.fleet.client import ClientConfig, FleetClient

    loopback = server.lower().startswith("http://") and loopback_url(server)
    return FleetClient(ClientConfig(server, token, ca_file=ca, allow_insecure_http=loopback))


def _upload_backup(fleet: FleetClient, path: Path, reason: str) -> dict[str, Any]:
    """File the backup document exactly as written (and read back) on the server."""
    document = json.loads(path.read_text(encoding="utf-8"))
    info = fleet.upload_device_backup(document["identity"]["serial"], document, reason)
    return {
        "id": info.id,
        "sha256": info.sha256,
        "uploaded_by": info.uploaded_by,
        "created_at": info.created_at.isoformat(),
    }


@click.command("restore")
@link_options
@tester_options
@click.argument("backup_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--other-device", is_flag=True, help="Allow a backup taken from another BMS (serial differs)."
)
@json_option
def restore_command(
    *,
    backup_file: Path,
    other_device: bool,
    as_json: bool,
    tester_cert: Path | None,
    tester_key: Path | None,
    tester_key_passphrase_file: Path | None,
    **kwargs: Any,
) -> None:
    """Write a configuration backup to the BMS and read it back."""
    credentials = _credentials(tester_cert, tester_key, tester_key_passphrase_file)
    backup = load_backup(backup_file)
    documents = []
    for session in _each_session(kwargs):
        session.authenticate(credentials)
        now = restore_backup(session, backup, allow_other_device=other_device)
        documents.append({"restored": str(backup_file), "checksum": now.checksum})
        if not as_json:
            console.print(
                f"restored {backup_file} and read it back (checksum {now.checksum[:16]}…)"
            )
    if as_json:
        _print_json_per_node(documents)


@click.command("diff")
@link_options
@click.argument("backup_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--check", is_flag=True, help="Exit 7 (BMSFW-E507) when anything changed.")
@json_option
def diff_command(*, backup_file: Path, check: bool, as_json: bool, **kwargs: Any) -> None:
    """Compare the BMS configuration and calibration with a backup."""
    backup = load_backup(backup_file)
    all_changes = []
    documents = []
    for session in _each_session(kwargs):
        changes = diff_snapshots(backup.snapshot, session.read_config())
        all_changes.extend(changes)
        documents.append(
            {"backup": str(backup_file), "changes": [dataclasses.asdict(c) for c in changes]}
        )
        if as_json:
            continue
        if not changes:
            console.print(f"no changes: the BMS matches {backup_file}")
        else:
            table = Table(title=f"{len(changes)} value(s) differ from {backup_file.name}")
            for col in ("value", "backup", "BMS now"):
                table.add_column(col)
            for c in changes:
                table.add_row(c.path, repr(c.before), repr(c.after))
            console.print(table)
    if as_json:
        _print_json_per_node(documents)
    if check and all_changes:
        raise ConfigDriftError(f"{len(all_changes)} value(s) differ from {backup_file}")


# --- update -----------------------------------------------------------------------


class _ProgressSink:
    """Events -> rich progress bars on a terminal, and the real-time log (-v)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: Event) -> None:
        logger.info("%s", json.dumps(event_to_dict(event), default=str, ensure_ascii=False))
        if self.progress is None:
            return
        node = event.node
        if isinstance(event, StepStarted):
            self._task(node, event.step)
        elif isinstance(event, TransferProgress):
            task = self._task(node, "transfer")
            self.progress.update(task, total=event.total, completed=event.offset)
        elif isinstance(event, StepFinished) and not event.ok:
            self.progress.update(self._task(node, f"{event.step} FAILED"), completed=0)
        elif isinstance(event, CheckEvaluated) and not event.passed:
            mark = "overridden" if event.overridden else "FAIL"
            self.progress.console.print(
                f"{node}: preflight {event.name} {event.measured} (limit {event.limit}) {mark}"
            )
        elif isinstance(event, WarningRaised):
            self.progress.console.print(styled(f"{node}: {event.message}", "yellow"))
        elif isinstance(event, UpdateFinished):
            label = "done" if event.ok else f"stopped {event.error_code}"
            self.progress.update(self._task(node, label), description=f"{node} {label}")

    def _task(self, node: str, step: str) -> TaskID:
        assert self.progress is not None
        if node not in self.tasks:
            self.tasks[node] = self.progress.add_task(f"{node} {step}", total=None)
        self.progress.update(self.tasks[node], description=f"{node} {step}")
        return self.tasks[node]


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        yield progress


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Ctrl-C / SIGTERM ask the update to stop at its next safe point (a second one: now).

    Either way the run ends with its report and audit record written.
    """
    requested = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        err_console.print(
            f"{signal.Signals(signum).name}: stopping at the next safe point "
            "(the report and audit record are written; again to stop at once)",
            highlight=False,
            markup=False,
        )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested.is_set
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _ask(item: ManualConfirmation) -> bool:
    return click.confirm(f"Confirm: {one_line(item.text)}?", default=False, err=True)


def _credentials(
    cert: Path | None, key: Path | None, passphrase_file: Path | None = None
) -> TesterCredentials:
    """The tester certificate and key every command that writes to a BMS needs; refused
    before the link is opened when missing or locked, so nothing is read or written first."""
    if cert is None and key is None:
        raise TesterCredentialsRequiredError(
            "this command writes to the BMS: give --tester-cert and --tester-key"
        )
    if cert is None or key is None:
        raise UsageError("--tester-cert and --tester-key go together")
    return tester_credentials_from_files(cert, key, passphrase_file)


def _print_json_per_node(documents: list[dict[str, Any]]) -> None:
    """``--json`` of a command run on one or more BMS: one document on stdout, that of the
    one BMS or a list of them in the order given."""
    print_json(documents[0] if len(documents) == 1 else documents)


def _print_reports(reports: list[UpdateReport], as_json: bool) -> None:
    if as_json:
        _print_json_per_node([r.to_dict() for r in reports])
        return
    for report in reports:
        colour = "green" if report.ok else "bold red"
        console.print(styled("-" * 72, colour))
        console.print(_report_text(report), end="")


@click.command("update")
@link_options
@click.argument("package_path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--delta",
    "delta_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A delta package of the same release: sent instead when the BMS runs its base image.",
)
@trust_options
@profile_option
@record_options("Where the configuration backup goes (an external drive)")
@click.option(
    "--evidence",
    "evidence_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write one evidence bundle per BMS here (report, audit record, preflight, "
    "configuration before/after, bus trace); check it with `bmsfw evidence verify`.",
)
@click.option(
    "--confirm",
    "confirmed",
    multiple=True,
    metavar="ID",
    help="Give a manual confirmation of the profile by id (repeatable).",
)
@click.option(
    "--override",
    "overrides",
    multiple=True,
    metavar="CHECK",
    help="Override a failed non-safety check (link-quality, cell-spread, ble-link, "
    "ota-bandwidth); needs a reason.",
)
@click.option("--override-reason", default="", help="Why the override is acceptable (recorded).")
@tester_options
@click.option("--no-restore", is_flag=True, help="Report config changes, do not restore them.")
@click.option("--recovery", is_flag=True, help="Allow flashing a BMS stuck in its bootloader.")
@click.option("--reinstall", is_flag=True, help="Flash even if this version already runs.")
@click.option(
    "--allow-downgrade",
    "downgrade_reason",
    default="",
    metavar="REASON",
    help="Install a lower version than the BMS runs (recorded in report and audit log).",
)
@click.option("--ota", is_flag=True, help="Apply the OTA policy (refuses safety-critical).")
@click.option(
    "--broadcast",
    is_flag=True,
    help="RS485 string: every safety step per unit, the image sent once to all (unit 0).",
)
@click.option(
    "--activation",
    type=click.Choice(["all", "rolling"]),
    default=None,
    help="With --broadcast: reset all units at once (default) or K at a time.",
)
@click.option(
    "--rolling-k",
    type=click.IntRange(min=1),
    default=None,
    help="With --activation rolling: units reset per group (default 1).",
)
@json_option
def update_command(
    *,
    package_path: Path,
    delta_path: Path | None,
    trust_path: Path,
    crl_paths: tuple[Path, ...],
    profile_path: Path | None,
    backup_dir: Path,
    report_dir: Path | None,
    audit_log: Path | None,
    evidence_dir: Path | None,
    confirmed: tuple[str, ...],
    overrides: tuple[str, ...],
    override_reason: str,
    tester_cert: Path | None,
    tester_key: Path | None,
    tester_key_passphrase_file: Path | None,
    operator: str,
    no_restore: bool,
    recovery: bool,
    reinstall: bool,
    downgrade_reason: str,
    ota: bool,
    broadcast: bool,
    activation: str | None,
    rolling_k: int | None,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Update the firmware of one or more BMS safely (see docs/technician-howto.md).

    Several RS485 units (`--unit 1-8`) are updated one after another, or with
    `--broadcast` as one string: the image is sent once to all of them.

    Exit 0 when every node runs the new firmware confirmed; otherwise the exit
    code of the first failure (docs/cli.md) and a report per node.
    """
    from bmsfw.update.connect import SerialLink, open_sessions

    profile: UpdateProfile = load_profile(profile_path)
    links = links_from(kwargs, profile)
    on_serial = all(isinstance(link, SerialLink) for link in links)
    if broadcast and not on_serial:
        raise UsageError("--broadcast updates an RS485 string: name it with --serial PORT --unit …")
    if not broadcast and (activation is not None or rolling_k is not None):
        raise UsageError("--activation and --rolling-k belong to --broadcast")
    if rolling_k is not None and activation != "rolling":
        raise UsageError("--rolling-k needs --activation rolling")
    if broadcast and delta_path is not None:
        raise UsageError("a broadcast carries full images only: drop --delta or --broadcast")
    known = {c.id for c in profile.confirmations}
    unknown = set(confirmed) - known
    if unknown:
        raise UsageError(
            f"unknown confirmation id(s) {sorted(unknown)}; this profile asks: {sorted(known)}"
        )
    if overrides and not override_reason.strip():
        raise UsageError("--override needs --override-reason TEXT (it goes into the audit log)")
    options = UpdateOptions(
        backup_dir=backup_dir,
        credentials=_credentials(tester_cert, tester_key, tester_key_passphrase_file),
        confirmed=frozenset(confirmed),
        overrides=dict.fromkeys(overrides, override_reason),
        channel="ota" if ota else "wired",
        recovery=recovery,
        reinstall=reinstall,
        downgrade_reason=downgrade_reason,
        restore_config=not no_restore,
        audit_log=audit_log or backup_dir / "audit.jsonl",
        report_dir=report_dir or backup_dir / "reports",
        operator=operator,
    )
    try:
        package = package_path.read_bytes()
        delta = delta_path.read_bytes() if delta_path is not None else None
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    trust = load_trust(trust_path, crl_paths)
    interactive = sys.stdin.isatty() and not as_json
    ask = _ask if interactive else None
    string: StringReport | None = None
    notice = tell_before(package, links, profile, broadcast=broadcast, delta=delta is not None)
    with (
        _stop_on_signals() as stop,
        open_sessions(links) as conn,
        _progress(err_console.is_terminal and not as_json) as prog,
    ):
        options = dataclasses.replace(options, stop=stop)
        sink = _ProgressSink(prog)
        evidence = start_evidence(conn.sessions, links) if evidence_dir else None
        if broadcast:
            from bmsfw.protocol.modbus import ModbusSession
            from bmsfw.update.string import StringPolicy, run_string_update

            modbus = [s for s in conn.sessions if isinstance(s, ModbusSession)]
            policy = StringPolicy(activation="rolling" if activation == "rolling" else "all")
            if rolling_k is not None:
                policy = dataclasses.replace(policy, rolling_k=rolling_k)
            string = run_string_update(
                modbus, package, trust, options, policy=policy, profile=profile, sink=sink, ask=ask
            )
            reports = string.reports
        elif delta is not None:
            # delta or full is decided per BMS (each may run another image); in turn
            reports = [
                report
                for session in conn.sessions
                for report in run_updates(
                    [session],
                    package,
                    trust,
                    options,
                    profile=profile,
                    sink=sink,
                    ask=ask,
                    delta=delta,
                )
            ]
        elif on_serial and len(conn.sessions) > 1:
            # One RS485 bus carries one conversation at a time: update the units in turn.
            from bmsfw.update.string import run_one_by_one

            reports = run_one_by_one(
                conn.sessions, package, trust, options, profile=profile, sink=sink, ask=ask
            )
        else:
            reports = run_updates(
                conn.sessions, package, trust, options, profile=profile, sink=sink, ask=ask
            )
        if evidence is not None and evidence_dir is not None:
            write_evidence(evidence, evidence_dir, reports, options.audit_log, notice)
    if string is not None:
        if as_json:
            print_json(string.to_dict())
        else:
            _print_reports(reports, False)
            console.print(_string_table(string))
            console.print(string.summary(), highlight=False, markup=False)
    else:
        _print_reports(reports, as_json)
    tell_after(reports)  # UN R156: what happened, how long the pack was down
    _exit_for(reports)


def _string_table(string: StringReport) -> Table:
    table = Table(title=f"string {string.port} @ {string.rate}")
    for col in ("unit", "serial", "before", "now", "result", "step", "error", "repaired", "group"):
        table.add_column(col)
    for row in string.rows:
        colour = {"updated": "green", "already-installed": "green", "skipped": "yellow"}
        result = styled(row.outcome, colour.get(row.outcome, "bold red"))
        table.add_row(
            str(row.unit),
            row.serial,
            row.before,
            row.now,
            result,
            row.failed_step or "-",
            row.error_code or "-",
            str(row.repaired_blocks),
            str(row.group or "-"),
        )
    return table


# --- rollback ---------------------------------------------------------------------


@click.command("rollback")
@link_options
@tester_options
@record_options("Where the report and audit record go, as for `update`")
@click.option("--boot-timeout", "boot_timeout_s", type=float, default=30.0, show_default=True)
@json_option
def rollback_command(
    *,
    boot_timeout_s: float,
    as_json: bool,
    tester_cert: Path | None,
    tester_key: Path | None,
    tester_key_passphrase_file: Path | None,
    backup_dir: Path,
    report_dir: Path | None,
    audit_log: Path | None,
    operator: str,
    **kwargs: Any,
) -> None:
    """Return from an unconfirmed test image to the confirmed firmware.

    Only a test image is rolled back: an image that failed its self-test, was
    reverted, or never passed a self-test is never made the running image. With
    nothing to roll back to, nothing changes (exit 7, BMSFW-E517). Every run
    writes a report and an audit record, like an update.
    """
    from bmsfw.update.pipeline import RecordOptions, run_rollback
    from bmsfw.update.profile import BootLimits

    credentials = _credentials(tester_cert, tester_key, tester_key_passphrase_file)
    record = RecordOptions(
        backup_dir=backup_dir,
        audit_log=audit_log or backup_dir / "audit.jsonl",
        report_dir=report_dir or backup_dir / "reports",
        operator=operator,
    )
    profile = dataclasses.replace(
        UpdateProfile(),
        boot=BootLimits(boot_timeout_s=boot_timeout_s, revert_timeout_s=boot_timeout_s),
    )
    reports = [
        run_rollback(session, record, credentials=credentials, profile=profile)
        for session in _each_session(kwargs)
    ]
    if as_json:
        _print_reports(reports, True)
    else:
        for report in reports:
            console.print(_rollback_line(report), highlight=False, markup=False)
    _exit_for(reports)


def _rollback_line(report: UpdateReport) -> str:
    if report.ok:
        line = f"{report.node}: rolled back: {report.steps[-1].detail}"
    else:
        code, message = (report.error.code, report.error.message) if report.error else ("", "")
        line = (
            f"{report.node}: {'nothing changed' if report.outcome == 'refused' else 'FAILED'}"
            f" - {code}: {message}; the BMS runs "
            f"{report.running_version or 'unknown'}"
        )
    if report.report_path:
        line += f"\n  report: {report.report_path}"
    if report.record_error:
        line += f"\n  RECORD NOT WRITTEN: {report.record_error.message}"
    return line


# --- diagnose ---------------------------------------------------------------------


@click.command("diagnose")
@link_options
@click.option(
    "--package",
    "package_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Check this package's certificate chain and its fit with the BMS.",
)
@click.option("--trust", "trust_path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--samples", type=int, default=10, show_default=True, help="Supply samples.")
@click.option("--window", "window_s", type=float, default=2.0, show_default=True)
@json_option
def diagnose_command(
    *,
    package_path: Path | None,
    trust_path: Path | None,
    samples: int,
    window_s: float,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Link diagnostics, certificate chain, compatibility and supply stability.

    With --serial PORT it first scans the common baud rates (8E1 and 8N1) for the
    units given (default 1-16) and reports where they answer; a BMS that answers
    only at another baud rate than --baud is reported with the setting to use
    (exit 5). The per-unit checks follow when the units answer at --baud.
    """
    from bmsfw.update.diagnose import diagnose

    if package_path is not None and trust_path is None:
        raise UsageError("--package needs --trust ROOT.crt")
    package = package_path.read_bytes() if package_path else None
    trust = load_trust(trust_path) if trust_path else None
    scan: dict[str, Any] | None = None
    if kwargs.get("serial") is not None:
        scan, found = _scan_serial_link(kwargs, as_json)
        if not found:
            if as_json:
                print_json({"scan": scan, "diagnose": []})
            return
        kwargs["units"] = (tuple(found),)
    results = []
    for session in _each_session(kwargs):
        results.append(
            diagnose(session, package=package, trust=trust, samples=samples, window_s=window_s)
        )
    if as_json:
        if scan is not None:
            print_json({"scan": scan, "diagnose": [r.to_dict() for r in results]})
        else:
            print_json([r.to_dict() for r in results])
        return
    for result in results:
        table = Table(title=f"diagnose {result.node}")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail")
        for item in result.items:
            verdict = styled("ok", "green") if item.ok else styled("problem", "bold red")
            table.add_row(item.name, verdict, item.detail)
        console.print(table)


def _scan_serial_link(kwargs: dict[str, Any], as_json: bool) -> tuple[dict[str, Any], list[int]]:
    """Baud-rate and unit scan of an RS485 port; returns (scan as JSON, units answering at
    --baud that were asked for). Raises when nothing answers at --baud, after printing."""
    from bmsfw.cli._link import flatten_units
    from bmsfw.protocol.modbus import scan_serial
    from bmsfw.protocol.modbus.errors import ModbusFrameError, ModbusNoReplyError

    port: str = kwargs["serial"]
    baud: int = kwargs["baud"]
    asked = flatten_units(kwargs["units"])
    units = asked or tuple(range(1, 17))
    timeout_s = kwargs["timeout_s"] or 0.05
    report = scan_serial(port, units=units, timeout_s=timeout_s, expected_baud_bps=baud)
    at_baud = sorted({h.unit for h in report.hits if h.baud_bps == baud})
    data: dict[str, Any] = {
        "port": report.port,
        "expected_baud": baud,
        "baud_mismatch": report.baud_mismatch,
        "settings": [dataclasses.asdict(st) | {"rate": st.rate} for st in report.settings],
        "units": [dataclasses.asdict(h) for h in report.hits],
        "notes": list(report.notes),
    }
    if not as_json:
        rates = Table(title=f"serial scan of {port}, units {_ranges(units)}")
        for col in ("setting", "answer"):
            rates.add_column(col)
        for st in report.settings:
            if st.units:
                answer = styled(f"units {_ranges(st.units)}", "green")
            elif st.garbled:
                answer = styled(f"garbage from {st.garbled} request(s): wrong setting", "yellow")
            else:
                answer = styled("silent", "")
            mark = " (--baud)" if st.baud_bps == baud else ""
            rates.add_row(f"{st.rate}{mark}", answer)
        console.print(rates)
        nodes = Table(title=f"BMS found ({len(report.hits)})")
        for col in ("unit", "setting", "vendor", "model", "serial", "firmware"):
            nodes.add_column(col)
        for h in report.hits:
            setting = f"{h.baud_bps} 8{h.parity}{h.stopbits}"
            nodes.add_row(str(h.unit), setting, h.vendor, h.model, h.serial, h.app_version)
        console.print(nodes)
        for note in report.notes:
            console.print(f"note: {note}", highlight=False, markup=False)
    if not report.hits:
        if as_json:
            print_json({"scan": data, "diagnose": []})
        raise ModbusNoReplyError(
            f"no unit of {_ranges(units)} answered on {port} at any of "
            f"{len(report.settings)} settings"
        )
    if not at_baud:
        if as_json:
            print_json({"scan": data, "diagnose": []})
        where = sorted({f"{h.baud_bps} 8{h.parity}{h.stopbits}" for h in report.hits})
        found_units = _ranges(sorted({h.unit for h in report.hits}))
        raise ModbusFrameError(
            f"baud rate mismatch: nothing answers at --baud {baud}, but units {found_units} "
            f"answer at {', '.join(where)}; use --baud {report.hits[0].baud_bps} "
            "(or set the BMS to the adapter's rate)"
        )
    return data, [u for u in at_baud if not asked or u in asked]


def _ranges(units: Any) -> str:
    """(1, 2, 3, 5) -> '1-3,5'."""
    out: list[str] = []
    for unit in sorted(units):
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == unit - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{unit}"
        elif out and "-" not in out[-1] and int(out[-1]) == unit - 1:
            out[-1] = f"{out[-1]}-{unit}"
        else:
            out.append(str(unit))
    return ",".join(out)


# --- report -----------------------------------------------------------------------


@click.command("report")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--audit", is_flag=True, help="PATH is an audit log: verify its chain and list it.")
@json_option
def report_command(*, path: Path, audit: bool, as_json: bool) -> None:
    """Show a saved update report, or verify and list an audit log (--audit)."""
    if audit:
        records = verify_audit_log(path)
        if as_json:
            print_json(records)
            return
        table = Table(title=f"audit log {path}: {len(records)} records, chain intact")
        for col in ("seq", "time", "who", "device", "package", "result", "error"):
            table.add_column(col)
        for r in records:
            table.add_row(
                _audit_field(r, "seq"),
                _audit_field(r, "time"),
                _audit_field(r, "who"),
                f"{_audit_field(r, 'device', 'model')} {_audit_field(r, 'device', 'serial')}",
                _audit_field(r, "package", "version"),
                _audit_field(r, "result"),
                _audit_field(r, "error_code"),
            )
        console.print(table)
        return
    report = load_report(path)
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(_report_text(report), end="")


def _report_text(report: UpdateReport) -> str:
    """The report as text, every string in it one line and safe (a serial cannot forge a
    line); a report file whose fields have another shape is refused with its code."""
    try:
        return render_text(clean(report))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise ReportUnreadableError(
            f"its fields do not have the shape of a bmsfw update report "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _audit_field(record: dict[str, Any], *keys: str) -> str:
    """One value of an audit record as one line of text ('' where the record has none:
    an intact chain says nothing about the fields a writer put in)."""
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return "" if value is None else one_line(value)


FIELD_COMMANDS = (
    scan_command,
    info_command,
    preflight_command,
    backup_command,
    restore_command,
    diff_command,
    update_command,
    rollback_command,
    diagnose_command,
    report_command,
)
