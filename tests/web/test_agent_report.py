"""The update report an agent sends with its result (no evidence bundle needed): kept
typed by the server (one per device and campaign, the latest), answered by
``GET /devices/{serial}/updates`` and shown on the device page (steps, preflight values
and limits, the error code with the catalogue's diagnosis and remedy), all of it as
text; a refused report keeps nothing. SQLite and PostgreSQL."""

from __future__ import annotations

import math
from typing import Any

from markupsafe import escape
from sqlalchemy import create_engine, select

from bmsfw.fleet.models import UpdateReportRecord
from bmsfw.fleet.protocol import UpdateSummary
from bmsfw.fleet.web.catalogue import explain
from fleet import conftest as fleet_fixtures
from fleet.conftest import Fleet, bms, make_release

from .test_report import MARKUP, failed_report
from .test_routes import _sign_in, https_fleet

fleet = fleet_fixtures.fleet
db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
config_overrides = fleet_fixtures.config_overrides
__all__ = ["https_fleet"]

CODE = "BMSFW-E401"


def _report(**changes: Any) -> dict[str, Any]:
    """A failed update's report in its JSON form (what the agent reads it through)."""
    return {**failed_report("AR-1").to_dict(), **changes}


def _stored(fleet: Fleet) -> list[tuple[Any, ...]]:
    engine = create_engine(fleet.db_url)
    try:
        with engine.connect() as conn:
            table = UpdateReportRecord.__table__
            return [tuple(r) for r in conn.execute(select(table).order_by(table.c.id))]
    finally:
        engine.dispose()


def _send(fleet: Fleet, campaign: int, state: str, update: Any = None, **kw: Any) -> Any:
    body = {"device_serial": "AR-1", "campaign_id": campaign, "state": state, **kw}
    if update is not None:
        body["update"] = update
    return fleet.client.post("/api/v1/agent/reports", headers=fleet.h("gw"), json=body)


def test_the_report_sent_with_the_result_is_kept_and_shown(https_fleet: Fleet, pki: Any) -> None:
    fleet = https_fleet
    fleet.add_gateway("gw", "north")
    fleet.check_in("gw", [bms("AR-1")])
    release = fleet.upload(make_release(pki))["id"]
    campaign = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={"name": "c", "release_id": release, "selector": {"serials": ["AR-1"]},
              "phases": [{"name": "all", "percent": 100}]},
    )["id"]  # fmt: skip
    fleet.check_in("gw", [bms("AR-1")])
    assert _send(fleet, campaign, "downloading").status_code == 200
    summary = UpdateSummary.from_report_json(_report()).model_dump(mode="json")
    # Waiting for preflight, then failing: the latest report replaces the earlier one.
    waiting = _report(failed_step="preflight", outcome="refused")
    first = _send(fleet, campaign, "waiting", UpdateSummary.from_report_json(waiting)
                  .model_dump(mode="json"), error_code=CODE)  # fmt: skip
    assert first.status_code == 200, first.text
    assert _send(fleet, campaign, "failed", summary, error_code=CODE).status_code == 200
    assert len(_stored(fleet)) == 1
    # A refused report (a state after the terminal one) keeps nothing it carried.
    before = _stored(fleet)
    refused = _send(fleet, campaign, "installing", {**summary, "outcome": "updated"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "BMSFW-E607"
    assert _stored(fleet) == before

    (run,) = fleet.call("GET", "/api/v1/devices/AR-1/updates", "viewer")
    assert (run["campaign_id"], run["state"], run["error_code"]) == (campaign, "failed", CODE)
    report = run["report"]
    assert (report["outcome"], report["failed_step"], report["error_code"]) == (
        "failed",
        "preflight",
        CODE,
    )
    assert [s["step"] for s in report["steps"]] == ["verify-package", "preflight"]
    assert report["preflight"][0]["measured"] == "12.0 %"
    assert report["preflight"][0]["limit"] == "20.0..80.0 %"
    assert report["steps"][1]["detail"] == MARKUP  # kept as sent, shown as text

    _sign_in(fleet, "viewer")  # no evidence bundle, no operator role needed
    page = fleet.client.get("/ui/devices/AR-1")
    assert page.status_code == 200
    shown = page.text.split('data-testid="update-report"')[1].split("<h2>Configuration")[0]
    assert "<td>12.0 %</td><td>20.0..80.0 %</td>" in shown and "FAIL" in shown
    assert "<td>21.5 °C</td><td>0.0..45.0 °C</td>" in shown
    assert "<td>verify-package</td>" in shown and "0.12 s" in shown
    explanation = explain(CODE)
    assert explanation is not None
    assert CODE in shown and escape(explanation.remedy) in shown
    assert escape(explanation.diagnosis) in shown
    assert escape(MARKUP) in shown and MARKUP not in page.text


def test_the_summary_is_cut_to_its_bounds_from_any_report_json() -> None:
    """What the agent sends never fails on its own report: over-long text, NUL and
    lone surrogates, non-finite or negative durations, odd shapes, too many steps."""
    steps = [{"step": f"s{i}", "ok": True, "duration_s": math.nan, "detail": "x" * 9000}
             for i in range(100)]  # fmt: skip
    data = _report(
        steps=[*steps, {"step": "a\x00b", "ok": "yes", "duration_s": -3}, "not a step"],
        preflight=[{"name": "\udc80", "measured": 12.5, "limit": None, "passed": 1}],
        error={"code": "E401 <b>", "message": "m" * 5000},
        warnings=["w", 3, "v"],
        package="not a mapping",
    )
    summary = UpdateSummary.from_report_json(data)
    again = UpdateSummary.model_validate_json(summary.model_dump_json())  # as the server reads
    assert again == summary
    assert len(summary.steps) == 64 and {s.duration_s for s in summary.steps} == {0.0}
    assert len(summary.steps[0].detail) == 2000
    assert summary.preflight[0].measured == "12.5" and summary.preflight[0].passed is False
    assert "\x00" not in summary.preflight[0].name and summary.error_code == ""
    assert len(summary.error_message) == 2000 and summary.package_version == ""
    assert summary.warnings == ["w", "v"]
    assert UpdateSummary.from_report_json({}).outcome == ""
