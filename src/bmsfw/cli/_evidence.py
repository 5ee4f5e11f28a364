"""`bmsfw evidence verify BUNDLE`, and what `bmsfw update` adds for evidence: the
notice before and after the update (UN R156) and the bundles of `--evidence DIR`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bmsfw.cli._render import Table, clean, console, err_console, print_json
from bmsfw.evidence.errors import EvidenceBundleUnreadableError

if TYPE_CHECKING:
    from bmsfw.evidence.collect import EvidenceCollector
    from bmsfw.evidence.notice import UpdateNotice
    from bmsfw.protocol.session import BmsSession
    from bmsfw.update.profile import UpdateProfile
    from bmsfw.update.report import UpdateReport

__all__ = ["evidence_group", "start_evidence", "tell_after", "tell_before", "write_evidence"]


def tell_before(
    package: bytes, links: Sequence[Any], profile: UpdateProfile, *, broadcast: bool, delta: bool
) -> UpdateNotice | None:
    """Print what will happen and how long each pack is out of service (stderr)."""
    from bmsfw.evidence.notice import notice_for_links

    notice = notice_for_links(package, links, profile, broadcast=broadcast, delta=delta)
    if notice is not None:
        err_console.print(notice.text(), highlight=False, markup=False, end="")
    return notice


def tell_after(reports: Sequence[UpdateReport]) -> None:
    """Print, per pack, what happened and how long it was out of service (stderr)."""
    from bmsfw.evidence.notice import after_text

    for report in reports:
        err_console.print(after_text(clean(report)), end="")  # device text on one line each


def start_evidence(sessions: Sequence[BmsSession], links: Sequence[Any]) -> EvidenceCollector:
    """Start recording the bus of every session (``--evidence``)."""
    from bmsfw.evidence.collect import EvidenceCollector

    return EvidenceCollector(sessions, link=", ".join(str(link) for link in links))


def write_evidence(
    collector: EvidenceCollector,
    directory: Path,
    reports: Sequence[UpdateReport],
    audit: Path | None,
    notice: UpdateNotice | None,
) -> None:
    """One bundle per BMS; prints each path with its SHA-256 (keep it to pin the bundle)."""
    for path in collector.write(directory, reports, audit_log=audit, notice=notice):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        err_console.print(f"evidence: {path} (sha256 {digest})", highlight=False, markup=False)


@click.group("evidence")
def evidence_group() -> None:
    """Evidence bundles written by `bmsfw update --evidence DIR`."""


@evidence_group.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_command(*, bundle: Path, as_json: bool) -> None:
    """Check BUNDLE against its manifest; exit 7 (BMSFW-E544) when one byte changed."""
    from bmsfw.evidence.bundle import verify_bundle  # imports python-can: not at CLI start

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
