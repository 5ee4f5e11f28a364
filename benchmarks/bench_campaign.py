"""Wall time of a whole OTA campaign with real agents and virtual BMS, wire-time model off.

``bench_fleet`` measures the server alone (HTTP clients that only report states);
this one runs the full path for every device: ``bmsfw fleet serve`` in its own
process (SQLite), G gateway agents (threads of this process, as ``bmsfw sim
fleet`` runs them) each with M virtual BMS reached in process (no link, so no
wire time; device time on a simulated clock), and a campaign canary 10 -> 100 %
with no soak. Per device the agent downloads (once per gateway), verifies the
package end to end, runs preflight, uploads the backup, transfers, self-tests,
confirms and reports every state.

    .venv/bin/python -m benchmarks.bench_campaign [--gateways 100] [--bms-per-gateway 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization

from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.package import ComponentSource, HardwareCompat, build_release, create_pki, sign_release
from bmsfw.sim import make_app_payload
from bmsfw.sim.fleet import SimFleet, SimFleetConfig

API = "/api/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _release(pki: object, version: str, counter: int, size: int) -> bytes:
    unsigned = build_release(
        product="BMS-16S firmware",
        version=version,
        security_counter=counter,
        hardware=HardwareCompat("BMS-16S", ("C",)),
        min_bootloader_version="2.0.0",
        components=[ComponentSource("app", make_app_payload(version, size=size))],
        image_signing_key=pki.image_signing_key,  # type: ignore[attr-defined]
        encoding="raw",
    )
    return sign_release(unsigned, pki.signer())  # type: ignore[attr-defined]


def _serve(workdir: Path, db_url: str, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from bmsfw.cli import main; main()", "fleet", "serve",
         "--db", db_url, "--artifacts", str(workdir / "artifacts"), "--trust-root", str(root),
         "--port", str(port), "--poll-interval-s", "1", "--tick-interval-s", "0.5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
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


def run(gateways: int, per_gateway: int, image_size: int) -> dict[str, float]:
    pki = create_pki("ed25519", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    root_pem = pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    v1, v2 = _release(pki, "1.0.0", 1, image_size), _release(pki, "2.0.0", 2, image_size)
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp:
        workdir = Path(tmp)
        (workdir / "root.pem").write_bytes(root_pem)
        db_url = f"sqlite:///{workdir / 'fleet.db'}"
        admin_token = init_database(db_url)
        assert admin_token is not None
        proc, base = _serve(workdir, db_url, workdir / "root.pem")
        admin = FleetClient(ClientConfig(base, admin_token, allow_insecure_http=True))
        fleet = SimFleet(
            SimFleetConfig(
                server_url=base,
                state_dir=workdir / "sim",
                trust_root_pem=root_pem,
                initial_release=v1,
                gateways=gateways,
                bms_per_gateway=per_gateway,
                allow_insecure_http=True,
            )
        )
        try:
            started = time.perf_counter()
            fleet.build(fleet.register(admin))
            provision_s = time.perf_counter() - started
            fleet.start()
            total = gateways * per_gateway
            while len(admin.get_all("devices")) < total:
                time.sleep(0.5)
            release = admin.upload_release(v2, "2.0.0.bmsfw")["id"]
            started = time.perf_counter()
            campaign = admin.post(
                "campaigns",
                {
                    "name": "bench",
                    "release_id": release,
                    "phases": [
                        {"name": "canary", "devices": 10, "soak_s": 0},
                        {"name": "all", "percent": 100, "soak_s": 0},
                    ],
                },
            )["id"]
            while True:
                status = admin.get(f"campaigns/{campaign}")
                if status["status"] != "running":
                    break
                time.sleep(0.25)
            wall_s = time.perf_counter() - started
            succeeded = status["states"]["succeeded"]
        finally:
            fleet.close()
            admin.close()
            proc.terminate()
            proc.wait(10)
            if proc.stderr is not None:
                proc.stderr.close()
    return {
        "devices": total,
        "provision_s": provision_s,
        "campaign_s": wall_s,
        "succeeded": succeeded,
        "status": status["status"],  # type: ignore[dict-item]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--bms-per-gateway", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=8 * 1024, help="bytes per app image")
    args = parser.parse_args()
    r = run(args.gateways, args.bms_per_gateway, args.image_size)
    print(f"{'devices':>8} {'gateways':>9} {'image B':>8} {'provision s':>12} "
          f"{'campaign wall s':>16} {'succeeded':>10} {'devices/s':>10} status")  # fmt: skip
    print(
        f"{r['devices']:>8} {args.gateways:>9} {args.image_size:>8} {r['provision_s']:>12.1f} "
        f"{r['campaign_s']:>16.1f} {r['succeeded']:>10} "
        f"{r['succeeded'] / r['campaign_s']:>10.1f} {r['status']}"
    )


if __name__ == "__main__":
    main()
