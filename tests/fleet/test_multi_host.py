"""Several hosts share nothing but the database: two real server processes (uvicorn, each
in a working directory of its own, no artifact directory) on one database; a release
uploaded through one is downloaded, with Range, through the other."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bmsfw.fleet.db import head_revision

from .conftest import make_release, serve_two_processes


@pytest.fixture
def two_hosts(
    db_url: str, tmp_path: Path, root_pem: bytes
) -> Iterator[tuple[str, str, str, Path, Path]]:
    with serve_two_processes(db_url, tmp_path, root_pem) as (url_a, url_b, admin):
        yield url_a, url_b, admin, tmp_path / "host-a", tmp_path / "host-b"


def test_upload_through_one_process_download_with_range_through_another(
    two_hosts: tuple[str, str, str, Path, Path], pki: Any
) -> None:
    url_a, url_b, admin, dir_a, dir_b = two_hosts
    auth = {"Authorization": f"Bearer {admin}"}
    data = make_release(pki, "3.1.0")
    uploaded = httpx.post(
        f"{url_a}/api/v1/releases",
        headers=auth,
        content=data,
        params={"filename": "bms-3.1.0.bmsfw"},
        timeout=30,
    )
    assert uploaded.status_code == 201, uploaded.text
    release_id = uploaded.json()["id"]

    artifact = f"{url_b}/api/v1/releases/{release_id}/artifact"
    whole = httpx.get(artifact, headers=auth, timeout=30)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["x-content-sha256"] == hashlib.sha256(data).hexdigest()
    etag = whole.headers["etag"]
    tail = httpx.get(
        artifact, headers={**auth, "Range": "bytes=1000-", "If-Range": etag}, timeout=30
    )
    assert tail.status_code == 206 and tail.content == data[1000:]
    assert tail.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    middle = httpx.get(artifact, headers={**auth, "Range": "bytes=10-19"}, timeout=30)
    assert middle.status_code == 206 and middle.content == data[10:20]
    # Neither process kept a file of its own: the database is all they share.
    for workdir in (dir_a, dir_b):
        assert [p.name for p in workdir.rglob("*")] == []


def test_health_and_readiness_need_no_credential_and_change_nothing(fleet: Any) -> None:
    from sqlalchemy import create_engine, text

    def snapshot() -> list[Any]:
        engine = create_engine(fleet.db_url)
        try:
            with engine.connect() as conn:
                return [
                    conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in ("audit_log", "credentials", "gateways")
                ]
        finally:
            engine.dispose()

    before = snapshot()
    alive = fleet.client.get("/healthz")
    assert alive.status_code == 200 and alive.json()["status"] == "alive"
    ready = fleet.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "status": "ready",
        "schema_revision": head_revision(),
        "detail": "",
    }
    assert snapshot() == before
    # A database behind the code's migrations is not ready.
    engine = create_engine(fleet.db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    engine.dispose()
    behind = fleet.client.get("/readyz")
    assert behind.status_code == 503 and behind.json()["schema_revision"] == "0003"
