"""Typed events the pipeline emits while it runs.

The pipeline calls one ``EventSink`` (any callable taking an ``Event``) for every
step started or finished, every block transferred, every preflight check and
every warning. The CLI turns them into progress bars and a real-time log; the
fleet agent turns them into states it reports to the server. Every event names
the node (the session's address) so several concurrent updates can share one sink.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

__all__ = [
    "STEPS",
    "CheckEvaluated",
    "Event",
    "EventSink",
    "Step",
    "StepFinished",
    "StepStarted",
    "TransferProgress",
    "UpdateFinished",
    "WarningRaised",
    "event_to_dict",
]

Step = Literal[
    "identify",
    "verify-package",
    "preflight",
    "confirmations",
    "backup",
    "authenticate",
    "transfer",
    "device-verify",
    "activate",
    "self-test",
    "confirm",
    "rollback",
    "config-compare",
    "report",
]

STEPS: tuple[Step, ...] = get_args(Step)  # in pipeline order


@dataclass(frozen=True)
class StepStarted:
    node: str
    step: Step
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class StepFinished:
    node: str
    step: Step
    ok: bool
    detail: str = ""
    duration_s: float = 0.0
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class CheckEvaluated:
    node: str
    name: str
    measured: str
    limit: str
    passed: bool
    overridden: bool = False
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class TransferProgress:
    node: str
    offset: int  # bytes of the image on the device so far
    total: int
    resumed_from: int = 0
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class WarningRaised:
    node: str
    message: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class UpdateFinished:
    node: str
    ok: bool
    error_code: str = ""
    running_version: str = ""
    at: float = field(default_factory=time.time)


Event = (
    StepStarted | StepFinished | CheckEvaluated | TransferProgress | WarningRaised | UpdateFinished
)
EventSink = Callable[[Event], None]


def event_to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready form with the event's type name (for logs and the fleet agent)."""
    data = dataclasses.asdict(event)
    data["event"] = type(event).__name__
    return data
