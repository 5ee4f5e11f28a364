"""``/api/v1/docs`` (Swagger UI) and ``/api/v1/openapi.json`` load without a token, in a real
headless Chromium, with nothing fetched from anywhere but the server (no CDN); every API
call still needs a credential."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import init_database
from bmsfw.fleet.testing import write_test_ca_and_server
from server_support import serve_https

from .conftest import Fleet

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_document_and_page_need_no_token_but_calls_do(fleet: Fleet) -> None:
    spec = fleet.client.get("/api/v1/openapi.json")
    assert spec.status_code == 200
    document = spec.json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    devices = document["paths"]["/api/v1/devices"]["get"]
    assert devices["security"] == [{"bearer": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    page = fleet.client.get("/api/v1/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        assert f"/api/v1/docs/assets/{asset}" in page.text
        served = fleet.client.get(f"/api/v1/docs/assets/{asset}")
        assert served.status_code == 200 and len(served.content) > 1000, asset
    refused = fleet.client.get("/api/v1/devices")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "BMSFW-E601"
    assert fleet.client.get("/api/v1/docs/assets/../openapi.json").status_code == 404


@pytest.fixture
def served(tmp_path: Path, root_pem: bytes) -> Iterator[tuple[str, str]]:
    tls = write_test_ca_and_server(tmp_path, ca_name="bmsfw docs test CA")
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    admin = init_database(db_url)
    assert admin is not None
    config = ServerConfig(db_url=db_url, trust_root_pem=root_pem, tick_interval_s=0)
    with serve_https(create_app(config), tls, "docs") as url:
        yield url, admin


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_swagger_page_renders_in_chromium_from_the_server_alone(served: Any) -> None:
    from playwright.sync_api import Route, sync_playwright

    url, admin = served
    elsewhere: list[str] = []

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:  # a CDN, a font host...: recorded and refused (CI has no internet either)
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True)
            context.route("**/*", only_the_server)
            page = context.new_page()
            page.goto(f"{url}/api/v1/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            operations = page.locator(".opblock").count()
            title = page.locator(".title").first.inner_text()
            # The page's Authorize dialog offers the bearer scheme the document declares.
            page.locator("button.authorize").first.click()
            page.wait_for_selector(".auth-container input", timeout=5_000)
            page.locator(".auth-container input").first.fill(admin)
            page.locator(".auth-btn-wrapper button.authorize").first.click()
            page.locator("button.btn-done").first.click()
            # A call from the page with the token works; the same call without one does not.
            whoami = page.evaluate(
                """async (token) => {
                    const auth = {headers: {Authorization: 'Bearer ' + token}};
                    const ok = await fetch('/api/v1/whoami', auth);
                    const no = await fetch('/api/v1/whoami');
                    return [ok.status, (await ok.json()).role, no.status];
                }""",
                admin,
            )
        finally:
            browser.close()
    assert "bmsfw fleet server" in title and "OAS 3.1" in title  # rendered from the document
    assert operations >= 30
    assert whoami == [200, "admin", 401]
    assert not elsewhere, elsewhere
    with httpx.Client(base_url=url, verify=False) as client:
        assert client.get("/api/v1/releases").status_code == 401
