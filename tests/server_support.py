"""Real fleet servers for tests: uvicorn serving an ASGI app over HTTPS in a thread of the
test process (:func:`serve_https`), or ``bmsfw fleet serve`` in a process of its own
(:func:`serve_process`), each on a free port of 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bmsfw.fleet.testing import TestTlsFiles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ThreadedUvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns the signals
        pass


@contextlib.contextmanager
def serve_https(app: Any, tls: TestTlsFiles, name: str) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1; yields its ``https://`` base URL."""
    port = free_port()
    server = _ThreadedUvicorn(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(tls.cert),
            ssl_keyfile=str(tls.key),
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass(frozen=True)
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def serve_process(
    args: list[str], *, cwd: Path, tls: TestTlsFiles | None = None, start_s: float = 60.0
) -> Iterator[ServerProcess]:
    """``bmsfw fleet serve ARGS`` in its own process, working directory ``cwd`` (nothing
    else is written there), on a free port; HTTPS when ``tls`` is given. Yields once
    ``/healthz`` answers; stops the process (its stderr is shown if it did not start)."""
    port = free_port()
    tls_args = ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)] if tls else []
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    with tempfile.TemporaryFile(prefix="bmsfw-serve-") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from bmsfw.cli import main; main()",
                "fleet",
                "serve",
                *args,
                *tls_args,
                "--port",
                str(port),
            ],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ},
        )
        try:
            deadline = time.monotonic() + start_s
            while True:
                try:
                    verify: Any = str(tls.ca) if tls else False
                    if httpx.get(f"{url}/healthz", timeout=2, verify=verify).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    stderr.seek(0)
                    raise AssertionError(
                        f"`bmsfw fleet serve` did not come up at {url}:\n"
                        + stderr.read().decode(errors="replace")[-4000:]
                    )
                time.sleep(0.2)
            yield ServerProcess(proc, url)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
