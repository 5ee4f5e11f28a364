"""Four eyes in a real Chromium (ServerConfig.four_eyes): a release manager asks for a
deactivation from the release page and sees it waiting, cannot approve it themself (E650),
a second release manager approves it and the release leaves the releases list and the
campaign form while its running campaign goes on ("finish"); an admin revokes a token from
the access review, a second admin approves, and the API refuses that token from then on."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from fleet.conftest import bms, make_release

from .conftest import SHOTS, Dashboard, serve_dashboard


@pytest.fixture(scope="module")
def four_eyes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """A four-eyes server: one gateway, three devices, release 1 with a running campaign,
    and two people for each role that approves (``admin-2``, ``release_manager-2``)."""
    people = {
        name: (name, role)
        for name, role in (
            ("viewer", "viewer"),
            ("operator", "operator"),
            ("release_manager", "release_manager"),
            ("release_manager-2", "release_manager"),
            ("admin-2", "admin"),
        )
    }
    with serve_dashboard(tmp_path_factory.mktemp("four-eyes"), people, four_eyes=True) as d:
        tokens, pki = d.tokens, d.extra["pki"]
        gateway = d.call("POST", "/gateways", json={"name": "gw", "site": "harbour"})["token"]
        d.extra["gateway"] = {"Authorization": f"Bearer {gateway}"}
        d.api.post(
            "/api/v1/agent/check-in",
            headers=d.extra["gateway"],
            json={"devices": [bms(f"SN{i}") for i in range(3)]},
        ).raise_for_status()
        d.api.post(
            "/api/v1/releases",
            headers={"Authorization": f"Bearer {tokens['release_manager']}"},
            content=make_release(pki),
            params={"filename": "r.bmsfw"},
        ).raise_for_status()
        spec = {"name": "harbour", "release_id": 1, "phases": [{"name": "all", "percent": 100}]}
        d.campaign_id = d.call("POST", "/campaigns", "operator", json=spec)["id"]
        yield d


def _csrf(page: Page) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.content())
    assert match
    return match.group(1)


def _as(browser: Browser, d: Dashboard, who: str) -> Page:
    """A fresh browser context (its own cookies) signed in as ``who``."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    d.sign_in(page, who)
    expect(page.get_by_test_id("who")).to_contain_text(who)
    return page


def _waiting_id(page: Page) -> int:
    row = page.locator("[data-testid=waiting] tbody tr[data-testid^=approval-]").first
    return int(str(row.get_attribute("data-testid")).split("-")[1])


def test_a_deactivation_waits_for_a_second_release_manager(
    four_eyes: Dashboard, browser: Browser
) -> None:
    d = four_eyes
    asker = _as(browser, d, "release_manager")
    asker.goto(f"{d.url}/ui/releases/1")
    asker.fill("input[name=reason]", "bricks rev B boards")
    asker.select_option("[data-testid=running]", "finish")
    asker.click("[data-testid=deactivate]")
    expect(asker).to_have_url(f"{d.url}/ui/approvals")
    number = _waiting_id(asker)
    expect(asker.get_by_test_id(f"summary-{number}")).to_contain_text(
        "deactivate release 1 (bms-app 1.1.0); let finish its running campaigns"
    )
    expect(asker.get_by_test_id(f"own-{number}")).to_be_visible()
    expect(asker.get_by_test_id(f"approve-{number}")).to_have_count(0)
    expect(asker.get_by_test_id("nav-approvals")).to_contain_text("1")
    # The page offers no button to its requester; a forged form post is refused too.
    refused = asker.context.request.post(
        f"{d.url}/ui/approvals/{number}/approve", form={"csrf": _csrf(asker)}
    )
    assert refused.status == 403 and "BMSFW-E650" in refused.text()
    assert d.call("GET", "/releases/1")["deactivated_at"] is None
    # An operator sees it waiting but may not approve a deactivation.
    operator = _as(browser, d, "operator")
    operator.goto(f"{d.url}/ui/")
    expect(operator.get_by_test_id("overview-waiting")).to_contain_text("deactivate release 1")
    operator.goto(f"{d.url}/ui/approvals")
    expect(operator.get_by_test_id(f"approval-{number}")).to_contain_text("needs release_manager")

    approver = _as(browser, d, "release_manager-2")
    approver.goto(f"{d.url}/ui/approvals")
    expect(approver.get_by_test_id(f"reject-{number}")).to_be_visible()
    if os.environ.get("BMSFW_WRITE_SCREENSHOTS") == "1":
        approver.screenshot(path=str(SHOTS / "dashboard-approvals.png"), full_page=True)
    approver.click(f"[data-testid=approve-{number}]")
    expect(approver.get_by_test_id(f"outcome-{number}")).to_have_text("approved")
    expect(approver.get_by_test_id("none-waiting")).to_be_visible()
    release = d.call("GET", "/releases/1")
    assert release["deactivated_by"] == "operator:release_manager-2"
    # Neither the releases list nor the campaign form offers it any more...
    approver.goto(f"{d.url}/ui/releases")
    expect(approver.get_by_test_id("deactivated-releases")).to_contain_text("1.1.0")
    expect(approver.locator("main table").first.locator("tbody")).to_contain_text(
        "No active release"
    )
    operator.goto(f"{d.url}/ui/campaigns/new")
    expect(operator.locator("select[name=release_id]")).to_have_count(0)
    # ...while its running campaign was let finish.
    assert d.call("GET", f"/campaigns/{d.campaign_id}")["status"] == "running"
    trail = [(e["action"], e["actor"]) for e in d.call("GET", "/audit")]
    assert ("approval.refused", "operator:release_manager") in trail
    assert ("approval.approve", "operator:release_manager-2") in trail
    for page in (asker, operator, approver):
        page.context.close()


def test_a_token_revoked_from_the_dashboard_after_approval_is_refused(
    four_eyes: Dashboard, browser: Browser
) -> None:
    d = four_eyes
    viewer_id = next(c["id"] for c in d.call("GET", "/access-review") if c["name"] == "viewer")
    viewer = {"Authorization": f"Bearer {d.tokens['viewer']}"}
    admin = _as(browser, d, "admin")
    admin.goto(f"{d.url}/ui/access")
    admin.click(f"[data-testid=revoke-{viewer_id}]")
    expect(admin).to_have_url(f"{d.url}/ui/approvals")
    number = _waiting_id(admin)
    expect(admin.get_by_test_id(f"own-{number}")).to_be_visible()
    assert d.api.get("/api/v1/whoami", headers=viewer).status_code == 200  # not yet

    second = _as(browser, d, "admin-2")
    second.goto(f"{d.url}/ui/approvals")
    expect(second.get_by_test_id(f"summary-{number}")).to_contain_text(
        f"revoke token {viewer_id} (operator:viewer, viewer)"
    )
    second.click(f"[data-testid=approve-{number}]")
    expect(second.get_by_test_id(f"outcome-{number}")).to_have_text("approved")
    refused = d.api.get("/api/v1/whoami", headers=viewer)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "BMSFW-E602"
    second.goto(f"{d.url}/ui/access")
    expect(second.locator("main")).to_contain_text("revoked")
    for page in (admin, second):
        page.context.close()


def test_forms_need_their_csrf_token(four_eyes: Dashboard, browser: Browser) -> None:
    page = _as(browser, four_eyes, "admin")
    answer: Any = page.context.request.post(
        f"{four_eyes.url}/ui/approvals/1/reject", form={"csrf": "forged"}
    )
    assert answer.status == 403 and "BMSFW-E640" in answer.text()
    page.context.close()
