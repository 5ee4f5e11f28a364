"""The API's list routes with 10,000 devices: keyset pages and filters, SQLite and
PostgreSQL side by side, compared with the alternatives (an OFFSET page at the same
depth, and reading the whole fleet as ``GET /devices`` did before it was paged).

Seeds the fleet as bench_dashboard does (20 gateways x 500 devices through the API, a
flagged device per gateway, a campaign), then times each request in process over ASGI
(guard, query, serialisation; no network):

    .venv/bin/python -m benchmarks.bench_api_paging [--devices 10000] [--repeat 15]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from benchmarks.bench_dashboard import (
    START,
    _database,
    _seed,
    bench_server_config,
    fleet_bench_setup,
)
from bmsfw.fleet.app import create_app
from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.clock import FakeClock
from bmsfw.fleet.device_query import DeviceFilter as Everything
from bmsfw.fleet.paging import encode_cursor
from bmsfw.fleet.web.queries import DeviceFilter, FleetQueries


def _timed(call: Callable[[], Any], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def _get(client: TestClient, path: str, headers: dict[str, str], **params: Any) -> Any:
    response = client.get(path, headers=headers, params=params)
    assert response.status_code == 200, response.text[:200]
    return response


def _run(kind: str, args: argparse.Namespace, release: bytes, root: bytes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, _database(kind, args.postgres, Path(tmp)) as url:
        clock = FakeClock(START)
        admin = init_database(url, clock=clock)
        assert admin is not None
        config = bench_server_config(url, root)
        app = create_app(config, clock=clock)
        with TestClient(app, base_url="https://bench") as client:
            _seed(client, admin, args.devices, release)
            h = {"Authorization": f"Bearer {admin}"}
            serials = [d["serial"] for d in app.state.service.device_page(Everything()).items]
            depth = len(serials) - 100
            deep = encode_cursor("devices", serials[depth - 1])
            r = args.repeat
            result: dict[str, Any] = {
                "devices, first page (100)": _timed(lambda: _get(client, "/api/v1/devices", h), r),
                f"devices, page at row {depth} (cursor)": _timed(
                    lambda: _get(client, "/api/v1/devices", h, cursor=deep), r
                ),
                "devices, a page of 1000": _timed(
                    lambda: _get(client, "/api/v1/devices", h, limit=1000), r
                ),
                "devices?site=site-3": _timed(
                    lambda: _get(client, "/api/v1/devices", h, site="site-3"), r
                ),
                "devices?flagged=true": _timed(
                    lambda: _get(client, "/api/v1/devices", h, flagged="true"), r
                ),
                "devices?version=0.9.2&online=true": _timed(
                    lambda: _get(client, "/api/v1/devices", h, version="0.9.2", online="true"), r
                ),
                "audit, first page (100)": _timed(lambda: _get(client, "/api/v1/audit", h), r),
            }
            queries = FleetQueries(app.state.service.sessions, timedelta(seconds=180))
            page = depth // 100 + 1
            result[f"alt: OFFSET page at row {depth} (query only)"] = _timed(
                lambda: queries.devices(DeviceFilter(), page, 100, clock.now()), r
            )
            result["alt: whole fleet in one answer (service)"] = _timed(
                app.state.service.list_devices, max(3, r // 5)
            )

            def walk() -> int:
                rows, cursor = 0, None
                while True:
                    params: dict[str, Any] = {"limit": 1000}
                    if cursor:
                        params["cursor"] = cursor
                    response = _get(client, "/api/v1/devices", h, **params)
                    rows += len(response.json())
                    cursor = response.headers.get("x-next-cursor")
                    if cursor is None:
                        return rows

            assert walk() == args.devices
            result["whole fleet, every page of 1000"] = _timed(walk, max(3, r // 5))
            return result


def main() -> None:
    args, release, root, kinds = fleet_bench_setup(__doc__.splitlines()[0])
    results = {kind: _run(kind, args, release, root) for kind in kinds}
    print(f"API list routes with {args.devices} devices; median / p95, ms")
    header = f"{'request':<46}" + "".join(f"{k:>22}" for k in kinds)
    print(header)
    print("-" * len(header))
    for name in next(iter(results.values())):
        cells = [f"{results[k][name][0]:>12.1f} / {results[k][name][1]:>7.1f}" for k in kinds]
        print(f"{name:<46}" + "".join(cells))


if __name__ == "__main__":
    main()
