"""Fleet server load: ``python -m benchmarks.bench_fleet [--devices 1000] [--duration-s 10]``.

Starts the real server (``bmsfw fleet serve``: uvicorn with ``--workers`` processes,
plain HTTP on loopback so the numbers are the server's, not TLS's) on SQLite and,
when one answers at ``BMSFW_BENCH_POSTGRES_URL``, PostgreSQL (a fresh schema).
``--devices`` simulated gateways (one BMS each, each with its own gateway token)
are registered, a release is uploaded and a canary campaign targets every device
(so every check-in runs the offer query; the 5 canary devices get offers).

Load model. Every device is one keep-alive HTTP/1.1 connection posting
``/api/v1/agent/check-in``; two models are measured:

* ``closed``: each connection sends its next check-in as soon as the answer
  arrives (back to back). This measures capacity: check-ins/s is the most the
  server does, and latency is queueing (about devices / rate).
* ``paced``: each connection waits a poll interval (``--pace-s``, jittered
  uniformly over 0.5..1.5 times it) after every answer, as the agent does with
  ``poll_interval_s``. Offered load is about devices / (pace + latency); this
  shows latency when the server keeps up.

Load generator: ``wrk`` (Debian package ``wrk``) with a Lua script cycling
through the devices' tokens: one native thread per core-ish, a few percent of
one core, so the server keeps the machine. Without ``wrk`` a fallback asyncio
raw-socket client is used, with a warning: it needs far more CPU, which the
server then lacks on a small machine. The table shows CPU ms per check-in
spent by the server processes, the load generator, and the rest of the machine (PostgreSQL's
backends and the kernel: ``db+os``), from /proc.

Then a campaign over all devices in one phase runs to completion, every
simulated device walking the agent protocol (check-in, download the artifact,
report downloading .. succeeded): the server side of a 1,000-device campaign,
with no BMS behind the agent (the wire-time model and the update pipeline are
not in this number). ``--no-campaign`` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from tests.server_support import ServerProcess, serve_process

from bmsfw.fleet.artifacts import ArtifactStore
from bmsfw.fleet.auth import Principal
from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.clock import SystemClock
from bmsfw.fleet.db import make_engine, make_session_factory, upgrade_database
from bmsfw.fleet.service import FleetService

POSTGRES_URL = os.environ.get(
    "BMSFW_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
API = "/api/v1"


def _device(serial: str, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "serial": serial,
        "model": "BMS-48V",
        "hw_revision": "A",
        "bootloader_version": "1.0.0",
        "firmware_version": version,
        "security_counter": 1,
        "soc_pct": 50.0,
        "temperature_c": 25.0,
    }


def _postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


class Backend:
    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.schema = ""
        if kind == "sqlite":
            self.url = f"sqlite:///{workdir / 'fleet.db'}"
        else:
            self.schema = f"bmsfw_bench_{uuid.uuid4().hex[:10]}"
            engine = create_engine(POSTGRES_URL)
            with engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            engine.dispose()
            self.url = f"{POSTGRES_URL}?options=-csearch_path%3D{self.schema}"

    def drop(self) -> None:
        if self.schema:
            engine = create_engine(POSTGRES_URL)
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            engine.dispose()


def _seed(url: str, workdir: Path, devices: int) -> tuple[str, list[tuple[str, str]]]:
    """Admin token and (gateway token, serial) for every simulated device."""
    admin = init_database(url)
    assert admin is not None
    engine = make_engine(url)
    upgrade_database(engine)
    service = FleetService(make_session_factory(engine), ArtifactStore(engine), SystemClock())
    bench = Principal(0, "bench", "operator", "admin", None)
    gateways = []
    for i in range(devices):
        result = service.create_gateway(bench, f"gw{i:05d}", f"site-{i % 20}", [])
        gateways.append((str(result["token"]), f"BMS{i:05d}"))
    engine.dispose()
    return admin, gateways


SERVE_ARGS: list[str] = []  # --serve-args


def _server(url: str, workdir: Path, root: Path, workers: int) -> ContextManager[ServerProcess]:
    return serve_process(
        [
            "--db",
            url,
            "--artifacts",
            str(workdir / "artifacts"),
            "--trust-root",
            str(root),
            "--workers",
            str(workers),
            "--poll-interval-s",
            "60",
            # The access log costs what it costs in production: one line per request.
            "--access-log",
            str(workdir / "access.log"),
            *SERVE_ARGS,
        ],
        cwd=workdir,
    )


_WRK_SCRIPT = r"""
-- One request per device token, cycled; the device list is split between threads.
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  local nthreads = tonumber(args[2])
  reqs = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == tid then
      local token, body = line:match("^(%S+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", "/api/v1/agent/check-in",
        {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
    end
    i = i + 1
  end
  n = 0
  math.randomseed(tid * 7919 + os.time())
end

function request()
  n = n + 1
  return reqs[(n - 1) % #reqs + 1]
end

local pace_ms = tonumber(os.getenv("BMSFW_BENCH_PACE_MS") or "0")
if pace_ms > 0 then
  -- The agent's poll interval: wait after each answer, jittered 0.5..1.5 x.
  function delay()
    return math.floor(pace_ms * (0.5 + math.random()))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    generator: str
    checkins: int
    errors: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float


def _checkin_body(serial: str) -> str:
    return json.dumps({"agent_version": "bench", "devices": [_device(serial)]})


def _wrk_load(
    base: str,
    gateways: list[tuple[str, str]],
    duration_s: float,
    pace_s: float,
    *,
    workdir: Path,
    threads: int,
) -> LoadResult:
    devices_file = workdir / "devices.tsv"
    devices_file.write_text("".join(f"{t}\t{_checkin_body(s)}\n" for t, s in gateways))
    script = workdir / "checkin.lua"
    script.write_text(_WRK_SCRIPT)
    env = {**os.environ, "BMSFW_BENCH_PACE_MS": str(int(pace_s * 1000))}
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{len(gateways)}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        base,
        "--",
        str(devices_file),
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    r = json.loads(line[len("BENCH ") :])
    # Connect errors are connections, read/write/timeouts and HTTP >= 400 are check-ins.
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return LoadResult(
        "wrk",
        int(r["requests"]) - r["status"],
        errors,
        r["duration_us"] / 1e6,
        r["p50_us"] / 1000,
        r["p99_us"] / 1000,
    )


async def _socket_device(
    host: str, port: int, request: bytes, *, stop_at: float, pace_s: float, out: list[float]
) -> int:
    """One device on one keep-alive connection; returns its error count."""
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random()
    if pace_s:
        # Agents do not poll in step: each starts somewhere in its first interval
        # (wrk's delay() likewise comes before a connection's first request).
        await asyncio.sleep(pace_s * rng.random())
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if head[9:12] == b"200":
                out.append(time.perf_counter() - started)
            else:
                errors += 1
            if pace_s:
                await asyncio.sleep(pace_s * (0.5 + rng.random()))
    except (OSError, asyncio.IncompleteReadError):
        errors += 1
    finally:
        writer.close()
    return errors


def _socket_worker(
    base: str, gateways: list[tuple[str, str]], duration_s: float, pace_s: float, out: Any
) -> None:
    host, port = base.removeprefix("http://").split(":")

    def request(token: str, serial: str) -> bytes:
        body = _checkin_body(serial).encode()
        return (
            f"POST {API}/agent/check-in HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        stop_at = time.perf_counter() + duration_s
        errors = await asyncio.gather(
            *(
                _socket_device(
                    host, int(port), request(t, s), stop_at=stop_at, pace_s=pace_s, out=latencies
                )
                for t, s in gateways
            )
        )
        return latencies, sum(errors)

    out.put(asyncio.run(run()))


def _socket_load(
    base: str, gateways: list[tuple[str, str]], duration_s: float, pace_s: float, procs: int
) -> LoadResult:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shards = [gateways[i::procs] for i in range(procs)]
    workers = [
        ctx.Process(target=_socket_worker, args=(base, s, duration_s, pace_s, queue))
        for s in shards
    ]
    for w in workers:
        w.start()
    latencies: list[float] = []
    errors = 0
    for _ in workers:
        got, failed = queue.get(timeout=duration_s + 300)
        latencies += got
        errors += failed
    for w in workers:
        w.join()
    latencies.sort()
    return LoadResult(
        "asyncio",
        len(latencies),
        errors,
        duration_s,
        1000 * statistics.median(latencies) if latencies else float("nan"),
        1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
    )


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants (the uvicorn workers)."""
    total = _proc_cpu_s(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(_tree_cpu_s(int(c)) for c in children)


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / _CLK_TCK


def _measure(
    base: str,
    server_pid: int,
    gateways: list[tuple[str, str]],
    *,
    duration_s: float,
    pace_s: float,
    workdir: Path,
    load_procs: int,
    use_wrk: bool,
) -> dict[str, Any]:
    server0, busy0 = _tree_cpu_s(server_pid), _machine_busy_s()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if use_wrk:
        load = _wrk_load(base, gateways, duration_s, pace_s, workdir=workdir, threads=load_procs)
    else:
        load = _socket_load(base, gateways, duration_s, pace_s, load_procs)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_s = _tree_cpu_s(server_pid) - server0
    load_s = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    # Everything else the machine did meanwhile: PostgreSQL's backends, the kernel.
    rest_s = _machine_busy_s() - busy0 - server_s - load_s
    per = 1000 / max(1, load.checkins)
    return {
        "generator": load.generator,
        "checkins": load.checkins,
        "errors": load.errors,
        "rate": load.checkins / load.elapsed_s,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "server_cpu_ms": server_s * per,
        "rest_cpu_ms": rest_s * per,
        "load_cpu_ms": load_s * per,
    }


async def _campaign_run(
    base: str, admin: str, gateways: list[tuple[str, str]], release_id: int
) -> float:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        auth = {"Authorization": f"Bearer {admin}"}
        started = time.perf_counter()
        response = await client.post(
            f"{API}/campaigns",
            headers=auth,
            json={
                "name": "bench-all",
                "release_id": release_id,
                "phases": [{"name": "all", "percent": 100, "soak_s": 0}],
            },
        )
        response.raise_for_status()
        campaign_id = response.json()["id"]
        gate = asyncio.Semaphore(200)

        retries = 0

        async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
            # Every agent step is idempotent (repeating a state is accepted), so a
            # connection the server closed under load is simply retried, as an agent would.
            nonlocal retries
            for attempt in range(5):
                try:
                    return (await client.request(method, url, **kwargs)).raise_for_status()
                except httpx.TransportError:
                    retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise RuntimeError(f"{method} {url} failed 5 times")

        async def agent(token: str, serial: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            async with gate:
                answer = await call(
                    "POST",
                    f"{API}/agent/check-in",
                    headers=headers,
                    json={"devices": [_device(serial)]},
                )
                offer = answer.json()["offers"][0]
                report = {"device_serial": serial, "campaign_id": campaign_id}
                await call(
                    "POST",
                    f"{API}/agent/reports",
                    headers=headers,
                    json={**report, "state": "downloading"},
                )
                artifact = await call("GET", offer["artifact_url"], headers=headers)
                assert len(artifact.content) == offer["size_bytes"]
                for state in ("downloaded", "installing", "verifying", "succeeded"):
                    await call(
                        "POST",
                        f"{API}/agent/reports",
                        headers=headers,
                        json={**report, "state": state, "firmware_version": offer["version"]},
                    )

        await asyncio.gather(*(agent(t, s) for t, s in gateways))
        status = (await client.get(f"{API}/campaigns/{campaign_id}", headers=auth)).json()
        assert status["status"] == "completed", status
        return time.perf_counter() - started


def _release(workdir: Path) -> tuple[Path, bytes]:
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    from bmsfw.package import (
        ComponentSource,
        HardwareCompat,
        build_release,
        create_pki,
        sign_release,
    )

    pki = create_pki("ed25519", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    root = workdir / "root.pem"
    root.write_bytes(pki.root_certificate.public_bytes(serialization.Encoding.PEM))
    package = sign_release(
        build_release(
            product="bms-app",
            version="1.1.0",
            security_counter=2,
            hardware=HardwareCompat("BMS-48V", ("A",)),
            min_bootloader_version="1.0.0",
            components=[ComponentSource.firmware("app", os.urandom(64 * 1024))],
            image_signing_key=pki.image_signing_key,
        ),
        pki.signer(),
    )
    return root, package


def run_case(kind: str, args: argparse.Namespace, use_wrk: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        workdir = Path(tmp)
        backend = Backend(kind, workdir)
        try:
            root, package = _release(workdir)
            admin, gateways = _seed(backend.url, workdir, args.devices)
            with _server(backend.url, workdir, root, args.workers) as server:
                base = server.url
                auth = {"Authorization": f"Bearer {admin}"}
                with httpx.Client(base_url=base, headers=auth, timeout=60) as client:
                    # Register every device, upload the release, start a canary campaign.
                    for token, serial in gateways:
                        client.post(
                            f"{API}/agent/check-in",
                            json={"devices": [_device(serial)]},
                            headers={"Authorization": f"Bearer {token}"},
                        ).raise_for_status()
                    release = client.post(f"{API}/releases", content=package).raise_for_status()
                    release_id = release.json()["id"]
                    canary = client.post(
                        f"{API}/campaigns",
                        json={
                            "name": "canary",
                            "release_id": release_id,
                            "phases": [
                                {"name": "canary", "devices": 5, "soak_s": 86400},
                                {"name": "all", "percent": 100},
                            ],
                        },
                    ).raise_for_status()
                rows = []
                for model in args.models.split(","):
                    pace_s = args.pace_s if model == "paced" else 0.0
                    print(f"  {model} load for {args.duration_s:g} s ...", flush=True)
                    row = _measure(
                        base,
                        server.pid,
                        gateways,
                        duration_s=args.duration_s,
                        pace_s=pace_s,
                        workdir=workdir,
                        load_procs=args.load_procs,
                        use_wrk=use_wrk,
                    )
                    row.update(
                        backend=kind,
                        workers=args.workers,
                        devices=args.devices,
                        model=model if model == "closed" else f"paced {args.pace_s:g}s",
                    )
                    rows.append(row)
                with httpx.Client(base_url=base, headers=auth, timeout=60) as client:
                    client.post(f"{API}/campaigns/{canary.json()['id']}/cancel").raise_for_status()
                wall = (
                    asyncio.run(_campaign_run(base, admin, gateways, release_id))
                    if args.campaign
                    else float("nan")
                )
                for row in rows:
                    row["campaign_s"] = wall
        finally:
            backend.drop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument(
        "--load-procs", type=int, default=1, help="wrk threads / fallback client processes"
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--models", default="closed,paced", help="closed, paced or both")
    parser.add_argument("--pace-s", type=float, default=1.0, help="paced model poll interval")
    parser.add_argument("--no-campaign", dest="campaign", action="store_false")
    parser.add_argument(
        "--python-load", action="store_true", help="use the asyncio client even if wrk exists"
    )
    parser.add_argument(
        "--serve-args",
        default="",
        help="more `bmsfw fleet serve` options for an A/B, e.g. '--check-ins-per-s 0' (the "
        "shared check-in rate limit off)",
    )
    args = parser.parse_args()
    SERVE_ARGS.extend(args.serve_args.split())
    use_wrk = shutil.which("wrk") is not None and not args.python_load
    if not use_wrk:
        print(
            "WARNING: wrk not found (apt-get install wrk) or --python-load given: using the "
            "asyncio raw-socket client, which takes CPU from the server on a small machine",
            flush=True,
        )
    rows = []
    for kind in args.backends.split(","):
        if kind == "postgres" and not _postgres_available():
            print(f"(PostgreSQL at {POSTGRES_URL} not reachable: skipped)")
            continue
        print(f"running {kind} with {args.workers} server process(es) ...", flush=True)
        rows += run_case(kind, args, use_wrk)
    print(
        f"\nfleet server, {os.cpu_count()} CPU(s), {args.devices} devices, "
        f"{args.duration_s:g} s per load model; CPU ms are per check-in"
    )
    header = (
        f"{'backend':<9} {'procs':>5} {'load':<11} {'gen':<7} {'check-ins':>9} {'per s':>7} "
        f"{'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'srv cpu':>7} {'db+os':>6} "
        f"{'gen cpu':>7} {'campaign s':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['backend']:<9} {r['workers']:>5} {r['model']:<11} {r['generator']:<7} "
            f"{r['checkins']:>9} {r['rate']:>7.0f} {r['errors']:>6} {r['p50_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f} {r['server_cpu_ms']:>7.2f} {r['rest_cpu_ms']:>6.2f} "
            f"{r['load_cpu_ms']:>7.2f} {r['campaign_s']:>10.1f}"
        )


if __name__ == "__main__":
    main()
