"""The root of every error bmsfw raises, and the families below it.

Every concrete error class carries a stable ``code`` (``BMSFW-Exxx``), a one-line
``diagnosis`` (what this usually means) and a one-line ``remedy`` (what the user
should do). The CLI prints all three and maps the family to an exit code, and
``docs/troubleshooting.md`` is checked against this catalogue by a test.

Code ranges, one per family (by cause, as in python-tuf: *the content is bad*
is a different family from *the transport failed*):

=========  =====================================================
E0xx       usage and local files (bad arguments, unreadable key)
E1xx       package and trust (malformed, signature, chain, compatibility)
E2xx       the device refused or failed (verify, self-test, rollback)
E3xx       transport (timeouts, link down, protocol violations)
E4xx       preflight (state of charge, temperature, supply, faults)
E5xx       the update procedure (interrupted, backup mismatch)
E6xx       fleet server and agent
=========  =====================================================
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BmsfwError",
    "DeviceError",
    "FleetError",
    "PackageError",
    "PreflightError",
    "TransportError",
    "UpdateError",
    "UsageError",
    "all_error_classes",
    "retry_helps_for",
]


class BmsfwError(Exception):
    """Root of all bmsfw errors. Subclasses set ``code``, ``diagnosis``, ``remedy``."""

    code: ClassVar[str] = "BMSFW-E000"
    diagnosis: ClassVar[str] = "An unexpected error occurred."
    remedy: ClassVar[str] = "Run again with -v and report the log to the bmsfw maintainers."
    #: Running the same command again, unchanged, can finish the job (a lost link, a
    #: power cut, an interruption); False: something must change first (the package,
    #: the pack's state, a setting). Callers ask this instead of matching codes.
    retry_helps: ClassVar[bool] = False

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.diagnosis
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """The error as a JSON-ready record (reports, ``--json`` output, audit log)."""
        return {
            "code": self.code,
            "type": type(self).__name__,
            "message": self.message,
            "diagnosis": self.diagnosis,
            "remedy": self.remedy,
        }


class UsageError(BmsfwError):
    """Bad arguments, missing or unreadable local files."""

    code = "BMSFW-E001"
    diagnosis = "The command was given arguments or files it cannot use."
    remedy = "Check the command line against `bmsfw COMMAND --help`."


class PackageError(BmsfwError):
    """The release package or its trust data is not acceptable."""

    code = "BMSFW-E100"
    diagnosis = "The release package was rejected."
    remedy = "Get the package again from a trusted source and check it with `bmsfw package verify`."


class DeviceError(BmsfwError):
    """The BMS refused a request or reported a failure."""

    code = "BMSFW-E200"
    diagnosis = "The BMS refused the request or reported a failure."
    remedy = "Read the device status with `bmsfw info` and the fault log with `bmsfw diagnose`."


class TransportError(BmsfwError):
    """The link to the BMS failed (timeouts, bus errors, protocol violations)."""

    code = "BMSFW-E300"
    retry_helps = True
    diagnosis = "Communication with the BMS failed."
    remedy = "Check cables, termination and that bitrate/baud rate match; run `bmsfw diagnose`."


class PreflightError(BmsfwError):
    """A precondition for a safe update is not met."""

    code = "BMSFW-E400"
    diagnosis = "A preflight check failed; no byte was written to the BMS."
    remedy = "Bring the pack into the safe window shown in the report, then run the update again."


class UpdateError(BmsfwError):
    """The update procedure itself could not complete."""

    code = "BMSFW-E500"
    diagnosis = "The update did not complete."
    remedy = "Read the report: it names the failed step and what the device runs now."


class FleetError(BmsfwError):
    """Fleet server or gateway agent errors."""

    code = "BMSFW-E600"
    diagnosis = "The fleet server or agent reported an error."
    remedy = "Check the server log and the agent's connection settings."


def retry_helps_for(code: str) -> bool:
    """Whether running the same command again can help after the error ``code``
    (as recorded in a report or sent by an agent); unknown codes: False."""
    for cls in all_error_classes():
        if cls.code == code:
            return cls.retry_helps
    return False


def all_error_classes() -> list[type[BmsfwError]]:
    """Every BmsfwError subclass currently imported, depth first, root included."""
    seen: list[type[BmsfwError]] = []
    stack: list[type[BmsfwError]] = [BmsfwError]
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(reversed(cls.__subclasses__()))
    return seen
