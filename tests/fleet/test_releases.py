"""Release upload verification, artifact download with Range, and the client's resume."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, insert, select, text

from bmsfw.fleet.artifacts import CHUNK_BYTES, ArtifactStore
from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.fleet.db import make_engine
from bmsfw.fleet.errors import (
    DownloadDigestMismatchError,
    DownloadTooLargeError,
    FleetUnreachableError,
    ReleaseRejectedError,
    RoleNotAllowedError,
)
from bmsfw.fleet.models import ArtifactChunk, Release
from bmsfw.fleet.protocol import CheckIn
from bmsfw.fleet.releases import TrustRoot, verify_upload
from bmsfw.fleet.testing import flip_artifact_byte

from .conftest import Fleet, bms, make_release


def _tamper(data: bytes) -> bytes:
    """Flip one byte inside the app component, keeping the zip well-formed."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename.startswith("components/"):
                body = body[:40] + bytes([body[40] ^ 0x01]) + body[41:]
            dst.writestr(info, body)
    return out.getvalue()


def _artifacts(fleet: Fleet) -> list[str]:
    """SHA-256 of every file in the artifact store (the database)."""
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            return sorted(set(conn.execute(select(ArtifactChunk.sha256)).scalars()))
    finally:
        engine.dispose()


def test_tampered_release_is_refused_with_the_package_code(fleet: Fleet, pki, tmp_path) -> None:
    response = fleet.client.post(
        "/api/v1/releases", headers=fleet.h("release_manager"), content=_tamper(make_release(pki))
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "BMSFW-E605"
    assert error["package_code"] == "BMSFW-E104"  # component hash mismatch
    assert fleet.call("GET", "/api/v1/releases", "viewer") == []
    assert _artifacts(fleet) == []  # nothing stored
    audit = fleet.call("GET", "/api/v1/audit")
    assert audit[0]["action"] == "release.rejected" and audit[0]["detail"]["code"] == "BMSFW-E104"


def test_release_signed_under_another_root_is_refused(fleet: Fleet, tmp_path) -> None:
    from bmsfw.package import create_pki

    foreign = make_release(create_pki("ed25519"))
    client = FleetClient(
        ClientConfig("http://testserver", fleet.tokens["release_manager"]), http=fleet.client
    )
    with pytest.raises(ReleaseRejectedError) as caught:
        client.upload_release(foreign, "foreign.bmsfw")
    assert caught.value.package_code.startswith("BMSFW-E1")
    assert fleet.call("GET", "/api/v1/releases", "viewer") == []


def test_upload_is_idempotent_and_needs_release_manager(fleet: Fleet, pki) -> None:
    data = make_release(pki)
    first = fleet.client.post("/api/v1/releases", headers=fleet.h("release_manager"), content=data)
    second = fleet.client.post("/api/v1/releases", headers=fleet.h("admin"), content=data)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert first.json()["components"][0]["name"] == "app"
    client = FleetClient(
        ClientConfig("http://testserver", fleet.tokens["operator"]), http=fleet.client
    )
    with pytest.raises(RoleNotAllowedError):
        client.upload_release(data, "x.bmsfw")


def test_range_download(fleet: Fleet, pki) -> None:
    data = make_release(pki)
    release = fleet.upload(data)
    url = f"/api/v1/releases/{release['id']}/artifact"
    full = fleet.client.get(url, headers=fleet.h("viewer"))
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes"
    part = fleet.client.get(url, headers={**fleet.h("viewer"), "Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == data[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    mid = fleet.client.get(url, headers={**fleet.h("viewer"), "Range": "bytes=10-19"})
    assert mid.content == data[10:20]
    beyond = fleet.client.get(url, headers={**fleet.h("viewer"), "Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416


def _offer_setup(fleet: Fleet, pki) -> tuple[bytes, Any, FleetClient]:
    data = make_release(pki)
    release = fleet.upload(data)
    fleet.add_gateway("gw", "site")
    fleet.check_in("gw", [bms("S1")])
    fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "c",
            "release_id": release["id"],
            "phases": [{"name": "all", "percent": 100}],
        },
    )
    agent = FleetClient(ClientConfig("http://testserver", fleet.gateways["gw"]), http=fleet.client)
    offer = agent.check_in(CheckIn(devices=[bms("S1")])).offers[0]  # type: ignore[list-item]
    return data, offer, agent


class _BreakAfter(httpx.BaseTransport):
    """Forwards to the app, but the response body breaks off after ``limit`` bytes."""

    def __init__(self, inner: httpx.BaseTransport, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        body = response.read()
        limit = self.limit

        class _Stream(httpx.SyncByteStream):
            def __iter__(self):  # type: ignore[no-untyped-def]
                yield body[:limit]
                raise httpx.ReadError("connection reset by peer")

        return httpx.Response(response.status_code, headers=response.headers, stream=_Stream())


def test_interrupted_download_resumes_with_range(fleet: Fleet, pki, tmp_path: Path) -> None:
    data, offer, agent = _offer_setup(fleet, pki)
    dest = tmp_path / "dl" / "release.bmsfw"
    dest.parent.mkdir()
    broken = httpx.Client(
        transport=_BreakAfter(fleet.client._transport, 1000), base_url="http://testserver"
    )
    flaky = FleetClient(ClientConfig("http://testserver", fleet.gateways["gw"]), http=broken)
    with pytest.raises(FleetUnreachableError, match="resumes"):
        flaky.download(offer, dest)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == 1000 and not dest.exists()

    seen: list[str] = []
    fleet.client.event_hooks["request"].append(lambda r: seen.append(r.headers.get("range", "")))
    result = agent.download(offer, dest)
    assert seen == ["bytes=1000-"]
    assert result.resumed_from == 1000 and result.transferred_bytes == len(data) - 1000
    assert dest.read_bytes() == data and not part.exists()
    assert result.throughput_bps > 0


def test_download_refuses_oversize_and_wrong_digest(fleet: Fleet, pki, tmp_path: Path) -> None:
    data, offer, agent = _offer_setup(fleet, pki)
    dest = tmp_path / "r.bmsfw"
    small = offer.model_copy(update={"size_bytes": len(data) - 10})
    with pytest.raises(DownloadTooLargeError):
        agent.download(small, dest)
    assert not dest.exists() and not dest.with_name("r.bmsfw.part").exists()
    wrong = offer.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(DownloadDigestMismatchError):
        agent.download(wrong, dest)
    assert not dest.exists() and not dest.with_name("r.bmsfw.part").exists()


def test_gateway_gets_only_offered_artifacts(fleet: Fleet, pki) -> None:
    release = fleet.upload(make_release(pki))
    fleet.add_gateway("gw", "site")
    response = fleet.client.get(f"/api/v1/releases/{release['id']}/artifact", headers=fleet.h("gw"))
    assert response.status_code == 403 and response.json()["error"]["code"] == "BMSFW-E613"


@pytest.mark.req("IEC62443-CR3.4")
def test_artifact_tampered_on_server_disk_is_detected(fleet: Fleet, pki, tmp_path) -> None:
    data, offer, agent = _offer_setup(fleet, pki)
    (stored,) = _artifacts(fleet)
    flip_artifact_byte(fleet.db_url, stored, len(data) - 1)  # same size, other bytes
    with pytest.raises(DownloadDigestMismatchError):
        agent.download(offer, tmp_path / "r.bmsfw")


def _blocked_on_a_lock(db_url: str) -> bool:
    """PostgreSQL: another session of this database waits for a row lock."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        return bool(waiting)
    finally:
        engine.dispose()


def test_the_loser_of_two_concurrent_uploads_of_one_file_stores_nothing(
    fleet: Fleet, pki: Any, root_pem: bytes
) -> None:
    """Another server process uploads the same file: its chunks and release row are
    written but not committed when this upload reaches the database. On PostgreSQL this
    upload waits on the unique key and loses: 409 E633 naming the winner; SQLite
    serialises writers, so it waits and then finds the winner: 200. Never a 500, and no
    chunk, row or audit entry of the loser is left."""
    data = make_release(pki, "4.2.0")
    facts = verify_upload(io.BytesIO(data), TrustRoot(root_pem), now=fleet.clock.now())
    postgres = fleet.db_url.startswith("postgresql")
    engine = make_engine(fleet.db_url)  # BEGIN IMMEDIATE on SQLite, as a server's
    try:
        with engine.connect() as other, ThreadPoolExecutor(1) as pool:
            in_flight = other.begin()
            ArtifactStore.put(other, facts.sha256, data)
            row = facts.release_row(
                filename="other.bmsfw", uploaded_at=fleet.clock.now(), by="token:other-process"
            )
            winner = other.execute(insert(Release).values(**row).returning(Release.id)).scalar_one()
            answer = pool.submit(
                fleet.client.post,
                "/api/v1/releases",
                headers=fleet.h("release_manager"),
                content=data,
                params={"filename": "r.bmsfw"},
            )
            deadline = time.monotonic() + 20
            while postgres and not _blocked_on_a_lock(fleet.db_url):
                assert time.monotonic() < deadline and not answer.done(), answer
                time.sleep(0.05)
            time.sleep(0.3)
            assert not answer.done()  # it waits for the other upload's transaction
            in_flight.commit()
            response = answer.result(60)
    finally:
        engine.dispose()

    if postgres:
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "BMSFW-E633"
        assert f"release {winner} " in error["message"]
    else:
        assert response.status_code == 200, response.text
        assert response.json()["id"] == winner
    [release] = fleet.call("GET", "/api/v1/releases", "viewer")
    assert release["id"] == winner and release["filename"] == "other.bmsfw"
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            chunks = conn.execute(
                select(func.count(), func.sum(func.length(ArtifactChunk.data)))
            ).one()
    finally:
        engine.dispose()
    assert tuple(chunks) == (-(-len(data) // CHUNK_BYTES), len(data))
    actions = [e["action"] for e in fleet.call("GET", "/api/v1/audit", params={"limit": 1000})]
    assert "release.upload" not in actions
    # Sent again, it is the stored release: 200.
    again = fleet.client.post("/api/v1/releases", headers=fleet.h("release_manager"), content=data)
    assert again.status_code == 200 and again.json()["id"] == winner
