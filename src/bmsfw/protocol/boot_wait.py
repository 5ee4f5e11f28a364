"""Waiting for a BMS to come back after a reset: one poll loop for every protocol.

While it reboots a BMS is silent, as real hardware is; the sessions (UDS, Modbus,
SMP) differ only in what a silent poll raises and what ends the wait early.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bmsfw.protocol.errors import DeviceBootTimeoutError
from bmsfw.protocol.session import BootStatus

__all__ = ["wait_for_application"]

log = logging.getLogger(__name__)


def wait_for_application(
    read_boot_status: Callable[[], BootStatus],
    *,
    timeout_s: float,
    poll_s: float,
    silent: tuple[type[Exception], ...],
    who: str,
    stop: tuple[type[Exception], ...] = (),
) -> BootStatus:
    """Poll until the BMS runs its application (its self-test finished); return that status.

    A poll raising one of ``silent`` is a rebooting BMS: polling goes on. One raising
    one of ``stop`` (checked first) ends the wait. Then, or after ``timeout_s``,
    :class:`DeviceBootTimeoutError` names ``who`` and the last state seen.
    """
    deadline = time.monotonic() + timeout_s
    last: BootStatus | None = None
    while time.monotonic() < deadline:
        try:
            last = read_boot_status()
        except stop:
            break
        except silent as exc:
            log.debug("%s: waiting for boot: %s", who, exc)
            last = None
        if last is not None and last.run_state == "application":
            return last
        time.sleep(poll_s)
    state = last.run_state if last else "silent"
    raise DeviceBootTimeoutError(
        f"{who} not back in the application after {timeout_s:g} s (state: {state})"
    )
