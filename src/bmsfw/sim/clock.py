"""The clock the virtual BMS runs on, controlled by its caller.

Everything in the device that takes time (flash erase and program, the boot
sequence, the self-test, the watchdog window, battery dynamics) asks a
``Clock``. ``RealClock`` is wall time: a 256 KiB erase then really takes about
two seconds, so protocol servers have to send "response pending". ``SimClock``
is deterministic simulated time: ``sleep`` advances it instantly, so tests
exercise watchdog windows and boot delays in microseconds of CPU time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "RealClock", "SimClock"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """Calendar time (timezone-aware UTC), for certificate validity and logs."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for durations and deadlines."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        ...


class RealClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class SimClock:
    """Simulated time: ``sleep`` advances instantly; thread-safe.

    Calendar time starts at ``start`` (default: the wall-clock second of creation,
    so certificates made "now" are valid); durations are exact and deterministic.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime.now(UTC).replace(microsecond=0)
        if self._start.tzinfo is None:
            raise ValueError("SimClock start must be timezone-aware")
        self._elapsed_s = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._start + timedelta(seconds=self._elapsed_s)

    def monotonic(self) -> float:
        with self._lock:
            return self._elapsed_s

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot sleep a negative time ({seconds} s)")
        with self._lock:
            self._elapsed_s += seconds

    advance = sleep
