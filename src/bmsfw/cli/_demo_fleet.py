"""The fleet part of ``bmsfw demo``: the operator's OTA path on the embedded defaults.

A demo CA issues the server's TLS certificate; ``bmsfw fleet serve`` runs in its
own process (uvicorn, SQLite and an artifact directory under the demo's
directory, HTTPS on 127.0.0.1); one gateway agent with three virtual BMS behind
it (:class:`~bmsfw.sim.fleet.SimFleet`, the same code as ``bmsfw sim
fleet``) polls it. The good release is uploaded (the server verifies it against
the vendor root), a phased campaign (canary of one device, then 100 %) runs to
completion, and the campaign table and the size of the server's audit trail are
printed. A safety-critical release is uploaded too, and the campaign for it is
refused (BMSFW-E606): it may only be installed wired.

The server process and the agent thread are stopped in ``finally`` blocks, so
an error or Ctrl-C leaves nothing running.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bmsfw.cli._render import Table, console
from bmsfw.errors import BmsfwError
from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.fleet.errors import FleetUnreachableError, SafetyCriticalOtaRefusedError
from bmsfw.fleet.testing import TestTlsFiles, write_test_ca_and_server
from bmsfw.fleet.tuf_repo import generate_key, new_root, public_key_of
from bmsfw.package.version import device_runs
from bmsfw.sim.fleet import SimFleet, SimFleetConfig

__all__ = ["FleetDemoConfig", "run_fleet_demo"]

HOST = "127.0.0.1"
# Canary on one device, then everyone; no soak time, so the demo does not wait an hour.
PHASES = [
    {"name": "canary", "devices": 1, "soak_s": 0, "success_threshold_pct": 100},
    {"name": "all", "percent": 100, "soak_s": 0, "success_threshold_pct": 100},
]


@dataclass(frozen=True)
class FleetDemoConfig:
    workdir: Path  # everything the fleet part writes goes below workdir / "fleet"
    trust_root_pem: bytes
    initial_release: bytes  # what the factory flashed into the gateway's BMS
    target_release: bytes  # the campaign's release
    target_version: str
    safety_release: bytes  # a safety-critical release: refused for OTA
    safety_version: str
    bms_count: int = 3
    server_start_timeout_s: float = 30.0
    campaign_timeout_s: float = 60.0
    agent_poll_interval_s: float = 0.25
    server_tick_interval_s: float = 0.2


def make_demo_tls(directory: Path) -> TestTlsFiles:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1 it issued."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_test_ca_and_server(directory, prefix="demo-", ca_name="bmsfw demo fleet CA")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextmanager
def _fleet_server(
    config: FleetDemoConfig,
    base: Path,
    db_url: str,
    admin_token: str,
    tls: TestTlsFiles,
    *,
    tuf: tuple[Path, Path],
) -> Iterator[str]:
    """``bmsfw fleet serve`` in its own process until the block ends; yields its URL."""
    trust_root = base / "vendor-root.pem"
    trust_root.write_bytes(config.trust_root_pem)
    port = _free_port()
    url = f"https://{HOST}:{port}"
    log_path = base / "fleet-server.log"
    command = [
        sys.executable,
        "-m",
        "bmsfw.cli._entry",
        "fleet",
        "serve",
        "--db",
        db_url,
        "--trust-root",
        str(trust_root),
        "--tls-cert",
        str(tls.cert),
        "--tls-key",
        str(tls.key),
        "--host",
        HOST,
        "--port",
        str(port),
        "--poll-interval-s",
        "1",
        "--tick-interval-s",
        str(config.server_tick_interval_s),
        "--tuf-root-dir",
        str(tuf[0]),
        "--tuf-online-key",
        str(tuf[1]),
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(config, process, url, admin_token, tls.ca, log_path)
        yield url
    finally:
        # SIGTERM: uvicorn finishes open requests and closes the database; kill if it hangs.
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(  # noqa: PLR0917 - private helper, called once
    config: FleetDemoConfig,
    process: subprocess.Popen[bytes],
    url: str,
    admin_token: str,
    ca: Path,
    log_path: Path,
) -> None:
    deadline = time.monotonic() + config.server_start_timeout_s
    with FleetClient(ClientConfig(url, admin_token, ca_file=ca, timeout_s=2.0)) as admin:
        while True:
            if process.poll() is not None:
                raise FleetUnreachableError(
                    f"the demo fleet server exited with status {process.returncode} during "
                    f"start-up; its log is {log_path}"
                )
            try:
                admin.whoami()
                return
            except FleetUnreachableError:
                if time.monotonic() > deadline:
                    raise FleetUnreachableError(
                        f"the demo fleet server did not answer on {url} within "
                        f"{config.server_start_timeout_s:g} s; its log is {log_path}"
                    ) from None
                time.sleep(0.1)


def _wait(
    what: str, condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BmsfwError(f"demo: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def _audit_count(admin: FleetClient) -> int:
    """Every entry of the server's audit trail (the API pages it, newest first)."""
    count = 0
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if before is not None:
            params["before_id"] = before
        page = admin.get("audit", **params)
        count += len(page)
        if len(page) < 1000:
            return count
        before = int(page[-1]["id"])


@dataclass(frozen=True)
class FleetDemoResult:
    campaign: dict[str, Any]
    devices: list[dict[str, Any]]
    safety_refusal_code: str
    audit_entries: int


def _tuf_ceremony(base: Path) -> tuple[Path, Path, bytes]:
    """The offline root ceremony, done here for the demo (docs/agent.md): three root keys,
    threshold 2, and the server's online key. Returns the root directory, the online key
    file and root.json for the agents."""
    keys = base / "tuf-keys"
    keys.mkdir(exist_ok=True)
    root_keys = [generate_key() for _ in range(3)]
    online = generate_key()
    online_file = keys / "online.pem"
    online_file.write_bytes(online)
    root = new_root(root_keys, 2, public_key_of(online), datetime.now(UTC) + timedelta(days=365))
    root_dir = base / "tuf"
    root_dir.mkdir(exist_ok=True)
    (root_dir / "1.root.json").write_bytes(root)
    return root_dir, online_file, root


def run_fleet_demo(config: FleetDemoConfig) -> FleetDemoResult:
    """Run the fleet part and print it; everything it started is stopped on return."""
    base = config.workdir / "fleet"
    base.mkdir(parents=True, exist_ok=True)
    tls = make_demo_tls(base / "tls")
    db_url = f"sqlite:///{base / 'fleet.db'}"
    admin_token = init_database(db_url, admin_name="demo-admin")
    if admin_token is None:
        raise BmsfwError(
            f"demo: {base / 'fleet.db'} already has an admin token; use an empty --output directory"
        )
    tuf_dir, online_key, tuf_root = _tuf_ceremony(base)
    with _fleet_server(config, base, db_url, admin_token, tls, tuf=(tuf_dir, online_key)) as url:
        console.print(
            f"fleet server: bmsfw fleet serve on {url} (HTTPS, certificate from a demo CA), "
            f"SQLite {base / 'fleet.db'}; TUF metadata signed online, root 2-of-3 "
            f"({tuf_dir / '1.root.json'})",
            highlight=False,
        )
        sim = SimFleet(
            SimFleetConfig(
                server_url=url,
                state_dir=base / "gateway",
                trust_root_pem=config.trust_root_pem,
                initial_release=config.initial_release,
                gateways=1,
                bms_per_gateway=config.bms_count,
                ca_file=tls.ca,
                max_poll_interval_s=config.agent_poll_interval_s,
                name_prefix="demo",
                tuf_root=tuf_root,
            )
        )
        with (
            sim,
            FleetClient(ClientConfig(url, admin_token, ca_file=tls.ca)) as admin,
        ):
            return _operate(config, admin, sim)


def _operate(config: FleetDemoConfig, admin: FleetClient, sim: SimFleet) -> FleetDemoResult:
    sim.build(sim.register(admin))
    sim.start()
    gateway = sim.gateways[0]
    console.print(
        f"gateway agent {gateway.name} polls every {config.agent_poll_interval_s:g} s with "
        f"{config.bms_count} virtual BMS behind it: {', '.join(gateway.serials)}",
        highlight=False,
    )
    _wait(
        f"{config.bms_count} devices in the server's inventory",
        lambda: len(admin.get_all("devices")) == config.bms_count,
        timeout_s=config.campaign_timeout_s,
    )

    release = admin.upload_release(config.target_release, f"bms-16s-{config.target_version}.bmsfw")
    console.print(
        f"uploaded release {release['version']} (id {release['id']}): signature and chain "
        f"verified against the vendor root on upload, safety class {release['safety_class']}, "
        f"OTA allowed: {'yes' if release['ota_allowed'] else 'no'}",
        highlight=False,
    )
    campaign_id = int(
        admin.post(
            "campaigns",
            {
                "name": f"to {config.target_version}",
                "release_id": release["id"],
                "phases": PHASES,
                "error_threshold_pct": 10,
            },
        )["id"]
    )
    console.print(f"campaign {campaign_id}: canary 1 device, then 100 %", highlight=False)
    campaign = _follow(config, admin, campaign_id)
    devices = admin.get(f"campaigns/{campaign_id}/devices")

    # The inventory shows the new version after each BMS's next check-in.
    def inventory() -> dict[str, str] | None:
        versions = {d["serial"]: str(d["firmware_version"]) for d in admin.get_all("devices")}
        done = all(device_runs(config.target_version, v) for v in versions.values())
        return versions if done else None

    versions = _wait("the inventory to show the new version", inventory, timeout_s=10.0)
    _print_campaign_table(campaign, devices, versions, sim)

    refusal = _safety_refusal(config, admin)
    entries = _audit_count(admin)
    console.print(
        f"server audit trail: {entries} entries (uploads, campaign, every device state "
        "change, refusals)",
        highlight=False,
    )
    sim.stop()
    errors = {gw.name: gw.errors for gw in sim.gateways if gw.errors}
    if errors:
        raise BmsfwError(f"demo: the gateway agent stopped with errors: {errors}")
    return FleetDemoResult(campaign, devices, refusal, entries)


def _follow(config: FleetDemoConfig, admin: FleetClient, campaign_id: int) -> dict[str, Any]:
    """Poll the campaign until it completes; print each change of phase and state counts."""
    started = time.monotonic()
    last = ""
    deadline = started + config.campaign_timeout_s
    while True:
        campaign: dict[str, Any] = admin.get(f"campaigns/{campaign_id}")
        counts = ", ".join(f"{n} {state}" for state, n in campaign["states"].items() if n)
        line = f"phase {campaign['phase_name']}: {counts}"
        if line != last:
            console.print(
                f"  {time.monotonic() - started:5.1f} s  {campaign['status']:<9} {line}",
                highlight=False,
            )
            last = line
        if campaign["status"] == "completed":
            return campaign
        if campaign["status"] not in ("running", "completed"):
            raise BmsfwError(
                f"demo: campaign {campaign_id} is {campaign['status']} "
                f"({campaign['pause_reason'] or 'no reason given'})"
            )
        if time.monotonic() > deadline:
            raise BmsfwError(
                f"demo: campaign {campaign_id} did not complete in "
                f"{config.campaign_timeout_s:g} s (last: {line})"
            )
        time.sleep(0.1)


def _print_campaign_table(
    campaign: dict[str, Any],
    devices: list[dict[str, Any]],
    versions: dict[str, str],
    sim: SimFleet,
) -> None:
    table = Table(title=f"campaign {campaign['id']} {campaign['name']!r}: {campaign['status']}")
    for column in ("device", "phase", "state", "version", "image", "error code"):
        table.add_column(column, no_wrap=True)
    for record in devices:
        serial = record["device_serial"]
        version = versions.get(serial, "?")
        # The server's inventory gives the version; the BMS itself says whether its image
        # is confirmed (and which version it runs, should the two ever differ).
        status = sim.device(serial).boot_status()
        image: str = status.image_state
        if status.running_version != version:
            image = f"{status.running_version} {image}"
        table.add_row(
            serial,
            str(campaign["phases"][record["phase"]]["name"]),
            record["state"],
            version,
            image,
            record["error_code"] or "-",
        )
    console.print(table)
    succeeded = campaign["states"]["succeeded"]
    console.print(
        f"{succeeded} of {campaign['targets']} devices succeeded; campaign {campaign['status']}",
        highlight=False,
    )


def _safety_refusal(config: FleetDemoConfig, admin: FleetClient) -> str:
    """Upload a safety-critical release and ask for a campaign: the server refuses it."""
    release = admin.upload_release(
        config.safety_release, f"bms-16s-{config.safety_version}-safety.bmsfw"
    )
    try:
        admin.post(
            "campaigns",
            {"name": "safety over the air", "release_id": release["id"], "phases": PHASES},
        )
    except SafetyCriticalOtaRefusedError as exc:
        console.print(
            f"safety-critical release {release['version']}: stored for wired installs "
            f"(OTA allowed: {'yes' if release['ota_allowed'] else 'no'}), campaign refused "
            f"{exc.code}",
            highlight=False,
        )
        return exc.code
    raise BmsfwError(
        f"demo: the server accepted an OTA campaign for safety-critical release "
        f"{release['version']}"
    )
