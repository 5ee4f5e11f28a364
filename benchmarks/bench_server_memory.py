"""Server memory under large bodies: ``python -m benchmarks.bench_server_memory [--mb 100]``.

Each case starts a fresh fleet server process (uvicorn, plain HTTP on loopback,
SQLite; a gateway with one device registered, an admin token) and sends it one large
body over a raw socket, as an attacker would: an 86 MB check-in (the case the issue
reported at 2.16 GB), a 100 MB release upload and 100 MB backups (agent's and
technician's route), with ``Content-Length`` and chunked. The number is the growth of
the process's peak resident memory (``VmHWM`` in /proc) over its peak after start-up
and one ordinary request of each kind.

Side by side with the alternative: the same server with every body limit raised above
the body (256 MB), i.e. a server that reads the body before deciding, as this one did
before its limits. With limits, bodies are refused 413 while they arrive; the release
upload streams to a temporary file either way, so raising its limit costs disk, not
memory (the 100 MB that is no package is answered 422).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization

from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.testing import backup_body, check_in_body, memory_of, send_large_body
from bmsfw.package import create_pki

MB = 1_000_000
MIB = 1024 * 1024
RAISED = 256 * MB

# Runs the app under uvicorn with the given ServerConfig fields (the CLI has no limit
# options: the alternative needs them raised).
_RUNNER = """
import json, sys, uvicorn
from pathlib import Path
from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.server import configure_access_log
settings = json.loads(sys.argv[1])
configure_access_log("")
config = ServerConfig(
    db_url=settings["db"], trust_root_pem=Path(settings["root"]).read_bytes(),
    tick_interval_s=0, migrate=False, **settings["limits"],
)
uvicorn.run(create_app(config), host="127.0.0.1", port=settings["port"],
            log_level="warning", access_log=False)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spaces(total: int) -> Iterator[bytes]:
    while total > 0:
        part = b" " * min(total, MIB)
        yield part
        total -= len(part)


class _Server:
    def __init__(self, workdir: Path, root: Path, limits: dict[str, int]) -> None:
        self.db = f"sqlite:///{workdir / 'fleet.db'}"
        admin = init_database(self.db)
        assert admin is not None
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {"db": self.db, "root": str(root), "limits": limits, "port": self.port}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, json.dumps(settings)],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        auth = {"Authorization": f"Bearer {admin}"}
        gateway = httpx.post(
            f"{self.url}/api/v1/gateways", headers=auth, json={"name": "gw", "site": "s"}
        ).json()["token"]
        self.as_admin = {**auth, "Content-Type": "application/json"}
        self.as_gateway = {"Authorization": f"Bearer {gateway}", "Content-Type": "application/json"}
        device = {
            "serial": "SN-000001",
            "model": "BMS-48V",
            "hw_revision": "A",
            "firmware_version": "1.0.0",
        }
        # One ordinary request of each kind, so the baseline has run every code path.
        for path, headers, body in (
            ("/api/v1/agent/check-in", self.as_gateway, {"devices": [device]}),
            (
                "/api/v1/agent/backups",
                self.as_gateway,
                {"device_serial": "SN-000001", "config": {"a": 1}},
            ),
            ("/api/v1/devices/SN-000001/backups", self.as_admin, {"config": {"a": 1}}),
        ):
            httpx.post(f"{self.url}{path}", headers=headers, json=body, timeout=30)
        httpx.post(f"{self.url}/api/v1/releases", headers=auth, content=b"PK not a zip", timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


Case = tuple[str, str, str, Callable[[int], Iterator[bytes]], int]


def _run(root: Path, limits: dict[str, int], case: Case, declared: bool) -> dict[str, Any]:
    _, path, who, body, size = case
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        server = _Server(Path(tmp), root, limits)
        try:
            _, before = memory_of(server.proc.pid)
            headers = server.as_admin if who == "admin" else server.as_gateway
            started = time.perf_counter()
            answer = send_large_body(
                server.url, path, headers, body(size), size, declare_length=declared, timeout_s=600
            )
            seconds = time.perf_counter() - started
            _, after = memory_of(server.proc.pid)
        finally:
            server.stop()
    code = ""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        code = json.loads(answer.body)["error"]["code"]
    return {
        "status": answer.status,
        "code": code,
        "grew_mib": (after - before) / MIB,
        "peak_mib": after / MIB,
        "answer_bytes": len(answer.body),
        "s": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the large bodies (MB)")
    parser.add_argument("--check-in-mb", type=int, default=86)
    args = parser.parse_args(argv)
    pki = create_pki("ed25519")
    cases: list[Case] = [
        ("check-in", "/api/v1/agent/check-in", "gateway", check_in_body, args.check_in_mb * MB),
        ("release upload", "/api/v1/releases", "admin", _spaces, args.mb * MB),
        ("agent backup", "/api/v1/agent/backups", "gateway", backup_body, args.mb * MB),
        (
            "technician backup",
            "/api/v1/devices/SN-000001/backups",
            "admin",
            lambda n: backup_body(n, serial=None),
            args.mb * MB,
        ),
    ]
    raised = {
        "max_check_in_bytes": RAISED,
        "max_upload_bytes": RAISED,
        "max_backup_bytes": RAISED // 2,
        "max_body_bytes": RAISED,
    }
    with tempfile.TemporaryDirectory(prefix="bench-mem-root-") as tmp:
        root = Path(tmp) / "root.pem"
        root.write_bytes(pki.root_certificate.public_bytes(serialization.Encoding.PEM))
        header = (
            f"{'body':<18} {'size':>7} {'framing':<8} | {'limits (default)':<28} | "
            f"{'limits raised to 256 MB':<28}"
        )
        print(header)
        print("-" * len(header))
        for case in cases:
            for declared in (True, False):
                with_limits = _run(root, {}, case, declared)
                without = _run(root, raised, case, declared)
                cells = [
                    f"{r['status']} {r['code'][-4:]:<4} +{r['grew_mib']:>7.1f} MiB {r['s']:>5.1f} s"
                    for r in (with_limits, without)
                ]
                framing = "length" if declared else "chunked"
                print(
                    f"{case[0]:<18} {case[4] / MB:>4.0f} MB {framing:<8} | {cells[0]:<28} | "
                    f"{cells[1]:<28}",
                    flush=True,
                )
    print(
        "\n+MiB: growth of the server process's peak resident memory (VmHWM) over its peak "
        "after start-up and one ordinary request of each kind; s: until the answer arrived."
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
