"""A virtual BMS simulator in its own process, as tests, the demo and benchmarks start it.

The child prints one line ``READY {json}`` on stdout when it serves; its log goes
to ``log_file``. ``stop()`` is a clean shutdown (SIGTERM); ``kill()`` is a power
loss (SIGKILL: flash, OTP and NVM stay as the last flash operation left them).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Self

__all__ = ["SimProcess"]


class SimProcess:
    """Start ``args`` (a ``python -m bmsfw.sim.sim_*`` command line) and wait for READY."""

    what = "virtual BMS process"

    def __init__(self, args: list[str], *, log_file: str | Path | None = None) -> None:
        self.args = args
        self.log_file = log_file
        self.process: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout_s: float = 30.0) -> dict[str, Any]:
        stderr = open(self.log_file, "a") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1
        )
        stdout = self.process.stdout
        assert stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        line = ready[0] if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{self.what} did not start: {line!r} (see {self.log_file})")
        self.info = json.loads(line[len("READY ") :])
        return self.info

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def kill(self) -> None:
        """Power loss: SIGKILL, no clean shutdown."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
