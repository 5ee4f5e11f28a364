"""The transport-independent update pipeline: preflight, backup, transfer, self-test,
confirm or roll back, report and audit. It talks to a BMS only through a
:class:`bmsfw.protocol.session.BmsSession` (see :mod:`bmsfw.update.connect` to open one).
"""

from bmsfw.update.audit import AuditLog, verify_audit_log
from bmsfw.update.backup import (
    ConfigBackup,
    ConfigChange,
    diff_snapshots,
    load_backup,
    restore_backup,
    write_backup,
)
from bmsfw.update.connect import CanLink, Connection, SerialLink, open_sessions, parse_links
from bmsfw.update.events import (
    CheckEvaluated,
    Event,
    EventSink,
    StepFinished,
    StepStarted,
    TransferProgress,
    UpdateFinished,
    WarningRaised,
)
from bmsfw.update.pipeline import UpdateOptions, run_update, run_updates
from bmsfw.update.preflight import CheckResult, PreflightReport, ReleaseFacts, run_preflight
from bmsfw.update.profile import ManualConfirmation, UpdateProfile, load_profile
from bmsfw.update.report import UpdateReport, load_report, render_text, write_report

__all__ = [
    "AuditLog",
    "CanLink",
    "CheckEvaluated",
    "CheckResult",
    "ConfigBackup",
    "ConfigChange",
    "Connection",
    "Event",
    "EventSink",
    "ManualConfirmation",
    "PreflightReport",
    "ReleaseFacts",
    "SerialLink",
    "StepFinished",
    "StepStarted",
    "TransferProgress",
    "UpdateFinished",
    "UpdateOptions",
    "UpdateProfile",
    "UpdateReport",
    "WarningRaised",
    "diff_snapshots",
    "load_backup",
    "load_profile",
    "load_report",
    "open_sessions",
    "parse_links",
    "render_text",
    "restore_backup",
    "run_preflight",
    "run_update",
    "run_updates",
    "verify_audit_log",
    "write_backup",
    "write_report",
]
