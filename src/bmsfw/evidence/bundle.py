"""The evidence bundle of one update on one BMS: build it, verify it.

A bundle is a zip any unzip opens, in one canonical layout (entries stored
uncompressed in a fixed order, fixed timestamps and attributes), holding

==================  ===============================================================
manifest.json       format, device, outcome, bmsfw version, and every other file
                    with its size and SHA-256
report.json         the update report (machine-readable)
report.txt          the same report as the technician read it
audit-record.json   the audit record of this update and its position in the hash
                    chain (or why there is none)
package.json        the package digests and the verification result
preflight.json      every preflight check: measured value, limit, verdict
config-before.json  the configuration backup taken before the update
config-after.json   the configuration read back after the update (or why not)
notice.txt          what the person on site was told before and after the update
bus.blf             CAN: every frame of the session, Vector BLF (python-can writer)
bus-frames.log      RS485/serial: every frame written and every chunk read, timestamped
==================  ===============================================================

:func:`verify_bundle` refuses a bundle when any listed file's digest differs,
a file is missing or added, or the archive is not byte for byte the canonical
form of its contents — so one changed byte anywhere is refused
(:class:`~bmsfw.evidence.errors.EvidenceBundleTamperedError`, BMSFW-E544).
A bundle proves integrity against accidents and casual edits, not authorship:
whoever can rewrite it can rewrite its manifest too; keep the bundle's SHA-256
(printed when it is written) elsewhere to pin it.

Pure: bytes in, bytes out. :mod:`bmsfw.evidence.collect` gathers the inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import can

from bmsfw.evidence.errors import EvidenceBundleTamperedError, EvidenceBundleUnreadableError
from bmsfw.update.report import UpdateReport, render_text

__all__ = [
    "BUNDLE_FORMAT",
    "AuditPosition",
    "BusTrace",
    "EvidenceInputs",
    "VerifiedBundle",
    "blf_bytes",
    "build_bundle",
    "bundle_name",
    "verify_bundle",
]

BUNDLE_FORMAT = "bmsfw-evidence/1"
MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class AuditPosition:
    """Where this update's record sits in the audit log's hash chain."""

    log: str
    position: int  # the record's ``seq``
    record: Mapping[str, Any]
    chain_intact: bool
    records_in_log: int
    problem: str = ""


@dataclass(frozen=True)
class BusTrace:
    kind: Literal["can-blf", "serial-log"]
    data: bytes
    frames: int

    @property
    def name(self) -> str:
        return "bus.blf" if self.kind == "can-blf" else "bus-frames.log"


@dataclass(frozen=True)
class EvidenceInputs:
    """Everything one bundle holds; gathered by :mod:`bmsfw.evidence.collect`."""

    report: UpdateReport
    created_at: float
    bmsfw_version: str
    audit: AuditPosition | None = None
    audit_problem: str = ""  # why there is no audit position
    config_before: Mapping[str, Any] | None = None
    config_after: Mapping[str, Any] | None = None
    config_after_problem: str = ""  # why the configuration was not read back
    trace: BusTrace | None = None
    link: str = ""  # the link as named on the command line
    notice_before: str = ""  # what the person on site was told before the update
    notice_after: str = ""  # and after it


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Mapping[str, Any]
    files: Mapping[str, bytes] = field(repr=False)

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)).encode()


def blf_bytes(messages: Sequence[can.Message]) -> bytes:
    """``messages`` as a Vector BLF file, written by python-can's ``BLFWriter``."""

    class _Keep(io.BytesIO):
        def close(self) -> None:  # BLFWriter closes its file; keep the bytes readable
            pass

    buffer = _Keep()
    writer = can.BLFWriter(buffer)
    for msg in messages:
        writer.on_message_received(msg)
    writer.stop()
    return buffer.getvalue()


def _package_record(report: UpdateReport) -> dict[str, Any]:
    verified = next((s for s in report.steps if s.step == "verify-package"), None)
    if verified is None:
        result = "not reached"
    elif verified.ok:
        result = "verified"
    else:
        result = "refused"
    keys = ("product", "version", "security_counter", "safety_class", "signer")
    package = report.package.to_dict()
    return {
        "sha256": package.get("sha256", ""),
        "payload_sha256": package.get("payload_sha256", ""),
        "delta_sha256": package.get("delta_sha256", ""),
        "payload": package.get("payload", ""),
        "encoding": package.get("encoding", ""),
        "verification": {
            "result": result,
            "detail": verified.detail if verified is not None else "",
            "error": (
                report.error.to_dict()
                if report.error and report.failed_step == "verify-package"
                else {}
            ),
            **{k: package[k] for k in keys if k in package},
        },
    }


def _files(inputs: EvidenceInputs) -> list[tuple[str, bytes]]:
    report = inputs.report
    recorded = report.to_dict()  # the report's JSON form, for the parts filed apart
    audit: dict[str, Any]
    if inputs.audit is not None:
        a = inputs.audit
        audit = {
            "log": a.log,
            "position": a.position,
            "records_in_log": a.records_in_log,
            "chain_intact": a.chain_intact,
            "problem": a.problem,
            "record": dict(a.record),
        }
    else:
        audit = {"record": None, "problem": inputs.audit_problem or "no audit log was written"}
    after: dict[str, Any] = (
        {"read_back": True, "snapshot": dict(inputs.config_after)}
        if inputs.config_after is not None
        else {"read_back": False, "problem": inputs.config_after_problem or "not read"}
    )
    before: dict[str, Any] = (
        {"backup_path": report.backup.path or "", "backup": dict(inputs.config_before)}
        if inputs.config_before is not None
        else {"backup_path": "", "backup": None, "problem": "no backup was taken"}
    )
    files = [
        ("report.json", report.to_json().encode()),
        ("report.txt", render_text(report).encode()),
        ("audit-record.json", _json(audit)),
        ("package.json", _json(_package_record(report))),
        ("preflight.json", _json({"checks": recorded["preflight"]})),
        ("config-before.json", _json(before)),
        ("config-after.json", _json({**after, "changes": recorded["config_changes"]})),
    ]
    if inputs.notice_before or inputs.notice_after:
        files.append(("notice.txt", (inputs.notice_before + inputs.notice_after).encode()))
    if inputs.trace is not None:
        files.append((inputs.trace.name, inputs.trace.data))
    return files


def _manifest(inputs: EvidenceInputs, files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    report = inputs.report
    dev = report.device_before
    return {
        "format": BUNDLE_FORMAT,
        "created_at": inputs.created_at,
        "bmsfw_version": inputs.bmsfw_version,
        "device": {
            "node": report.node,
            "serial": report.serial,
            "model": dev.model if dev else "",
            "hw_revision": dev.hw_revision if dev else "",
        },
        "link": inputs.link,
        "outcome": report.outcome,
        "running_version": report.running_version,
        "audit_hash": report.audit_hash,
        "bus_trace": (
            {"file": inputs.trace.name, "kind": inputs.trace.kind, "frames": inputs.trace.frames}
            if inputs.trace is not None
            else None
        ),
        "files": [
            {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files
        ],
    }


def _zip(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """The canonical archive: stored entries, fixed times and attributes, given order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def build_bundle(inputs: EvidenceInputs) -> bytes:
    """The bundle's bytes (see the module docstring for what it holds)."""
    files = _files(inputs)
    manifest = _json(_manifest(inputs, files))
    return _zip([(MANIFEST, manifest), *files])


def bundle_name(report: UpdateReport) -> str:
    """``evidence_<serial>_<UTC start>.zip``, safe as a file name."""
    import time

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(report.started_at))
    serial = report.serial or report.node or "unknown"
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in serial)
    return f"evidence_{safe}_{stamp}.zip"


def verify_bundle(data: bytes) -> VerifiedBundle:
    """Check a bundle; raise BMSFW-E543 (not a bundle) or BMSFW-E544 (changed)."""
    if not data or not (data.startswith(b"PK") or zipfile.is_zipfile(io.BytesIO(data))):
        raise EvidenceBundleUnreadableError("not a zip archive")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            # A bundle's entries are stored, so together they are never larger than the
            # archive: anything else (a compressed entry, a size that lies) is refused
            # before a byte is inflated (a small upload must not become gigabytes).
            packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
            if packed:
                raise EvidenceBundleTamperedError(f"compressed entries {packed[:5]}")
            if sum(i.file_size for i in infos) > len(data):
                raise EvidenceBundleTamperedError("the entries are larger than the archive")
            names = archive.namelist()
            contents = {name: archive.read(name) for name in names}
    except EvidenceBundleTamperedError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise EvidenceBundleTamperedError(f"the archive is damaged: {exc}") from exc
    except Exception as exc:  # zlib/struct errors from a damaged header
        raise EvidenceBundleTamperedError(f"the archive is damaged: {exc!r}") from exc
    if not names or names[0] != MANIFEST:
        raise EvidenceBundleTamperedError(f"the first entry is not {MANIFEST}")
    try:
        manifest = json.loads(contents[MANIFEST])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EvidenceBundleTamperedError(f"{MANIFEST} is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise EvidenceBundleTamperedError(f"{MANIFEST} is not a {BUNDLE_FORMAT} manifest")
    listed = manifest.get("files")
    if not isinstance(listed, list) or not all(isinstance(f, dict) for f in listed):
        raise EvidenceBundleTamperedError(f"{MANIFEST} has no file list")
    order = [str(f.get("name")) for f in listed]
    if names[1:] != order:
        extra = sorted(set(names[1:]) - set(order))
        missing = sorted(set(order) - set(names[1:]))
        raise EvidenceBundleTamperedError(
            f"the files differ from the manifest (added {extra}, missing {missing})"
            if extra or missing
            else "the files are not in the manifest's order"
        )
    for entry in listed:
        name = str(entry["name"])
        digest = hashlib.sha256(contents[name]).hexdigest()
        if digest != entry.get("sha256") or len(contents[name]) != entry.get("size"):
            raise EvidenceBundleTamperedError(f"{name} does not match its SHA-256 in {MANIFEST}")
    if _zip([(name, contents[name]) for name in names]) != data:
        raise EvidenceBundleTamperedError(
            "the archive is not the canonical form of its contents (bytes outside the "
            "listed files were changed)"
        )
    return VerifiedBundle(manifest, contents)
