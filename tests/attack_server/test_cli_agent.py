"""The real ``bmsfw agent`` command in its own process against the hostile server, with
the fleet *server's* libraries made unimportable (what a gateway installs is the base
package and the ``agent`` extra): the daemon survives a captive portal, a 128 MiB answer
ends ``--once`` with its code at a bounded peak memory, and no traceback is printed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bmsfw.fleet.testing import TestTlsFiles

from .conftest import Vendor
from .hostile import HostileServer, Reply, endless

# Modules of the server extra (FastAPI, SQLAlchemy, ...): refused to the agent process.
_BLOCK_SERVER_EXTRA = """
import sys

class _ServerExtraBlocked:
    blocked = {"fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn", "psycopg"}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (server extra not installed)")
        return None

sys.meta_path.insert(0, _ServerExtraBlocked())

def _write_peak(path=sys.argv[1]):
    # VmHWM: this process's own peak resident set since exec (not the forking parent's).
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))

import atexit
atexit.register(_write_peak)
sys.argv = ["bmsfw", *sys.argv[2:]]
from bmsfw.cli import main
main()
"""


AgentRun = Callable[..., tuple[subprocess.CompletedProcess[str], int]]


@pytest.fixture
def run_agent(
    server: HostileServer,
    tmp_path: Path,
    vendor: Vendor,
    tls: TestTlsFiles,
    releases: dict[str, bytes],
) -> AgentRun:
    """``bmsfw agent ARGS`` with one virtual BMS: the result and the peak RSS (KiB)."""
    token = tmp_path / "gateway.token"
    token.write_text("gateway-token\n")
    root = tmp_path / "root.pem"
    root.write_bytes(vendor.root_pem)
    release = tmp_path / "initial.bmsfw"
    release.write_bytes(releases["1.0.0"])

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
        peak_file = tmp_path / "peak-kib"
        command = [
            sys.executable, "-c", _BLOCK_SERVER_EXTRA, str(peak_file), "agent",
            "--server", server.url, "--token-file", str(token), "--ca", str(tls.ca),
            "--trust-root", str(root), "--state-dir", str(tmp_path / "state"),
            "--sim", "1", "--sim-initial", str(release), *args,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            stdout, stderr = process.communicate(timeout=120)
        finally:
            process.kill()
        peak = int(peak_file.read_text()) if peak_file.exists() else 0
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), peak

    return run


def test_the_daemon_survives_a_captive_portal(server: HostileServer, run_agent: AgentRun) -> None:
    server.script["check-in"] = lambda _s: Reply(200, b"<html>Hotel Wi-Fi: log in</html>")
    result, _ = run_agent("--max-polls", "3", "--max-poll-interval", "0.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("poll failed BMSFW-E675") == 3, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert len(server.check_ins()) == 3
    # Every failed poll after the first tells the server what it refused.
    assert [len(body.get("problems", [])) for body in server.check_ins()] == [0, 1, 1]


def test_a_good_poll_runs_without_the_server_extra(
    server: HostileServer, run_agent: AgentRun
) -> None:
    result, peak_kib = run_agent("--once")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (body,) = server.check_ins()
    assert [d["serial"] for d in body["devices"]] == ["SIM0001"]
    assert peak_kib > 0


def test_a_128_mib_answer_costs_bounded_memory(server: HostileServer, run_agent: AgentRun) -> None:
    server.script["check-in"] = lambda _s: Reply(200, endless(limit_bytes=128 * 1024 * 1024))
    result, peak_kib = run_agent("--once")
    assert result.returncode == 8, result.stderr  # the fleet family's exit code
    assert "BMSFW-E676" in result.stderr
    assert "Traceback" not in result.stderr
    # A good poll of this process peaks at about 76 MiB (interpreter, libraries, BMS); the
    # 128 MiB answer adds at most the answer limit (2 MiB), not the answer.
    assert 0 < peak_kib < 120 * 1024, f"peak RSS {peak_kib} KiB"
