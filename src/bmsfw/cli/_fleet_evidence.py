"""``bmsfw fleet evidence SERIAL``: a device's update record on the fleet server (one
evidence bundle per update its gateway ran or an operator filed), listed or downloaded
and checked; ``bmsfw fleet evidence upload FILE``: file the bundle of an update done on
site (``bmsfw update --evidence DIR``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bmsfw.cli._render import Table, console, print_json

if TYPE_CHECKING:
    from bmsfw.fleet.evidence import EvidenceInfo

__all__ = ["fleet_evidence_command"]

_COLUMNS = ["id", "received_at", "outcome", "running_version", "campaign_id", "filed", "sha256"]


class _ListByDefault(click.Group):
    """``evidence SERIAL ...`` is ``evidence list SERIAL ...`` (the command as it was
    before ``upload`` came); a device named like a subcommand needs ``list``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["list", *args]
        return super().parse_args(ctx, args)


def _row(record: Any) -> dict[str, Any]:
    row: dict[str, Any] = record.model_dump(mode="json")
    return row


def _table(
    title: str, records: list[EvidenceInfo], rows: list[dict[str, Any]], columns: list[str]
) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for record, row in zip(records, rows, strict=True):
        shown = {**row, "filed": record.provenance}  # "filed by operator tech-anna", ...
        cells = ["" if shown.get(c) is None else str(shown[c]) for c in columns]
        cells[columns.index("sha256")] = cells[columns.index("sha256")][:16] + "…"
        table.add_row(*cells)
    return table


def _file_name(serial: str, evidence_id: int, sha256: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in serial)[:64]
    return f"evidence_{safe}_{evidence_id}_{sha256[:12]}.zip"


def fleet_evidence_command(
    server_options: Callable[[Any], Any], client: Callable[..., Any]
) -> click.Command:
    """The command group, wired to the fleet group's server options and client factory."""

    @click.group("evidence", cls=_ListByDefault, no_args_is_help=True)
    def group() -> None:
        """A device's evidence bundles on the fleet server: `evidence SERIAL` lists or
        downloads them, `evidence upload FILE` files one from an update done on site."""

    @group.command("list")
    @server_options
    @click.argument("serial")
    @click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Download the bundles into this directory (each checked as `bmsfw evidence "
        "verify` does); without it they are listed.",
    )
    @click.option("--id", "evidence_id", type=click.IntRange(min=1), default=None,
                  help="Only this bundle (an id from the list).")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def command(  # noqa: PLR0917 - one parameter per click option
        server: str,
        token: str | None,
        ca: Path | None,
        serial: str,
        out: Path | None,
        evidence_id: int | None,
        as_json: bool,
    ) -> None:
        """List or download the evidence bundles the server keeps for device SERIAL."""
        with client(server, token, ca) as fleet:
            records = fleet.list_device_evidence(serial)
            if evidence_id is not None:
                records = [r for r in records if r.id == evidence_id]
                if not records:
                    from bmsfw.fleet.errors import FleetNotFoundError

                    raise FleetNotFoundError(f"device {serial!r} has no evidence {evidence_id}")
            rows = [_row(r) for r in records]
            if out is not None:
                from bmsfw.evidence.bundle import verify_bundle

                out.mkdir(parents=True, exist_ok=True)
                for record, row in zip(records, rows, strict=True):
                    data = fleet.download_evidence(record.id)
                    if hashlib.sha256(data).hexdigest() != record.sha256:
                        from bmsfw.fleet.errors import DownloadDigestMismatchError

                        raise DownloadDigestMismatchError(
                            f"evidence {record.id}: the bytes differ from the listed SHA-256"
                        )
                    path = out / _file_name(serial, record.id, record.sha256)
                    tmp = path.with_name(path.name + ".part")
                    tmp.write_bytes(data)
                    tmp.replace(path)
                    verify_bundle(data)  # E543/E544 when the stored bundle is not intact
                    row["file"] = str(path)
        if as_json:
            print_json(rows)
            return
        columns = [*_COLUMNS, "file"] if out is not None else _COLUMNS
        console.print(
            _table(f"evidence of {serial}: {len(rows)} bundle(s)", records, rows, columns)
        )

    @group.command("upload")
    @server_options
    @click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--serial",
        default=None,
        help="The device it must be of (default: the one its manifest names).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def upload(  # noqa: PLR0917 - one parameter per click option
        server: str,
        token: str | None,
        ca: Path | None,
        bundle: Path,
        serial: str | None,
        as_json: bool,
    ) -> None:
        """File BUNDLE, written by `bmsfw update --evidence DIR` on site, as the update
        record of its device (operator token); the server verifies it first."""
        data = bundle.read_bytes()
        with client(server, token, ca) as fleet:
            record = fleet.file_evidence(data, serial)
        row = _row(record)
        if as_json:
            print_json(row)
            return
        title = f"evidence of {record.device_serial}: filed as record {record.id}"
        console.print(_table(title, [record], [row], _COLUMNS))

    return group
