"""Fleet server load: ``python -m benchmarks.bench_fleet [--devices 1000] [--duration-s 10]``.

Starts the real server (``bmsfw fleet serve``, plain HTTP on loopback so the
numbers are the server's, with N uvicorn worker processes) on SQLite and, when
one answers, PostgreSQL. ``--devices`` simulated gateways (one BMS each, each
with its own token) poll ``POST /api/v1/agent/check-in`` back to back for
``--duration-s`` from load-generator processes (asyncio + httpx), while a
running campaign targets every device (so each check-in also runs the offer
query; the canary phase holds 5 devices, which get offers).

Then a campaign over all devices in one phase runs to completion, every
simulated device walking the agent protocol (check-in, download the artifact,
report downloading .. succeeded): the server side of a 1,000-device campaign,
with no BMS behind the agent (the wire-time model and the update pipeline are
not in this number).

Note: load generator and server share the machine's cores; on a 2-core box
the server gets roughly half of them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    service = FleetService(
        make_session_factory(engine), ArtifactStore(workdir / "artifacts"), SystemClock()
    )
    bench = Principal(0, "bench", "operator", "admin", None)
    gateways = []
    for i in range(devices):
        result = service.create_gateway(bench, f"gw{i:05d}", f"site-{i % 20}", [])
        gateways.append((str(result["token"]), f"BMS{i:05d}"))
    engine.dispose()
    return admin, gateways


def _start_server(url: str, workdir: Path, root: Path, workers: int) -> tuple[Any, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from bmsfw.cli import main; main()",
            "fleet",
            "serve",
            "--db",
            url,
            "--artifacts",
            str(workdir / "artifacts"),
            "--trust-root",
            str(root),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--poll-interval-s",
            "60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}{API}/whoami", timeout=1)
            return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(
        "server did not start: " + (proc.stderr.read().decode() if proc.stderr else "")
    )


async def _poll_loop(
    base: str, gateways: list[tuple[str, str]], duration_s: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=len(gateways), max_keepalive_connections=len(gateways))
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        stop_at = time.perf_counter() + duration_s

        async def device(token: str, serial: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            body = {"agent_version": "bench", "devices": [_device(serial)]}
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        f"{API}/agent/check-in", json=body, headers=headers
                    )
                    response.raise_for_status()
                except httpx.HTTPError:
                    # A real agent retries at its next poll; count it and go on.
                    errors += 1
                    await asyncio.sleep(0.1)
                    continue
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(device(t, s) for t, s in gateways))
    return latencies, errors


def _load_worker(base: str, gateways: list[tuple[str, str]], duration_s: float, out: Any) -> None:
    out.put(asyncio.run(_poll_loop(base, gateways, duration_s)))


def _measure_checkins(
    base: str, gateways: list[tuple[str, str]], duration_s: float, load_procs: int
) -> tuple[int, float, list[float], int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shards = [gateways[i::load_procs] for i in range(load_procs)]
    procs = [ctx.Process(target=_load_worker, args=(base, s, duration_s, queue)) for s in shards]
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors = 0
    for _ in procs:
        got, failed = queue.get(timeout=duration_s + 300)
        latencies += got
        errors += failed
    for p in procs:
        p.join()
    # Each device polls for duration_s once its process is up; rate over that window.
    return len(latencies), duration_s, latencies, errors


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
                        json={**report, "state": state},
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


def run_case(
    kind: str, workers: int, devices: int, duration_s: float, load_procs: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        workdir = Path(tmp)
        backend = Backend(kind, workdir)
        try:
            root, package = _release(workdir)
            admin, gateways = _seed(backend.url, workdir, devices)
            proc, base = _start_server(backend.url, workdir, root, workers)
            try:
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
                count, elapsed, latencies, errors = _measure_checkins(
                    base, gateways, duration_s, load_procs
                )
                with httpx.Client(base_url=base, headers=auth, timeout=60) as client:
                    client.post(f"{API}/campaigns/{canary.json()['id']}/cancel").raise_for_status()
                wall = asyncio.run(_campaign_run(base, admin, gateways, release_id))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        finally:
            backend.drop()
    latencies.sort()
    return {
        "backend": kind,
        "workers": workers,
        "devices": devices,
        "checkins": count,
        "errors": errors,
        "rate": count / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "campaign_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    rows = []
    for kind in args.backends.split(","):
        if kind == "postgres" and not _postgres_available():
            print(f"(PostgreSQL at {POSTGRES_URL} not reachable: skipped)")
            continue
        print(f"running {kind} with {args.workers} server process(es) ...", flush=True)
        rows.append(run_case(kind, args.workers, args.devices, args.duration_s, args.load_procs))
    print(f"\nfleet server, {os.cpu_count()} CPU(s), {args.duration_s:g} s of polling per backend")
    header = (
        f"{'backend':<10} {'procs':>5} {'devices':>7} {'check-ins':>9} {'per s':>8} "
        f"{'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'campaign wall s':>16}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['backend']:<10} {r['workers']:>5} {r['devices']:>7} {r['checkins']:>9} "
            f"{r['rate']:>8.0f} {r['errors']:>6} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{r['campaign_s']:>16.1f}"
        )


if __name__ == "__main__":
    main()
