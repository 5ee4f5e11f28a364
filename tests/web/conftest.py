"""Dashboard fixtures: the fleet server under a real uvicorn (HTTPS, in a thread, a fake
clock the tests move), a seeded fleet, and Debian's headless Chromium via Playwright.

Playwright's own browser download is never used: the browser is /usr/bin/chromium
(``.ci/run`` installs Debian's ``chromium`` when it is missing).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import create_token, init_database
from bmsfw.fleet.clock import FakeClock
from bmsfw.fleet.testing import write_test_ca_and_server
from bmsfw.package import create_pki
from fleet.conftest import START, bms, make_release
from server_support import serve_https

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Hostile text a gateway may report as a serial: must be shown as text, never run.
MARKUP_SERIAL = '<img src=x onerror="window.__pwned=1">'
FAILED_CODE = "BMSFW-E401"  # state of charge outside the update window


@dataclass
class Dashboard:
    """A running fleet server with a seeded fleet and tokens for every role."""

    url: str
    clock: FakeClock
    tokens: dict[str, str]
    campaign_id: int
    failed_serial: str
    api: httpx.Client
    extra: dict[str, Any] = field(default_factory=dict)

    def call(self, method: str, path: str, role: str = "admin", **kw: Any) -> Any:
        response = self.api.request(
            method, f"/api/v1{path}", headers={"Authorization": f"Bearer {self.tokens[role]}"}, **kw
        )
        assert response.status_code < 300, (response.status_code, response.text)
        return response.json()

    def sign_in(self, page: Page, role: str) -> None:
        page.goto(f"{self.url}/ui/login")
        page.fill("input[name=token]", self.tokens[role])
        page.click("button[type=submit]")


def _seed(d: Dashboard, pki: Any) -> None:
    """Two sites, 42 devices (one flagged, one with a markup serial), a release and a
    running campaign with three successes and one failure in its canary phase."""
    gateways = {}
    for name, site in (("gw-north", "north"), ("gw-south", "south")):
        gateways[name] = d.call("POST", "/gateways", json={"name": name, "site": site})["token"]
    for name, token in gateways.items():
        devices = [
            bms(
                f"BMS-{name[3:].upper()}-{i:03d}",
                "1.0.0" if i % 4 else "0.9.2",
                model="BMS-48V" if i % 5 else "BMS-24V",
                soc_pct=20.0 + 3 * i,
                temperature_c=12.0 + i,
            )
            for i in range(20)
        ]
        if name == "gw-north":
            devices.append(bms(MARKUP_SERIAL))
            devices.append(bms("BMS-NORTH-FAULT"))
        response = d.api.post(
            "/api/v1/agent/check-in",
            headers={"Authorization": f"Bearer {token}"},
            json={"devices": devices},
        )
        assert response.status_code == 200, response.text
        d.extra[name] = devices
    d.extra["gateways"] = gateways
    # Three hours of north check-ins every 10 minutes (the packs discharge and charge),
    # each sampled into the telemetry history as the server's tick does.
    north = {"Authorization": f"Bearer {gateways['gw-north']}"}
    for step in range(18):
        d.clock.advance(600)
        moved = [
            {
                **b,
                "soc_pct": round(50 + 30 * math.sin(step / 4 + i), 1),
                "temperature_c": round(22 + 6 * math.cos(step / 5 + i), 1),
            }
            for i, b in enumerate(d.extra["gw-north"])
        ]
        response = d.api.post("/api/v1/agent/check-in", headers=north, json={"devices": moved})
        assert response.status_code == 200, response.text
        d.extra["telemetry"].sample(d.clock.now())
    release = d.api.post(
        "/api/v1/releases",
        headers={"Authorization": f"Bearer {d.tokens['release_manager']}"},
        content=make_release(pki, "1.1.0"),
        params={"filename": "bms-1.1.0.bmsfw"},
    ).json()
    campaign = d.call(
        "POST",
        "/campaigns",
        "operator",
        json={
            "name": "North 1.1.0",
            "release_id": release["id"],
            "selector": {"sites": ["north"], "models": ["BMS-48V"], "version_range": "<1.1.0"},
            "phases": [
                {"name": "canary", "devices": 5, "soak_s": 0, "success_threshold_pct": 50},
                {"name": "all", "percent": 100, "soak_s": 0, "success_threshold_pct": 50},
            ],
            "error_threshold_pct": 50,
        },
    )
    d.campaign_id = campaign["id"]
    # The next check-in carries the canary offers; the agent reports back.
    token = gateways["gw-north"]
    auth = {"Authorization": f"Bearer {token}"}
    # Ten minutes later only the north gateway checks in again (the south one is offline)
    # ... and BMS-NORTH-FAULT now runs a version no campaign installed: flagged.
    again = [
        {**b, "firmware_version": "1.0.7"} if b["serial"] == "BMS-NORTH-FAULT" else b
        for b in d.extra["gw-north"]
    ]
    d.clock.advance(600)
    response = d.api.post("/api/v1/agent/check-in", headers=auth, json={"devices": again})
    assert response.status_code == 200, response.text
    offered = [
        row["device_serial"]
        for row in d.call("GET", f"/campaigns/{d.campaign_id}/devices")
        if row["state"] == "offered"
    ]
    assert len(offered) == 5, offered

    def report(serial: str, state: str, **kw: Any) -> None:
        body = {"device_serial": serial, "campaign_id": d.campaign_id, "state": state, **kw}
        response = d.api.post("/api/v1/agent/reports", headers=auth, json=body)
        assert response.status_code == 200, response.text

    for serial in offered[:3]:
        for state in ("downloading", "downloaded", "installing"):
            report(serial, state)
        report(serial, "succeeded", firmware_version="1.1.0")
    d.failed_serial = offered[3]
    report(offered[3], "downloading")
    report(offered[3], "failed", error_code=FAILED_CODE, detail="SoC 12 % < 30 %")
    report(offered[4], "downloading")
    for reason, ov_mv in (("before 1.1.0", 3650), ("after service visit", 3600)):
        config = {"cells": 16, "ov_mv": ov_mv, "uv_mv": 2800, "balancing": True}
        d.call(
            "POST",
            f"/devices/{d.failed_serial}/backups",
            "operator",
            json={"reason": reason, "config": config},
        )


@contextlib.contextmanager
def serve_dashboard(
    tmp: Path, people: Mapping[str, tuple[str, str]], **config: Any
) -> Iterator[Dashboard]:
    """A fleet server under uvicorn (HTTPS, fake clock) with an empty fleet: the first
    admin's token as ``tokens["admin"]`` and one per ``people`` entry (key -> credential
    name, role); ``config`` are further ServerConfig fields. ``extra["pki"]`` signs
    releases its trust root accepts."""
    pki = create_pki("ed25519", now=START - dt.timedelta(days=1))
    root_pem = pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    tls = write_test_ca_and_server(tmp, ca_name="bmsfw web test CA")
    db_url = f"sqlite:///{tmp / 'fleet.db'}"
    clock = FakeClock(START)
    admin = init_database(db_url, clock=clock)
    assert admin is not None
    tokens = {"admin": admin}
    for key, (name, role) in people.items():
        tokens[key] = str(create_token(db_url, role=role, name=name, clock=clock)["token"])
    server = ServerConfig(
        db_url=db_url,
        trust_root_pem=root_pem,
        tick_interval_s=0,
        check_ins_per_s=0,
        auth_failures_per_min=0,
        migrate=False,
        **config,
    )
    app = create_app(server, clock=clock)
    with (
        serve_https(app, tls, tmp.name) as url,
        httpx.Client(base_url=url, verify=str(tls.ca), timeout=30) as api,
    ):
        d = Dashboard(url, clock, tokens, 0, "", api)
        d.extra["pki"] = pki
        d.extra["telemetry"] = app.state.telemetry
        yield d


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    people = {role: (f"{role}-1", role) for role in ("viewer", "operator", "release_manager")}
    with serve_dashboard(tmp_path_factory.mktemp("web"), people) as d:
        _seed(d, d.extra["pki"])
        yield d


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    # The test CA is not in Chromium's store; everything else is as in production.
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
