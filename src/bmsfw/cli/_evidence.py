"""`bmsfw evidence verify BUNDLE`: check an update's evidence bundle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click
from rich.table import Table

from bmsfw.cli._render import console, print_json
from bmsfw.evidence.bundle import verify_bundle
from bmsfw.evidence.errors import EvidenceBundleUnreadableError

__all__ = ["evidence_group"]


@click.group("evidence")
def evidence_group() -> None:
    """Evidence bundles written by `bmsfw update --evidence DIR`."""


@evidence_group.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_command(*, bundle: Path, as_json: bool) -> None:
    """Check BUNDLE against its manifest; exit 7 (BMSFW-E544) when one byte changed."""
    try:
        data = bundle.read_bytes()
    except OSError as exc:
        raise EvidenceBundleUnreadableError(f"cannot read {bundle}: {exc.strerror}") from exc
    verified = verify_bundle(data)
    manifest = verified.manifest
    digest = hashlib.sha256(data).hexdigest()
    if as_json:
        print_json({"bundle": str(bundle), "sha256": digest, "ok": True, "manifest": manifest})
        return
    device = manifest.get("device", {})
    table = Table(title=f"{bundle}: intact (sha256 {digest[:16]}…)")
    for column in ("file", "bytes", "sha256"):
        table.add_column(column)
    for entry in manifest["files"]:
        table.add_row(str(entry["name"]), str(entry["size"]), str(entry["sha256"])[:16] + "…")
    console.print(table)
    trace = manifest.get("bus_trace") or {}
    console.print(
        f"device {device.get('serial', '?')} ({device.get('model', '?')}), "
        f"outcome {manifest.get('outcome')}, runs {manifest.get('running_version')}, "
        f"bus trace {trace.get('file', 'none')} ({trace.get('frames', 0)} frames)",
        highlight=False,
        markup=False,
    )
