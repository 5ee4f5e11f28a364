"""What keeping every update's evidence bundle costs the fleet server, per upload.

Run: ``.venv/bin/python -m benchmarks.bench_evidence_store
[--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test] [--uploads 20]``

A gateway uploads the bundle of a CAN update (its BLF trace is most of it) to
``POST /api/v1/agent/evidence`` of the real app, in process (FastAPI's test client:
no network); SQLite always, PostgreSQL when ``--postgres`` or
BMSFW_TEST_POSTGRES_URL names one (a throwaway schema). Columns, medians over
``--uploads`` different bundles of each size:

* ``verify ms`` — the server's check alone (:func:`bmsfw.fleet.evidence.check_upload`,
  what ``bmsfw evidence verify`` does): the alternative of checking without keeping;
* ``upload ms`` — the whole request: read, verify, store, audit, answer;
* ``list ms`` / ``download ms`` — the device's record, and one bundle back.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from benchmarks.bench_dashboard import _database
from benchmarks.bench_evidence import KIB, MIB, flash_frames
from bmsfw.evidence.bundle import BusTrace, EvidenceInputs, blf_bytes, build_bundle
from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.evidence import check_upload
from bmsfw.link.tap import CanFrameRecorder
from bmsfw.protocol.session import DeviceIdentity
from bmsfw.sim.lab import lab_pki
from bmsfw.update.report import UpdateReport

SERIAL = "BENCH0001"


def _blf(image_bytes: int) -> tuple[bytes, int]:
    recorder = CanFrameRecorder()
    for msg, received in flash_frames(image_bytes):
        recorder(msg, received=received)
    return blf_bytes(recorder.messages()), len(recorder)


def _bundles(image_bytes: int, count: int) -> list[bytes]:
    """``count`` bundles of one CAN update each (different creation times: different bytes)."""
    blf, frames = _blf(image_bytes)
    report = UpdateReport(
        node=SERIAL,
        outcome="updated",
        running_version="2.0.0",
        device_before=DeviceIdentity("vendor", "BMS-48V", "A", SERIAL, "1.0", "1.0.0", 1, "A"),
    )
    return [
        build_bundle(
            EvidenceInputs(
                report=report,
                created_at=1_790_000_000.0 + i,
                bmsfw_version="bench",
                trace=BusTrace("can-blf", blf, frames),
            )
        )
        for i in range(count)
    ]


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.1f}"


def run(kind: str, postgres: str, uploads: int, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp, _database(kind, postgres, Path(tmp)) as url:
        admin = init_database(url)
        assert admin is not None
        root = lab_pki().root_certificate.public_bytes(serialization.Encoding.PEM)
        config = ServerConfig(
            db_url=url, trust_root_pem=root, tick_interval_s=0, refusal_flush_interval_s=0,
            check_ins_per_s=0, auth_failures_per_min=0,
        )  # fmt: skip
        app = create_app(config)
        with TestClient(app) as client:
            auth = {"Authorization": f"Bearer {admin}"}
            gateway = client.post(
                "/api/v1/gateways", headers=auth, json={"name": "gw", "site": "s", "tags": []}
            ).json()["token"]
            gw = {"Authorization": f"Bearer {gateway}", "Content-Type": "application/zip"}
            device = {
                "serial": SERIAL, "model": "BMS-16S", "hw_revision": "C",
                "bootloader_version": "2.0.0", "firmware_version": "1.0.0",
                "security_counter": 1, "soc_pct": 50.0, "temperature_c": 25.0,
            }  # fmt: skip
            checked = client.post("/api/v1/agent/check-in", headers=gw, json={"devices": [device]})
            assert checked.status_code == 200, checked.text
            for image in sizes:
                bundles = _bundles(image, uploads)
                verify, upload, listing, download = [], [], [], []
                for data in bundles:
                    start = time.perf_counter()
                    check_upload(data)
                    verify.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    answer = client.post("/api/v1/agent/evidence", headers=gw, content=data)
                    upload.append(time.perf_counter() - start)
                    assert answer.status_code == 201, answer.text
                    start = time.perf_counter()
                    listed = client.get(f"/api/v1/devices/{SERIAL}/evidence", headers=auth)
                    listing.append(time.perf_counter() - start)
                    assert listed.status_code == 200
                    start = time.perf_counter()
                    back = client.get(f"/api/v1/evidence/{answer.json()['id']}", headers=auth)
                    download.append(time.perf_counter() - start)
                    assert back.content == data
                print(
                    f"{kind:>9} {image // KIB:>6}Ki {len(bundles[0]) / KIB:>10.0f} "
                    f"{_ms(verify):>10} {_ms(upload):>10} {_ms(listing):>8} {_ms(download):>12}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default=os.environ.get("BMSFW_TEST_POSTGRES_URL", ""))
    parser.add_argument("--uploads", type=int, default=20)
    args = parser.parse_args()
    header = (
        f"{'database':>9} {'image':>8} {'bundle KiB':>10} {'verify ms':>10} {'upload ms':>10} "
        f"{'list ms':>8} {'download ms':>12}"
    )
    print(header)
    print("-" * len(header))
    for kind in ["sqlite"] + (["postgres"] if args.postgres else []):
        run(kind, args.postgres, args.uploads, [64 * KIB, 1 * MIB])
    print(
        "\nverify: the check alone; upload: the whole request (read, verify, store, audit); "
        "list: the device's record (no bundle bytes read); download: one bundle back."
    )


if __name__ == "__main__":
    main()
