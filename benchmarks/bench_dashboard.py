"""Dashboard response times with 10,000 devices, SQLite and PostgreSQL side by side.

Seeds a fleet through the API as agents would (20 gateways x 500 devices, a flagged
device per gateway, a campaign over the whole fleet), signs in to the dashboard and
times each page (the app in process over ASGI: handler, queries and rendering; no
network). The API's unpaged ``GET /api/v1/devices`` is timed alongside: what a page
would cost if it loaded the whole fleet.

    .venv/bin/python -m benchmarks.bench_dashboard [--devices 10000] [--repeat 15]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

PostgreSQL is used when ``--postgres`` or BMSFW_TEST_POSTGRES_URL names one (a
throwaway schema is created and dropped).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, select, text

from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.clock import FakeClock
from bmsfw.fleet.models import Device, TelemetrySample
from bmsfw.package import ComponentSource, HardwareCompat, build_release, create_pki, sign_release

START = dt.datetime(2025, 1, 6, 12, 0, tzinfo=dt.UTC)
PER_GATEWAY = 500


@contextmanager
def _database(kind: str, postgres: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'fleet.db'}"
        return
    schema = f"bmsfw_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in postgres else "?"
    try:
        yield f"{postgres}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _device(serial: str, i: int, version: str | None = None) -> dict[str, object]:
    return {
        "serial": serial,
        "model": "BMS-48V" if i % 7 else "BMS-24V",
        "hw_revision": "A",
        "bootloader_version": "1.0.0",
        "firmware_version": version or ("1.0.0" if i % 3 else "0.9.2"),
        "security_counter": 1,
        "soc_pct": float(i % 100),
        "temperature_c": 10.0 + i % 30,
    }


def _seed(client: TestClient, admin: str, devices: int, release: bytes) -> str:
    h = {"Authorization": f"Bearer {admin}"}
    serial = ""
    for g in range(-(-devices // PER_GATEWAY)):
        token = client.post(
            "/api/v1/gateways", headers=h, json={"name": f"gw{g:03d}", "site": f"site-{g % 5}"}
        ).json()["token"]
        gw = {"Authorization": f"Bearer {token}"}
        count = min(PER_GATEWAY, devices - g * PER_GATEWAY)
        batch = [_device(f"SN-{g:03d}-{i:04d}", i) for i in range(count)]
        assert client.post("/api/v1/agent/check-in", headers=gw, json={"devices": batch}).is_success
        batch[0] = _device(batch[0]["serial"], 0, "1.0.9")  # type: ignore[arg-type]
        assert client.post("/api/v1/agent/check-in", headers=gw, json={"devices": batch}).is_success
        serial = str(batch[1]["serial"])
    rel = client.post(
        "/api/v1/releases", headers=h, content=release, params={"filename": "r.bmsfw"}
    ).json()
    made = client.post(
        "/api/v1/campaigns",
        headers=h,
        json={"name": "whole fleet", "release_id": rel["id"], "selector": {"models": ["BMS-48V"]}},
    )
    assert made.is_success, made.text
    return serial


def _sign_in(client: TestClient, token: str) -> None:
    page = client.get("/ui/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert nonce
    client.post("/ui/login", data={"csrf": nonce.group(1), "token": token})


def _time(client: TestClient, path: str, repeat: int, headers: dict[str, str]) -> tuple[float, ...]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        # A session that was not open would answer the sign-in page after a redirect.
        assert response.status_code == 200 and not response.history, (path, response.text[:200])
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def bench_server_config(url: str, root: bytes) -> ServerConfig:
    """The timed server: tick, check-in and sign-in rate limits, refusal flushing all set to 0."""
    return ServerConfig(
        db_url=url,
        trust_root_pem=root,
        tick_interval_s=0,
        check_ins_per_s=0,
        auth_failures_per_min=0,
        refusal_flush_interval_s=0,
    )


def _run(kind: str, args: argparse.Namespace, release: bytes, root: bytes) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, _database(kind, args.postgres, Path(tmp)) as url:
        clock = FakeClock(START)
        admin = init_database(url, clock=clock)
        assert admin is not None
        config = bench_server_config(url, root)
        with TestClient(create_app(config, clock=clock), base_url="https://bench") as client:
            started = time.perf_counter()
            serial = _seed(client, admin, args.devices, release)
            seeded = time.perf_counter() - started
            _sign_in(client, admin)
            app = client.app
            telemetry = app.state.telemetry  # type: ignore[attr-defined]
            started = time.perf_counter()
            sampled = telemetry.sample(clock.now())
            sample_ms = (time.perf_counter() - started) * 1000
            assert sampled == args.devices, sampled
            _three_days_of_samples(telemetry.engine, serial, clock.now())
            pages = {
                "overview /ui/": "/ui/",
                "devices, page 1": "/ui/devices",
                "devices, page 100 (offset 2475)": "/ui/devices?page=100",
                "devices, flagged": "/ui/devices?flagged=1",
                "devices, by last check-in": "/ui/devices?sort=last_seen&desc=1&size=100",
                "device page": f"/ui/devices/{serial}",
                "device page, 72 h charts (432 pts)": f"/ui/devices/{serial}?hours=72",
                "new campaign: target preview": "/ui/campaigns/preview?release_id=1&sites=site-1",
                "campaign page": "/ui/campaigns/1",
                "campaign live fragment": "/ui/campaigns/1/live",
            }
            result: dict[str, object] = {"seed_s": seeded, "sample_ms": sample_ms}
            for name, path in pages.items():
                result[name] = _time(client, path, args.repeat, {})
            bearer = {"Authorization": f"Bearer {admin}"}
            result["API GET /devices (whole fleet)"] = _time(
                client, "/api/v1/devices", max(3, args.repeat // 5), bearer
            )
            events = app.state.events  # type: ignore[attr-defined]
            cursor = events.start()
            polls = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                _batch, cursor = events.poll(cursor)
                polls.append((time.perf_counter() - started) * 1000)
            polls.sort()
            result["event stream: 1 poll, nothing new"] = (
                statistics.median(polls),
                polls[int(0.95 * (len(polls) - 1))],
            )
            return result


def _three_days_of_samples(engine: Engine, serial: str, now: dt.datetime) -> None:
    """The timed device's history, as 3 days of 10-minute samples would leave it."""
    with engine.begin() as conn:
        device_id = conn.execute(select(Device.id).where(Device.serial == serial)).scalar_one()
        conn.execute(
            TelemetrySample.__table__.insert(),
            [
                {
                    "device_id": device_id,
                    "at": now - dt.timedelta(minutes=10 * k),
                    "soc_pct": 50.0 + (k % 30),
                    "temperature_c": 20.0 + (k % 10),
                }
                for k in range(1, 432)
            ],
        )


def fleet_bench_setup(description: str) -> tuple[argparse.Namespace, bytes, bytes, list[str]]:
    """The command line (--devices, --repeat, --postgres), a signed release, the root it
    chains to, and the databases to run on (SQLite, and PostgreSQL when given)."""
    logging.getLogger("bmsfw").setLevel(logging.ERROR)  # the seeded flags are on purpose
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--postgres", default=os.environ.get("BMSFW_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    pki = create_pki("ed25519", now=START - dt.timedelta(days=1))
    root = pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    release = sign_release(
        build_release(
            product="bms-app",
            version="1.1.0",
            security_counter=2,
            hardware=HardwareCompat("BMS-48V", ("A",)),
            min_bootloader_version="1.0.0",
            components=[ComponentSource.firmware("app", b"\x00" * 2048)],
            image_signing_key=pki.image_signing_key,
            created_at=START,
        ),
        pki.signer(),
    )
    return args, release, root, ["sqlite"] + (["postgres"] if args.postgres else [])


def main() -> None:
    args, release, root, kinds = fleet_bench_setup(__doc__.splitlines()[0])
    results = {kind: _run(kind, args, release, root) for kind in kinds}
    print(f"dashboard with {args.devices} devices; median / p95 of {args.repeat} requests, ms")
    header = f"{'page':<34}" + "".join(f"{k:>22}" for k in kinds)
    print(header)
    print("-" * len(header))
    for name in next(iter(results.values())):
        if name in ("seed_s", "sample_ms"):
            continue
        cells = []
        for kind in kinds:
            median, p95 = results[kind][name]  # type: ignore[misc]
            cells.append(f"{median:>12.1f} / {p95:>7.1f}")
        print(f"{name:<34}" + "".join(cells))
    print(
        "telemetry sampler, one sample of every device: "
        + ", ".join(f"{k} {results[k]['sample_ms']:.0f} ms" for k in kinds)
    )
    print(
        "seeding through the API: " + ", ".join(f"{k} {results[k]['seed_s']:.1f} s" for k in kinds)
    )


if __name__ == "__main__":
    main()
