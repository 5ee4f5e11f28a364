"""Per-step deadlines: every step of a session ends within a bound the docs state.

A request has its own limits (P2/P2* and the request's budget on UDS, the serial
time-out on Modbus), but a step is several requests (identify reads nine DIDs,
authentication two, a configuration document many registers) and requests are
repeated on a time-out. A BMS that answers each of them just before its limit
runs out would hold the host for as long as it likes. The session therefore runs
every step under a :class:`StepClock`: the step's budget from :class:`StepBudgets`
is a deadline, each request waits at most until it, and once it has passed the
step ends with :class:`~bmsfw.protocol.errors.StepDeadlineError` (E366).

Steps nest (``wait_boot`` reads the boot status): an inner step never extends the
outer step's deadline. The transfer is not a step here: it is judged by its
minimum average rate (the product profile's ``transfer`` limits).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from bmsfw.protocol.errors import StepDeadlineError

__all__ = ["StepBudgets", "StepClock", "session_step"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class StepBudgets:
    """The longest each session step may take, in seconds (docs/uds.md, docs/modbus.md)."""

    identify_s: float = 30.0  # the identity DIDs / device identification objects
    read_s: float = 15.0  # one status read: telemetry, boot status, digest, self-test record
    config_s: float = 30.0  # read or write the configuration document
    authenticate_s: float = 30.0  # certificate chain to the BMS, its challenge, the proof
    prepare_s: float = 150.0  # stage the release header (the BMS checks the signatures)
    erase_s: float = 150.0
    verify_s: float = 150.0
    activate_s: float = 30.0
    reset_s: float = 15.0  # the reset request itself; the boot wait has its own limit
    self_test_s: float = 150.0
    confirm_s: float = 30.0
    rollback_s: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0 < value <= 3600:
                raise ValueError(f"{f.name} must be in (0, 3600] s, not {value}")


class StepClock:
    """The deadline of the step a session is running (one session, one thread)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._deadline: float | None = None
        self._what = ""
        self._budget_s = 0.0

    @contextmanager
    def step(self, what: str, budget_s: float) -> Iterator[None]:
        """Run a step of at most ``budget_s``; inside an outer step, the earlier deadline."""
        saved = (self._deadline, self._what, self._budget_s)
        deadline = self._clock() + budget_s
        if self._deadline is None or deadline < self._deadline:
            self._deadline, self._what, self._budget_s = deadline, what, budget_s
        try:
            yield
        finally:
            self._deadline, self._what, self._budget_s = saved

    def remaining_s(self) -> float | None:
        """Seconds left in the running step; None outside any step."""
        if self._deadline is None:
            return None
        return self._deadline - self._clock()

    def expired(self, during: str) -> StepDeadlineError:
        """The error for a step whose deadline passed while ``during`` ran."""
        return StepDeadlineError(
            f"{self._what}: not finished within its bound of {self._budget_s:g} s "
            f"(the BMS was still answering slowly during {during})"
        )

    def check(self, during: str) -> None:
        """Raise :class:`StepDeadlineError` when the running step's deadline has passed."""
        left = self.remaining_s()
        if left is not None and left <= 0:
            raise self.expired(during)


class _Stepped(Protocol):
    steps: StepClock

    @property
    def step_budgets(self) -> StepBudgets: ...


_S = TypeVar("_S", bound=_Stepped)


def session_step(
    what: str, budget: str
) -> Callable[[Callable[Concatenate[_S, _P], _R]], Callable[Concatenate[_S, _P], _R]]:
    """Decorate a session method: it runs as the step ``what`` under ``StepBudgets.<budget>``."""
    if budget not in {f.name for f in fields(StepBudgets)}:
        raise ValueError(f"no step budget {budget!r}")

    def wrap(fn: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
        def run(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            with self.steps.step(what, getattr(self.step_budgets, budget)):
                return fn(self, *args, **kwargs)

        functools.update_wrapper(run, fn)
        return run

    return wrap
