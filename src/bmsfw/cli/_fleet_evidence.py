"""``bmsfw fleet evidence SERIAL``: a device's update record on the fleet server (one
evidence bundle per update its gateway ran), listed or downloaded and checked."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bmsfw.cli._render import Table, console, print_json

__all__ = ["fleet_evidence_command"]


def _file_name(serial: str, evidence_id: int, sha256: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in serial)[:64]
    return f"evidence_{safe}_{evidence_id}_{sha256[:12]}.zip"


def fleet_evidence_command(
    server_options: Callable[[Any], Any], client: Callable[..., Any]
) -> click.Command:
    """The command, wired to the fleet group's server options and client factory."""

    @click.command("evidence")
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
            rows = [r.model_dump(mode="json") for r in records]
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
        table = Table(title=f"evidence of {serial}: {len(rows)} bundle(s)")
        columns = ["id", "received_at", "outcome", "running_version", "campaign_id", "sha256"]
        if out is not None:
            columns.append("file")
        for column in columns:
            table.add_column(column)
        for row in rows:
            cells = ["" if row.get(c) is None else str(row[c]) for c in columns]
            cells[columns.index("sha256")] = cells[columns.index("sha256")][:16] + "…"
            table.add_row(*cells)
        console.print(table)

    return command
