"""The memory bound, measured on the real server process: `bmsfw fleet serve` (uvicorn in
a process of its own, SQLite), its peak resident memory (``VmHWM`` in /proc) before and
after 86 MB check-ins and 100 MB release uploads and backups, each sent once with a
``Content-Length`` and once chunked, over a raw socket as an attacker would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.testing import backup_body, check_in_body, memory_of, send_large_body
from server_support import serve_process

from .conftest import bms, make_release

MB = 1_000_000
MIB = 1024 * 1024


def _spaces(total: int) -> Iterator[bytes]:
    while total > 0:
        part = b" " * min(total, MIB)
        yield part
        total -= len(part)


def _technician_backup(total: int) -> Iterator[bytes]:
    return backup_body(total, serial=None)


def test_large_bodies_leave_the_server_process_memory_bounded(
    tmp_path: Path, root_pem: bytes, pki: Any
) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    admin = init_database(db)
    assert admin is not None
    root = tmp_path / "root.pem"
    root.write_bytes(root_pem)
    workdir = tmp_path / "server"
    workdir.mkdir()
    args = ["--db", db, "--trust-root", str(root), "--access-log", "", "--tick-interval-s", "0"]
    with serve_process(args, cwd=workdir) as server:
        api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"})
        gateway = api.post("/api/v1/gateways", json={"name": "gw", "site": "s"}).json()["token"]
        as_gateway = {"Authorization": f"Bearer {gateway}", "Content-Type": "application/json"}
        as_admin = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
        ok = httpx.post(
            f"{server.url}/api/v1/agent/check-in", headers=as_gateway, json={"devices": [bms("S1")]}
        )
        assert ok.status_code == 200, ok.text
        assert api.post("/api/v1/releases", content=make_release(pki)).status_code == 201
        # path, credential, body, size, and the route's default limit
        cases = [
            ("/api/v1/agent/check-in", as_gateway, check_in_body, 86 * MB, 512 * 1024),
            ("/api/v1/releases", as_admin, _spaces, 100 * MB, 32 * MIB),
            ("/api/v1/releases", as_admin, _spaces, 30 * MB, 32 * MIB),  # within: 422
            ("/api/v1/agent/backups", as_gateway, backup_body, 100 * MB, 2 * MIB),
            ("/api/v1/devices/S1/backups", as_admin, _technician_backup, 100 * MB, 2 * MIB),
        ]

        def send_all(scale: int) -> list[tuple[str, bool, int, int]]:
            results = []
            for path, headers, body, size, limit in cases:
                for declared in (True, False):
                    total = size // scale
                    answer = send_large_body(
                        server.url, path, headers, body(total), total, declare_length=declared
                    )
                    code = "BMSFW-E631" if total > limit else "BMSFW-E605"
                    assert answer.status == (413 if total > limit else 422), (path, answer)
                    assert json.loads(answer.body)["error"]["code"] == code
                    assert len(answer.body) < 2_000  # nothing of the body echoed
                    if total > limit and scale == 1:
                        # The answer came long before the body was through (declared:
                        # before any of it; chunked: once the limit was read, and
                        # socket buffers hold a few MB more).
                        expected = 0 if declared else limit + 16 * MB
                        assert answer.sent <= expected, (path, declared, answer.sent)
                    results.append((path, declared, total, answer.sent))
            return results

        send_all(scale=20)  # every path once (1.5-5 MB), so the baseline has run them
        _, peak_before = memory_of(server.pid)
        results = send_all(scale=1)
        rss_after, peak_after = memory_of(server.pid)
        grew = peak_after - peak_before
        print(
            f"server peak RSS {peak_before / MIB:.0f} MiB before, {peak_after / MIB:.0f} MiB "
            f"after {sum(r[2] for r in results) / MB:.0f} MB of refused bodies "
            f"(+{grew / MIB:.1f} MiB; RSS now {rss_after / MIB:.0f} MiB)"
        )
        assert grew < 16 * MIB
        # And it still serves.
        again = httpx.post(
            f"{server.url}/api/v1/agent/check-in", headers=as_gateway, json={"devices": [bms("S1")]}
        )
        assert again.status_code == 200, again.text
