"""The dashboard in a real headless Chromium against a real uvicorn server (HTTPS)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from playwright.sync_api import BrowserContext, Page, expect

from bmsfw.fleet.web.catalogue import explain
from bmsfw.protocol.session import DeviceIdentity
from bmsfw.update.preflight import CheckResult
from fleet.conftest import bms, make_release

from .conftest import FAILED_CODE, MARKUP_SERIAL, SHOTS, Dashboard

SHOTS_TMP = Path(tempfile.gettempdir()) / "bmsfw-dashboard-shots"


def _session_cookie(context: BrowserContext) -> dict[str, object]:
    cookies = [c for c in context.cookies() if c["name"] == "__Host-bmsfw_session"]
    assert len(cookies) == 1, cookies
    return dict(cookies[0])


def test_operator_signs_in_and_sees_overview_and_a_failed_device(
    dashboard: Dashboard, page: Page, context: BrowserContext
) -> None:
    dashboard.sign_in(page, "operator")
    expect(page.get_by_test_id("who")).to_have_text("operator-1 (operator)")
    expect(page.get_by_test_id("total")).to_have_text("42")
    expect(page.locator("main")).to_contain_text("North 1.1.0")
    expect(page.locator("main")).to_contain_text("BMS-NORTH-FAULT")  # flagged
    cookie = _session_cookie(context)
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    page.goto(f"{dashboard.url}/ui/devices/{dashboard.failed_serial}")
    expect(page.get_by_test_id("serial")).to_have_text(dashboard.failed_serial)
    explanation = explain(FAILED_CODE)
    assert explanation is not None
    history = page.locator("main table").first
    expect(history).to_contain_text(FAILED_CODE)
    expect(history).to_contain_text("SoC 12 % < 30 %")
    expect(history).to_contain_text(explanation.diagnosis)
    expect(history).to_contain_text(explanation.remedy)
    # Three hours of samples drawn as SVG by the server (CSP strict: no script needed).
    soc = page.get_by_test_id("chart-soc")
    expect(soc).to_contain_text("18 sample(s)")
    line = soc.locator("polyline.series")
    expect(line).to_have_count(1)
    box = line.bounding_box()
    assert box is not None and box["width"] > 50 and box["height"] > 20, box


def test_devices_are_filtered_and_paged(dashboard: Dashboard, page: Page) -> None:
    dashboard.sign_in(page, "viewer")
    page.goto(f"{dashboard.url}/ui/devices?size=10")
    expect(page.get_by_test_id("count")).to_have_text("42 device(s); page 1 of 5")
    expect(page.locator("main tbody tr")).to_have_count(10)
    page.click("a[rel=next]")
    expect(page.get_by_test_id("count")).to_contain_text("page 2 of 5")
    # A page size above the maximum is cut to it; filters combine.
    page.goto(f"{dashboard.url}/ui/devices?size=100000&site=south&model=BMS-24V")
    expect(page.get_by_test_id("count")).to_have_text("4 device(s); page 1 of 1")
    page.goto(f"{dashboard.url}/ui/devices?flagged=1")
    expect(page.get_by_test_id("count")).to_have_text("1 device(s); page 1 of 1")
    page.goto(f"{dashboard.url}/ui/devices?online=no")  # the south gateway went quiet
    expect(page.get_by_test_id("count")).to_have_text("20 device(s); page 1 of 1")


def test_screenshots_of_the_main_pages(dashboard: Dashboard, page: Page) -> None:
    """The pictures in docs/fleet.md (written there with BMSFW_WRITE_SCREENSHOTS=1)."""
    out = SHOTS if os.environ.get("BMSFW_WRITE_SCREENSHOTS") == "1" else SHOTS_TMP
    out.mkdir(parents=True, exist_ok=True)
    dashboard.sign_in(page, "operator")
    pages = {
        "dashboard-overview": "/ui/",
        "dashboard-devices": "/ui/devices?size=12",
        "dashboard-device": f"/ui/devices/{dashboard.failed_serial}",
        "dashboard-campaign": f"/ui/campaigns/{dashboard.campaign_id}?state=failed",
        "dashboard-new-campaign": "/ui/campaigns/new",
    }
    for name, path in pages.items():
        page.goto(dashboard.url + path)
        expect(page.locator("h1")).to_be_visible()
        png = page.screenshot(full_page=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, (name, len(png))
        (out / f"{name}.png").write_bytes(png)
    # What only an admin sees: the audit log with its hash chain verified.
    page.context.clear_cookies()
    dashboard.sign_in(page, "admin")
    for name, path in {
        "dashboard-audit": "/ui/audit",
        "dashboard-release": "/ui/releases/1",
    }.items():
        page.goto(dashboard.url + path)
        expect(page.locator("h1")).to_be_visible()
        png = page.screenshot(full_page=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, (name, len(png))
        (out / f"{name}.png").write_bytes(png)


def test_gateway_credential_cannot_sign_in(
    dashboard: Dashboard, page: Page, context: BrowserContext
) -> None:
    page.goto(f"{dashboard.url}/ui/login")
    page.fill("input[name=token]", dashboard.extra["gateways"]["gw-north"])
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("button[type=submit]")
    assert answer.value.status == 403
    expect(page.get_by_test_id("error")).to_contain_text("BMSFW-E603")
    assert not [c for c in context.cookies() if c["name"] == "__Host-bmsfw_session"]
    page.goto(f"{dashboard.url}/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login"))


def test_unknown_token_refused(dashboard: Dashboard, page: Page) -> None:
    page.goto(f"{dashboard.url}/ui/login")
    page.fill("input[name=token]", "bmsfw_op_not-a-real-token")
    page.click("button[type=submit]")
    expect(page.get_by_test_id("error")).to_contain_text("BMSFW-E602")


def _status(dashboard: Dashboard) -> str:
    return str(dashboard.call("GET", f"/campaigns/{dashboard.campaign_id}")["status"])


def test_pause_and_resume_from_the_campaign_page(dashboard: Dashboard, page: Page) -> None:
    dashboard.sign_in(page, "operator")
    page.goto(f"{dashboard.url}/ui/campaigns/{dashboard.campaign_id}")
    status = page.get_by_test_id("campaign-status")
    expect(status).to_have_text("running")
    page.fill("form[action$='/pause'] input[name=reason]", "battery <b>check</b>")
    page.get_by_test_id("pause").click()
    expect(status).to_have_text("paused")
    assert _status(dashboard) == "paused"
    expect(page.locator("main")).to_contain_text("(battery <b>check</b>)")  # as text
    page.get_by_test_id("resume").click()
    expect(status).to_have_text("running")
    assert _status(dashboard) == "running"
    # The failed canary device shows its code, diagnosis and remedy.
    explanation = explain(FAILED_CODE)
    assert explanation is not None
    expect(page.locator("#live")).to_contain_text(explanation.remedy)


def test_campaign_page_updates_by_itself(dashboard: Dashboard, page: Page) -> None:
    dashboard.sign_in(page, "viewer")
    page.goto(f"{dashboard.url}/ui/campaigns/{dashboard.campaign_id}")
    status = page.get_by_test_id("campaign-status")
    expect(status).to_have_text("running")
    expect(page.get_by_test_id("pause")).to_have_count(0)  # a viewer gets no forms
    try:
        dashboard.call("POST", f"/campaigns/{dashboard.campaign_id}/pause", json={"reason": "x"})
        expect(status).to_have_text("paused")  # no reload: the live region polled
    finally:
        dashboard.call("POST", f"/campaigns/{dashboard.campaign_id}/resume")
    expect(status).to_have_text("running")


def test_pushed_updates_arrive_over_the_event_stream(dashboard: Dashboard, page: Page) -> None:
    """With the event stream open the page polls only every 30 s: a change shown within
    a few seconds was pushed."""
    dashboard.sign_in(page, "viewer")
    page.goto(f"{dashboard.url}/ui/campaigns/{dashboard.campaign_id}")
    expect(page.locator("html")).to_have_attribute("data-live", "sse")
    page.wait_for_timeout(2500)  # the one poll scheduled before the stream opened is over
    status = page.get_by_test_id("campaign-status")
    expect(status).to_have_text("running")
    try:
        dashboard.call("POST", f"/campaigns/{dashboard.campaign_id}/pause", json={"reason": "x"})
        expect(status).to_have_text("paused", timeout=6000)
    finally:
        dashboard.call("POST", f"/campaigns/{dashboard.campaign_id}/resume")
    expect(status).to_have_text("running", timeout=6000)


def _read_events(lines: Iterator[str], want: Callable[[str, dict[str, Any]], bool]) -> str:
    """Reads SSE lines until an event ``want`` accepts; returns its id."""
    kind, ident = "", ""
    for line in lines:
        if line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and want(kind, json.loads(line[6:])):
            return ident
    raise AssertionError("the stream ended")


def test_the_event_stream_for_integrators(dashboard: Dashboard) -> None:
    api = dashboard.api
    assert api.get("/api/v1/events").status_code == 401
    gateway = {"Authorization": f"Bearer {dashboard.extra['gateways']['gw-north']}"}
    assert api.get("/api/v1/events", headers=gateway).status_code == 403
    viewer = {"Authorization": f"Bearer {dashboard.tokens['viewer']}"}
    wrong = api.get("/api/v1/events", headers=viewer)  # Accept: */* (one answer expected)
    assert wrong.status_code == 406 and wrong.json()["error"]["code"] == "BMSFW-E651"
    viewer["Accept"] = "text/event-stream"
    number = dashboard.campaign_id
    with api.stream("GET", "/api/v1/events", headers=viewer) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        try:
            dashboard.call("POST", f"/campaigns/{number}/pause", json={"reason": "<b>x</b>"})
            after = _read_events(
                lines,
                lambda k, d: (
                    k == "campaign" and (d["campaign_id"], d["status"]) == (number, "paused")
                ),
            )
        finally:
            dashboard.call("POST", f"/campaigns/{number}/resume")
        _read_events(lines, lambda k, d: k == "campaign" and d["status"] == "running")
    # Reconnecting with Last-Event-ID continues after that event: the resume comes again.
    with api.stream("GET", "/api/v1/events", headers={**viewer, "Last-Event-ID": after}) as again:
        _read_events(again.iter_lines(), lambda k, d: k == "campaign" and d["status"] == "running")


def test_form_without_or_with_a_wrong_csrf_token_is_refused(
    dashboard: Dashboard, page: Page
) -> None:
    dashboard.sign_in(page, "operator")
    url = f"{dashboard.url}/ui/campaigns/{dashboard.campaign_id}"
    for tamper in (
        "f => f.querySelector('input[name=csrf]').remove()",
        "f => { f.querySelector('input[name=csrf]').value = 'forged'; }",
    ):
        page.goto(url)
        page.eval_on_selector("form[action$='/pause']", tamper)
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_test_id("pause").click()
        assert answer.value.status == 403
        expect(page.get_by_test_id("error")).to_contain_text("BMSFW-E640")
        assert _status(dashboard) == "running"  # nothing was done


def test_expired_session_goes_back_to_sign_in(dashboard: Dashboard, page: Page) -> None:
    dashboard.sign_in(page, "viewer")
    page.goto(f"{dashboard.url}/ui/devices")
    expect(page.get_by_test_id("who")).to_contain_text("viewer")
    dashboard.clock.advance(31 * 60)  # idle longer than the 30 min the session allows
    page.goto(f"{dashboard.url}/ui/devices")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fdevices"))
    # Signing in again returns to the page asked for.
    page.fill("input[name=token]", dashboard.tokens["viewer"])
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/ui/devices$"))


def test_sign_out_ends_the_session(
    dashboard: Dashboard, page: Page, context: BrowserContext
) -> None:
    dashboard.sign_in(page, "admin")
    old = _session_cookie(context)
    page.click("text=Sign out")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    # The old session id is dead on the server, not only forgotten by the browser.
    context.add_cookies([{**old, "name": "__Host-bmsfw_session"}])  # type: ignore[list-item]
    page.goto(f"{dashboard.url}/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login"))


def test_markup_in_a_serial_is_shown_as_text(dashboard: Dashboard, page: Page) -> None:
    dashboard.sign_in(page, "viewer")
    page.goto(f"{dashboard.url}/ui/devices?site=north&size=100")
    link = page.get_by_role("link", name=MARKUP_SERIAL)
    expect(link).to_have_count(1)
    expect(page.locator("main img")).to_have_count(0)
    link.click()
    expect(page.get_by_test_id("serial")).to_have_text(MARKUP_SERIAL)
    expect(page.locator("main img")).to_have_count(0)
    assert page.evaluate("window.__pwned") is None


def test_create_a_campaign_and_watch_it_reach_100_percent(dashboard: Dashboard, page: Page) -> None:
    dashboard.sign_in(page, "operator")
    page.goto(f"{dashboard.url}/ui/campaigns")
    page.get_by_test_id("new-campaign").click()
    page.fill("input[name=name]", "South 1.1.0")
    page.fill("input[name=sites]", "south")
    page.fill("input[name=models]", "BMS-48V")
    # The live preview follows the selector (the south gateway went quiet: all offline).
    expect(page.get_by_test_id("preview")).to_have_text(
        "This targets 16 device(s) in 1 site(s) (south 16); 16 are offline."
    )
    page.fill("input[name=canary]", "2")
    page.fill("input[name=percents]", "100")
    page.fill("input[name=soak_s]", "0")
    page.get_by_test_id("create").click()
    expect(page.locator("h1")).to_contain_text("South 1.1.0")
    expect(page.get_by_test_id("campaign-status")).to_have_text("running")
    expect(page.get_by_test_id("campaign-percent")).to_have_text("0 %")
    campaign_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    # The south gateway's agent checks in and installs what it is offered, phase by
    # phase; the open page follows by itself (no reload).
    page.evaluate("window.__same_page = true")  # gone if the page were reloaded
    token = dashboard.extra["gateways"]["gw-south"]
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(10):
        response = dashboard.api.post(
            "/api/v1/agent/check-in", headers=auth, json={"devices": dashboard.extra["gw-south"]}
        )
        offers = response.json()["offers"]
        if not offers:
            break
        for offer in offers:
            serial = offer["device_serial"]
            for state in ("downloading", "downloaded", "installing", "succeeded"):
                body = {"device_serial": serial, "campaign_id": campaign_id, "state": state}
                if state == "succeeded":
                    body["firmware_version"] = "1.1.0"
                answer = dashboard.api.post("/api/v1/agent/reports", headers=auth, json=body)
                assert answer.status_code == 200, answer.text
    expect(page.get_by_test_id("campaign-percent")).to_have_text("100 %", timeout=15_000)
    expect(page.get_by_test_id("campaign-status")).to_have_text("completed")
    assert page.evaluate("window.__same_page") is True  # never reloaded


def test_a_failing_release_pauses_at_the_threshold_and_shows_why(
    dashboard: Dashboard, page: Page
) -> None:
    # A release for the BMS-24V packs of the south site (4 of them), 25 % error threshold.
    release = dashboard.api.post(
        "/api/v1/releases",
        headers={"Authorization": f"Bearer {dashboard.tokens['release_manager']}"},
        content=make_release(dashboard.extra["pki"], "2.0.0", model="BMS-24V"),
        params={"filename": "bms24-2.0.0.bmsfw"},
    ).json()
    dashboard.sign_in(page, "operator")
    page.goto(f"{dashboard.url}/ui/campaigns/new")
    page.fill("input[name=name]", "BMS-24V 2.0.0")
    page.select_option("select[name=release_id]", str(release["id"]))
    page.fill("input[name=sites]", "south")
    page.fill("input[name=models]", "BMS-24V")
    page.fill("input[name=canary]", "2")
    page.fill("input[name=percents]", "100")
    page.fill("input[name=error_threshold_pct]", "25")
    page.get_by_test_id("create").click()
    expect(page.get_by_test_id("campaign-status")).to_have_text("running")
    campaign_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    auth = {"Authorization": f"Bearer {dashboard.extra['gateways']['gw-south']}"}
    offers = dashboard.api.post(
        "/api/v1/agent/check-in", headers=auth, json={"devices": dashboard.extra["gw-south"]}
    ).json()["offers"]
    failing = offers[0]["device_serial"]
    for state, code in (("downloading", ""), ("failed", "BMSFW-E402")):
        body = {"device_serial": failing, "campaign_id": campaign_id, "state": state}
        answer = dashboard.api.post(
            "/api/v1/agent/reports",
            headers=auth,
            json={**body, "error_code": code, "detail": "cell 7 at 52 °C" if code else ""},
        )
        assert answer.status_code == 200, answer.text
    # The server paused the campaign by itself; the open page shows it and why.
    expect(page.get_by_test_id("campaign-status")).to_have_text("paused", timeout=15_000)
    live = page.locator("#live")
    expect(live).to_contain_text(failing)
    expect(live).to_contain_text("BMSFW-E402")
    explanation = explain("BMSFW-E402")
    assert explanation is not None
    expect(live).to_contain_text(explanation.remedy)
    expect(page.get_by_test_id("resume")).to_be_visible()


def test_a_release_manager_uploads_a_release_in_the_browser(
    dashboard: Dashboard, page: Page, tmp_path: Path
) -> None:
    file = tmp_path / "bms-3.0.0.bmsfw"
    file.write_bytes(make_release(dashboard.extra["pki"], "3.0.0", model="BMS-12V"))
    dashboard.sign_in(page, "release_manager")
    page.goto(f"{dashboard.url}/ui/releases")
    page.get_by_test_id("release-file").set_input_files(str(file))
    page.get_by_test_id("upload").click()
    expect(page.get_by_test_id("upload-result")).to_have_text("Release 3.0.0 verified and stored")
    expect(page.get_by_test_id("ota")).to_have_text("allowed")
    rows = page.get_by_test_id("chain").locator("tbody tr")
    expect(rows).to_have_count(3)  # signer, intermediate CA, vendor root
    root = dashboard.extra["pki"].root_certificate.subject.rfc4514_string()
    expect(rows.last.locator("td").first).to_have_text(root)
    expect(page.get_by_test_id("verified")).to_contain_text("BMS-12V, revisions A, B")
    (stored,) = [r for r in dashboard.call("GET", "/releases") if r["version"] == "3.0.0"]
    assert stored["uploaded_by"].endswith("release_manager-1")


def test_every_page_in_chromium_keeps_hostile_text_inert_under_the_csp(
    dashboard: Dashboard, page: Page
) -> None:
    """An admin walks every page while a gateway has filed a backup and an evidence bundle
    full of markup for the device whose serial is markup: nothing runs, the
    Content-Security-Policy is never violated, no script error."""
    from bmsfw.evidence.bundle import EvidenceInputs, build_bundle
    from bmsfw.fleet.protocol import UpdateSummary
    from bmsfw.update.report import ErrorRecord, StepRecord, UpdateReport

    hostile = '<img src=x onerror="window.__pwned=2"><script>window.__pwned=3</script>'
    gateway = {"Authorization": f"Bearer {dashboard.extra['gateways']['gw-north']}"}
    for config in ({"note": hostile, "ov_mv": 3650}, {"note": hostile, "ov_mv": 3600}):
        filed = dashboard.api.post(
            "/api/v1/agent/backups",
            headers=gateway,
            json={"device_serial": MARKUP_SERIAL, "reason": hostile[:100], "config": config},
        )
        assert filed.status_code in (200, 201), filed.text
    report = UpdateReport(
        node=MARKUP_SERIAL,
        outcome="failed",
        device_before=DeviceIdentity(
            "vendor", "BMS-48V", "A", MARKUP_SERIAL, "1.0", "1.0.0", 1, "A"
        ),
        steps=(StepRecord("preflight", False, 1.0, 0.5, hostile),),
        preflight=(CheckResult(hostile, hostile, "20..80 %", passed=False, safety=True),),
        failed_step="preflight",
        error=ErrorRecord("BMSFW-E401", "SocOutOfRangeError", hostile, "", ""),
    )
    bundle = build_bundle(
        EvidenceInputs(report, created_at=2.0, bmsfw_version="t", notice_before=hostile)
    )
    evidence = dashboard.api.post(
        "/api/v1/agent/evidence",
        headers={**gateway, "Content-Type": "application/zip"},
        content=bundle,
    )
    assert evidence.status_code in (200, 201), evidence.text
    # The failed device's agent sends the same report with its (repeated) result: the
    # device page shows it, steps and preflight and error, with no bundle behind it.
    repeated = dashboard.api.post(
        "/api/v1/agent/reports",
        headers=gateway,
        json={
            "device_serial": dashboard.failed_serial,
            "campaign_id": dashboard.campaign_id,
            "state": "failed",
            "error_code": "BMSFW-E401",
            "detail": hostile,
            "update": UpdateSummary.from_report_json(report.to_dict()).model_dump(mode="json"),
        },
    )
    assert repeated.status_code == 200, repeated.text
    backups = [
        b["id"] for b in dashboard.call("GET", f"/devices/{quote(MARKUP_SERIAL, safe='')}/backups")
    ]
    problems: list[str] = []
    # Failed loads are judged by their response below (the browser's own /favicon.ico
    # request is a 404 that is not ours); every other console error is a problem.
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "response",
        lambda r: (
            problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    dashboard.sign_in(page, "admin")
    serial = quote(MARKUP_SERIAL, safe="")
    paths = [
        "/ui/",
        "/ui/devices?site=north&size=100",
        f"/ui/devices/{serial}?hours=72",
        f"/ui/devices/{serial}/backups/diff?a={backups[0]}&b={backups[-1]}",
        f"/ui/evidence/{evidence.json()['id']}",
        f"/ui/devices/{quote(dashboard.failed_serial, safe='')}",
        "/ui/flags?all=1",
        "/ui/campaigns",
        f"/ui/campaigns/{dashboard.campaign_id}",
        "/ui/campaigns/new",
        "/ui/releases",
        "/ui/releases/1",
        "/ui/audit",
        "/ui/access",
    ]
    for path in paths:
        response = page.goto(dashboard.url + path)
        assert response is not None and response.status == 200, path
        expect(page.locator("h1")).to_be_visible()
        assert page.locator("main img, main script").count() == 0, path
        assert page.evaluate("window.__pwned") is None, path
    # The report the agent sent is there, its markup as text.
    page.goto(f"{dashboard.url}/ui/devices/{quote(dashboard.failed_serial, safe='')}")
    sent = page.get_by_test_id("update-report").first
    expect(sent.get_by_test_id("steps")).to_contain_text(hostile)
    expect(sent.get_by_test_id("preflight")).to_contain_text("20..80 %")
    expect(sent.get_by_test_id("error")).to_contain_text("BMSFW-E401")
    assert problems == [], problems


def test_a_pack_joining_a_dynamic_campaign_appears_on_its_page_by_itself(
    dashboard: Dashboard, page: Page
) -> None:
    """A dynamic campaign for a site with no packs yet, made with the form's Dynamic box:
    the first pack installed there joins, and the open campaign page shows it over the
    event stream (the page polls only every 30 s while the stream is open)."""
    east = dashboard.call("POST", "/gateways", json={"name": "gw-east", "site": "east"})
    release = dashboard.api.post(
        "/api/v1/releases",
        headers={"Authorization": f"Bearer {dashboard.tokens['release_manager']}"},
        content=make_release(dashboard.extra["pki"], "1.4.2"),
        params={"filename": "bms-1.4.2.bmsfw"},
    ).json()
    dashboard.sign_in(page, "operator")
    page.goto(f"{dashboard.url}/ui/campaigns/new")
    page.fill("input[name=name]", "East, as packs arrive")
    page.select_option("select[name=release_id]", str(release["id"]))
    page.fill("input[name=sites]", "east")
    page.get_by_test_id("dynamic").check()
    expect(page.get_by_test_id("preview")).to_have_text(
        "This targets 0 device(s) in 0 site(s); 0 are offline. Dynamic: devices that match "
        "later join its last phase until it is cancelled."
    )
    page.get_by_test_id("create").click()
    expect(page.get_by_test_id("dynamic")).to_contain_text("join its last phase (100%)")
    expect(page.get_by_test_id("campaign-status")).to_have_text("running")
    expect(page.locator("#live")).to_contain_text("0 device(s)")
    expect(page.locator("html")).to_have_attribute("data-live", "sse")
    page.wait_for_timeout(2500)  # the one poll scheduled before the stream opened is over
    page.evaluate("window.__same_page = true")  # gone if the page were reloaded
    auth = {"Authorization": f"Bearer {east['token']}"}
    answer = dashboard.api.post(
        "/api/v1/agent/check-in", headers=auth, json={"devices": [bms("BMS-EAST-001")]}
    )
    assert [o["device_serial"] for o in answer.json()["offers"]] == ["BMS-EAST-001"]
    row = page.locator("#live tbody tr", has_text="BMS-EAST-001")
    expect(row).to_contain_text("offered", timeout=6000)
    expect(row).to_contain_text("100%")  # the last phase
    assert page.evaluate("window.__same_page") is True
    page.goto(f"{dashboard.url}/ui/campaigns")
    expect(page.locator("tr", has_text="East, as packs arrive")).to_contain_text("dynamic")
