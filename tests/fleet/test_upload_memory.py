"""A release upload is never whole in memory: it is spooled to a temporary file while it
arrives, then hashed, verified and copied into the database from that file a chunk at
a time. Measured with tracemalloc around the request (the body is fed to the app's
ASGI interface in 256 KiB chunks from a buffer made before the measurement)."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile
from typing import Any

import pytest

from bmsfw.package import ComponentSource, HardwareCompat, build_release, sign_release

from .conftest import START, Fleet, StreamedBody

MIB = 1024 * 1024


def _peak_while(action: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _upload(fleet: Fleet, data: bytes) -> tuple[int, dict[str, Any], int]:
    body = StreamedBody(0, data=data)
    headers = {**fleet.h("release_manager"), "content-type": "application/octet-stream"}
    (status, answer), peak = _peak_while(
        lambda: body.post(fleet.app, "/api/v1/releases", headers, b"filename=big.bmsfw")
    )
    return status, json.loads(answer), peak


def test_a_large_upload_that_is_no_package_is_refused_without_reading_it_into_memory(
    fleet: Fleet,
) -> None:
    # 24 MiB (within the 32 MiB limit): a zip whose one member is incompressible noise.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("components/app.bin", os.urandom(24 * MIB))
    data = out.getvalue()
    status, answer, peak = _upload(fleet, data)
    assert status == 422 and answer["error"]["code"] == "BMSFW-E605", answer
    print(f"upload {len(data) / MIB:.1f} MiB (no package), traced peak {peak / MIB:.1f} MiB")
    assert peak < 4 * MIB, f"peak {peak / MIB:.1f} MiB for a {len(data) / MIB:.0f} MiB upload"
    assert fleet.call("GET", "/api/v1/releases", "viewer") == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_large_valid_release_is_verified_and_stored_in_about_one_image_of_memory(
    fleet: Fleet, pki: Any
) -> None:
    """What stays in memory is the decoded image the signed manifest declares (MCUboot
    verifies the whole image); not the upload, not a second copy for the database."""
    image = os.urandom(12 * MIB)
    data = sign_release(
        build_release(
            product="bms-app",
            version="9.0.0",
            security_counter=9,
            hardware=HardwareCompat("BMS-48V", ("A",)),
            min_bootloader_version="1.0.0",
            components=[ComponentSource.firmware("app", image)],
            image_signing_key=pki.image_signing_key,
            release_notes="a large one",
            created_at=START,
        ),
        pki.signer(),
    )
    del image
    status, answer, peak = _upload(fleet, data)
    assert status == 201, answer
    assert answer["size_bytes"] == len(data)
    print(f"upload {len(data) / MIB:.1f} MiB, traced peak {peak / MIB:.1f} MiB")
    assert peak < len(data) * 1.3 + 2 * MIB, f"peak {peak / MIB:.1f} MiB"
    artifact = fleet.client.get(
        f"/api/v1/releases/{answer['id']}/artifact", headers=fleet.h("viewer")
    )
    assert artifact.status_code == 200 and artifact.content == data
