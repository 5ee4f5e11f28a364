"""Release upload from the dashboard: a release manager's form (multipart, CSRF) verifies
the file as the API does and shows what was verified; refusals store nothing."""

from __future__ import annotations

import re

import httpx
import pytest

from bmsfw.package import VendorPki
from fleet import conftest as fleet_fixtures
from fleet.conftest import Fleet, make_release

from .test_routes import _campaign_on_sn1, _sign_in, https_fleet

fleet = fleet_fixtures.fleet
db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
config_overrides = fleet_fixtures.config_overrides
__all__ = ["https_fleet"]


def _upload(fleet: Fleet, csrf: str, data: bytes, name: str = "bms-1.1.0.bmsfw") -> httpx.Response:
    return fleet.client.post(
        "/ui/releases/upload",
        data={"csrf": csrf},
        files={"release": (name, data, "application/octet-stream")},
    )


@pytest.mark.req("IEC62443-CR3.4")
def test_a_release_manager_uploads_and_sees_what_was_verified(
    https_fleet: Fleet, pki: VendorPki
) -> None:
    fleet = https_fleet
    data = make_release(pki, "1.1.0")
    csrf = _sign_in(fleet, "operator")
    assert 'data-testid="upload"' not in fleet.client.get("/ui/releases").text
    refused = _upload(fleet, csrf, data)
    assert refused.status_code == 403 and "BMSFW-E603" in refused.text
    csrf = _sign_in(fleet, "release_manager")
    assert 'data-testid="upload"' in fleet.client.get("/ui/releases").text
    forged = _upload(fleet, "forged", data)
    assert forged.status_code == 403 and "BMSFW-E640" in forged.text
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    bad = _upload(fleet, csrf, bytes(tampered), "evil<script>.bmsfw")
    assert bad.status_code == 422 and "BMSFW-E605" in bad.text
    assert fleet.call("GET", "/api/v1/releases") == []  # nothing stored by any refusal
    rejected = [e for e in fleet.call("GET", "/api/v1/audit") if e["action"] == "release.rejected"]
    assert [e["target"] for e in rejected] == ["file:evil<script>.bmsfw"]

    page = _upload(fleet, csrf, data)
    assert page.status_code == 201
    text = page.text
    assert "Release 1.1.0 verified and stored" in text
    (stored,) = fleet.call("GET", "/api/v1/releases")
    assert stored["sha256"] in text and stored["filename"] == "bms-1.1.0.bmsfw"
    assert 'data-testid="ota">allowed<' in text
    chain = text.split('data-testid="chain"')[1].split("</table>")[0]
    signer = pki.signer_certificate.subject.rfc4514_string()
    root = pki.root_certificate.subject.rfc4514_string()
    rows = re.findall(r"<tr><td>([^<]*)</td>", chain)
    assert rows[0] == signer and rows[-1] == root, rows
    # The release page shows the same chain later (kept with the release).
    kept = fleet.client.get(f"/ui/releases/{stored['id']}").text
    kept_chain = kept.split('data-testid="chain"')[1].split("</table>")[0]
    assert re.findall(r"<tr><td>([^<]*)</td>", kept_chain) == rows
    again = _upload(fleet, csrf, data)
    assert again.status_code == 200 and "was uploaded before" in again.text
    critical = _upload(fleet, csrf, make_release(pki, "1.2.0", safety_class="safety-critical"))
    assert "refused: a safety-critical release is installed on site only" in critical.text
    empty = fleet.client.post("/ui/releases/upload", data={"csrf": csrf})
    assert empty.status_code == 422 and "BMSFW-E630" in empty.text


def test_a_release_manager_deactivates_a_release_from_its_page(
    https_fleet: Fleet, pki: VendorPki
) -> None:
    fleet = https_fleet
    release, campaign = _campaign_on_sn1(fleet, pki)
    path = f"/ui/releases/{release['id']}"
    csrf = _sign_in(fleet, "operator")
    assert 'data-testid="deactivate"' not in fleet.client.get(path).text
    refused = fleet.client.post(f"{path}/deactivate", data={"csrf": csrf, "reason": "x"})
    assert refused.status_code == 403 and "BMSFW-E603" in refused.text
    csrf = _sign_in(fleet, "release_manager")
    assert 'data-testid="deactivate"' in fleet.client.get(path).text
    forged = fleet.client.post(f"{path}/deactivate", data={"csrf": "forged", "reason": "x"})
    assert forged.status_code == 403 and "BMSFW-E640" in forged.text
    assert fleet.call("GET", f"/api/v1/releases/{release['id']}")["deactivated_at"] is None
    done = fleet.client.post(f"{path}/deactivate", data={"csrf": csrf, "reason": "bad <cells>"})
    assert done.status_code == 200 and 'data-testid="deactivated"' in done.text
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign['id']}")["status"] == "cancelled"
    listed = fleet.client.get("/ui/releases").text
    active, pulled = listed.split('data-testid="deactivated-releases"')
    assert f'releases/{release["id"]}"' in pulled and f'releases/{release["id"]}"' not in active
    assert f'value="{release["id"]}"' not in fleet.client.get("/ui/campaigns/new").text
    (entry,) = [
        e for e in fleet.call("GET", "/api/v1/audit") if e["action"] == "release.deactivate"
    ]
    assert entry["detail"]["reason"] == "bad <cells>"
