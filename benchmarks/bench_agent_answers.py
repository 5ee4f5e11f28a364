"""What one hostile server answer costs a gateway: peak memory and time of ``bmsfw agent
--once`` (one virtual BMS) per answer, side by side with the obvious alternative, a
client that reads the whole answer and parses it (``httpx.get(...).json()``).

    python -m benchmarks.bench_agent_answers

Peak memory is each child process's own VmHWM (Linux), read at its exit. The hostile
server is the one of tests/attack_server (our own HTTPS server, not the fleet server).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.agent_support import Vendor
from tests.attack_server.hostile import HostileServer, Reply, drip, endless

from bmsfw.fleet.testing import write_test_ca_and_server

MIB = 1024 * 1024
CAP_S = 90.0  # a child still reading after this long is stopped

# Runs argv[2:] as the named program ("agent": bmsfw; "read-all": httpx.get().json())
# and writes its own peak RSS (VmHWM, KiB) to argv[1] at exit.
_CHILD = """
import atexit, sys

def _peak(path=sys.argv[1]):
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(l.split()[1] for l in status if l.startswith("VmHWM:")))

atexit.register(_peak)
if sys.argv[2] == "agent":
    sys.argv = ["bmsfw", *sys.argv[2:]]
    from bmsfw.cli import main
    main()
else:
    import ssl, httpx
    context = ssl.create_default_context(cafile=sys.argv[4])
    httpx.post(sys.argv[3], verify=context, json={}, timeout=30).json()
"""

CASES: dict[str, Callable[[bytes], Reply]] = {
    "good answer": lambda good: Reply(200, good),
    "128 MiB answer": lambda _g: Reply(200, endless(limit_bytes=128 * MIB)),
    "128 MiB error body": lambda _g: Reply(500, endless(limit_bytes=128 * MIB)),
    "gzip bomb (100 MiB)": lambda _g: Reply(
        200, gzip.compress(b"\0" * 100 * MIB, 9), {"Content-Encoding": "gzip"}
    ),
    # 5 KB of valid JSON at 50 B/s: 100 s; the agent's answer deadline is 60 s.
    "5 KB answer at 50 B/s": lambda good: Reply(200, drip(good + b" " * 5000), chunk_delay_s=0.02),
}


def _run(command: list[str], peak_file: Path) -> tuple[float, int, str]:
    started = time.monotonic()
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=CAP_S)
        outcome = "ok" if result.returncode == 0 else _code(result.stderr)
    except subprocess.TimeoutExpired:
        outcome = f"still reading after {CAP_S:g} s"
    elapsed = time.monotonic() - started
    peak = int(peak_file.read_text()) // 1024 if peak_file.exists() else 0
    peak_file.unlink(missing_ok=True)
    return elapsed, peak, outcome


def _code(stderr: str) -> str:
    for word in stderr.split():
        if word.startswith("BMSFW-E"):
            return word.rstrip(":")
    return (stderr.strip().splitlines() or ["?"])[-1][:40]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    (tmp / "tls").mkdir()
    tls = write_test_ca_and_server(tmp / "tls")
    vendor = Vendor.lab()
    (tmp / "token").write_text("gateway-token")
    (tmp / "root.pem").write_bytes(vendor.root_pem)
    (tmp / "initial.bmsfw").write_bytes(vendor.release("1.0.0", 1))
    server = HostileServer(tls.cert, tls.key)
    good = Reply.json(server.check_in_answer()).body
    assert isinstance(good, bytes)
    peak_file = tmp / "peak"
    url = f"{server.url}/api/v1/agent/check-in"
    print(f"{'answer':<26} {'agent peak':>10} {'time':>7}  {'agent says':<12} "
          f"{'read-all peak':>13} {'time':>7}  read-all says")  # fmt: skip
    try:
        for name, make in CASES.items():
            server.script["check-in"] = lambda _seen, make=make: make(good)
            state = tmp / f"state-{len(name)}-{name[:4]}"
            agent = _run(
                [sys.executable, "-c", _CHILD, str(peak_file), "agent",
                 "--server", server.url, "--token-file", str(tmp / "token"), "--ca", str(tls.ca),
                 "--trust-root", str(tmp / "root.pem"), "--state-dir", str(state),
                 "--sim", "1", "--sim-initial", str(tmp / "initial.bmsfw"), "--once"],
                peak_file,
            )  # fmt: skip
            plain = _run(
                [sys.executable, "-c", _CHILD, str(peak_file), "read-all", url, str(tls.ca)],
                peak_file,
            )
            print(f"{name:<26} {agent[1]:>6} MiB {agent[0]:>6.1f}s  {agent[2]:<12} "
                  f"{plain[1]:>9} MiB {plain[0]:>6.1f}s  {plain[2]}")  # fmt: skip
    finally:
        server.close()


if __name__ == "__main__":
    main()
