"""The update report page (/ui/evidence/ID): read from the evidence bundle the gateway
uploaded; steps, preflight values and limits, the error code with the catalogue's
diagnosis and remedy, what the person on site was told; all of it shown as text."""

from __future__ import annotations

from bmsfw.evidence.bundle import EvidenceInputs, build_bundle
from bmsfw.fleet.web.catalogue import explain
from bmsfw.fleet.web.report import report_view
from bmsfw.protocol.session import DeviceIdentity
from bmsfw.update.preflight import CheckResult
from bmsfw.update.report import ErrorRecord, PackageRecord, StepRecord, UpdateReport
from fleet import conftest as fleet_fixtures
from fleet.conftest import Fleet, bms

from .test_routes import _sign_in, https_fleet

fleet = fleet_fixtures.fleet
db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
config_overrides = fleet_fixtures.config_overrides
__all__ = ["https_fleet"]

MARKUP = "<script>window.__pwned=1</script>"


def failed_report(serial: str) -> UpdateReport:
    """A preflight refusal's report, with markup in a step's detail."""
    return UpdateReport(
        node=serial,
        outcome="failed",
        started_at=1_790_000_000.0,
        operator="gateway agent",
        device_before=DeviceIdentity("vendor", "BMS-48V", "A", serial, "1.0", "1.0.0", 1, "A"),
        running_version="1.0.0",
        package=PackageRecord(sha256="ab" * 32, version="1.1.0"),
        steps=[
            StepRecord("verify-package", True, 1_790_000_000.5, 0.12, "signed by vendor"),
            StepRecord("preflight", False, 1_790_000_001.0, 2.5, MARKUP),
        ],
        preflight=[
            CheckResult("state_of_charge", "12.0 %", "20.0..80.0 %", passed=False, safety=True),
            CheckResult("temperature", "21.5 °C", "0.0..45.0 °C", passed=True, safety=True),
        ],
        failed_step="preflight",
        error=ErrorRecord(
            code="BMSFW-E401",
            type="PreflightFailedError",
            message="state of charge 12.0 % outside 20..80 %",
            diagnosis="outside the window",
            remedy="charge it",
        ),
    )


def _failed_update(serial: str) -> bytes:
    return build_bundle(
        EvidenceInputs(
            failed_report(serial),
            created_at=1_790_000_100.0,
            bmsfw_version="t",
            notice_before="The pack stays in service: nothing was changed.\n",
        )
    )


def test_the_update_report_page_shows_steps_preflight_and_the_remedy(
    https_fleet: Fleet,
) -> None:
    fleet = https_fleet
    fleet.add_gateway("gw", "north")
    fleet.check_in("gw", [bms("EV-1")])
    uploaded = fleet.client.post(
        "/api/v1/agent/evidence",
        headers={**fleet.h("gw"), "Content-Type": "application/zip"},
        content=_failed_update("EV-1"),
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    number = uploaded.json()["id"]
    _sign_in(fleet, "viewer")
    assert fleet.client.get(f"/ui/evidence/{number}").status_code == 403
    _sign_in(fleet, "operator")
    device = fleet.client.get("/ui/devices/EV-1")
    assert f'href="/ui/evidence/{number}"' in device.text
    page = fleet.client.get(f"/ui/evidence/{number}")
    assert page.status_code == 200
    text = page.text
    assert 'data-testid="outcome">failed<' in text
    preflight = text.split('data-testid="preflight"')[1].split("</table>")[0]
    assert "<td>state_of_charge <span" in preflight
    assert "<td>12.0 %</td><td>20.0..80.0 %</td>" in preflight and "FAIL" in preflight
    assert "<td>21.5 °C</td><td>0.0..45.0 °C</td>" in preflight
    steps = text.split('data-testid="steps"')[1].split("</table>")[0]
    assert "<td>verify-package</td>" in steps and "0.12 s" in steps
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in steps and MARKUP not in text
    explanation = explain("BMSFW-E401")
    assert explanation is not None
    error = text.split('data-testid="error"')[1]
    assert "BMSFW-E401" in error and explanation.remedy in error
    assert "nothing was changed" in text
    for missing in ("999", "0", "x"):
        absent = fleet.client.get(f"/ui/evidence/{missing}")
        assert absent.status_code == 404 and "BMSFW-E604" in absent.text, missing


def test_a_bundle_that_cannot_be_read_is_said_so() -> None:
    view = report_view(b"not a zip")
    assert view.problem.startswith("the report in this bundle cannot be read")
    assert view.steps == () and view.explanation is None
