"""Gathering an update's evidence: tap the links while it runs, then write the bundles.

The I/O shell around :mod:`bmsfw.evidence.bundle`: attaches a recorder to the
bus of every open session (``session.bus``: a WireBus on CAN, a ModbusBus on
RS485; ``session.frame_tap`` on SMP: every SMP message), and after the update
reads what each bundle holds — the backup file, the audit log, the configuration
as the BMS has it now — and writes one bundle
per device. Nothing here decides anything about the update itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bmsfw.errors import BmsfwError
from bmsfw.evidence.bundle import (
    AuditPosition,
    BusTrace,
    EvidenceInputs,
    blf_bytes,
    build_bundle,
    bundle_name,
)
from bmsfw.evidence.notice import UpdateNotice, after_text
from bmsfw.link.tap import CanFrameRecorder, SerialFrameRecorder
from bmsfw.link.wirebus import WireBus
from bmsfw.protocol.session import BmsSession
from bmsfw.update.audit import verify_audit_log
from bmsfw.update.errors import AuditLogTamperedError
from bmsfw.update.report import UpdateReport

__all__ = ["EvidenceCollector", "audit_position"]

logger = logging.getLogger(__name__)

Recorder = CanFrameRecorder | SerialFrameRecorder


def audit_position(log: Path, record_hash: str) -> tuple[AuditPosition | None, str]:
    """This update's record in ``log`` and whether the chain holds; else why not."""
    if not record_hash:
        return None, "the update wrote no audit record"
    problem = ""
    try:
        records = verify_audit_log(log)
        intact = True
    except AuditLogTamperedError as exc:
        intact, problem = False, str(exc)
        records = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    for record in records:
        if isinstance(record, dict) and record.get("hash") == record_hash:
            position = int(record.get("seq", -1))
            return AuditPosition(str(log), position, record, intact, len(records), problem), ""
    return None, f"no record with hash {record_hash[:16]}… in {log}"


class EvidenceCollector:
    """Records the bus of each session from now on; :meth:`write` makes the bundles."""

    def __init__(self, sessions: Sequence[BmsSession], *, link: str = "") -> None:
        self.sessions = list(sessions)
        self.link = link
        self._recorders: list[Recorder | None] = []
        self._attached: list[tuple[Any, Recorder]] = []
        by_bus: dict[int, Recorder] = {}  # RS485 units share one bus and one record
        for session in self.sessions:
            # The link's tap: a WireBus (CAN), a ModbusBus (RS485), or an SMP transport's
            bus = getattr(session, "frame_tap", None) or getattr(session, "bus", None)
            recorder: Recorder | None = by_bus.get(id(bus))
            if recorder is None and isinstance(bus, WireBus):
                recorder = CanFrameRecorder()
                bus.add_listener(recorder)
            elif recorder is None and bus is not None and hasattr(bus, "add_listener"):
                recorder = SerialFrameRecorder()
                bus.add_listener(recorder)
            if recorder is not None and id(bus) not in by_bus:
                by_bus[id(bus)] = recorder
                self._attached.append((bus, recorder))
            self._recorders.append(recorder)

    def close(self) -> None:
        for bus, recorder in self._attached:
            bus.remove_listener(recorder)
        self._attached = []

    def __enter__(self) -> EvidenceCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _trace(self, recorder: Recorder | None) -> BusTrace | None:
        if isinstance(recorder, CanFrameRecorder):
            messages = recorder.messages()
            return BusTrace("can-blf", blf_bytes(messages), len(messages))
        if isinstance(recorder, SerialFrameRecorder):
            return BusTrace("serial-log", recorder.lines().encode(), len(recorder))
        return None

    def inputs(
        self,
        session: BmsSession,
        report: UpdateReport,
        recorder: Recorder | None,
        audit_log: Path | None,
        notice: UpdateNotice | None = None,
    ) -> EvidenceInputs:
        from bmsfw import __version__

        before: dict[str, Any] | None = None
        backup_path = report.backup.path
        if backup_path:
            try:
                before = json.loads(Path(backup_path).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                logger.warning("evidence: backup %s unreadable: %s", backup_path, exc)
        after: dict[str, Any] | None = None
        after_problem = ""
        try:
            after = dataclasses.asdict(session.read_config())
        except BmsfwError as exc:
            after_problem = f"{exc.code}: {exc.message}"
        audit, audit_problem = (
            audit_position(audit_log, report.audit_hash)
            if audit_log is not None
            else (None, "no audit log was kept for this update")
        )
        return EvidenceInputs(
            report=report,
            created_at=time.time(),
            bmsfw_version=__version__,
            audit=audit,
            audit_problem=audit_problem,
            config_before=before,
            config_after=after,
            config_after_problem=after_problem,
            trace=self._trace(recorder),
            link=self.link,
            notice_before=notice.text() if notice is not None else "",
            notice_after=after_text(report),
        )

    def bundle(
        self,
        index: int,
        report: UpdateReport,
        *,
        audit_log: Path | None,
        notice: UpdateNotice | None = None,
    ) -> bytes:
        """The bundle of session ``index`` (stops recording: the update is over)."""
        self.close()
        session, recorder = self.sessions[index], self._recorders[index]
        return build_bundle(self.inputs(session, report, recorder, audit_log, notice))

    def write(
        self,
        directory: Path,
        reports: Sequence[UpdateReport],
        *,
        audit_log: Path | None,
        notice: UpdateNotice | None = None,
    ) -> list[Path]:
        """One bundle per device, in the order of the sessions (reports in the same order)."""
        self.close()  # the update is over: what follows is not part of its record
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        if len(reports) != len(self.sessions):
            logger.warning(
                "evidence: %d reports for %d sessions; pairing in order",
                len(reports),
                len(self.sessions),
            )
        for index, report in enumerate(reports[: len(self.sessions)]):
            data = self.bundle(index, report, audit_log=audit_log, notice=notice)
            path = directory / bundle_name(report)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            paths.append(path)
        return paths
