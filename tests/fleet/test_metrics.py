"""``GET /metrics`` read by prometheus_client's own parser (not ours), on SQLite and
PostgreSQL: check-ins, campaign progress per state, devices online, refused requests by
reason, request latency by route; a viewer token needed unless the setting says open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import init_database

from .conftest import Fleet, bms, make_release


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_count_the_fleet(fleet: Fleet, pki: Any) -> None:
    fleet.add_gateway("gw", "north")
    fleet.check_in("gw", [bms("S1"), bms("S2"), bms("S3")])
    release = fleet.upload(make_release(pki))["id"]
    campaign = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={"name": "c", "release_id": release, "phases": [{"name": "all", "percent": 100}]},
    )["id"]
    fleet.check_in("gw", [bms("S1"), bms("S2"), bms("S3")])  # offers go out
    fleet.report("gw", "S1", campaign, "downloading")
    fleet.check_in("gw", [bms("S1"), bms("S2"), bms("S3", "1.9.0")])  # S3: flagged
    for _ in range(3):
        fleet.client.get("/api/v1/devices", headers={"Authorization": "Bearer wrong"})
    fleet.client.get("/api/v1/audit", headers=fleet.h("viewer"))  # role refused

    response = fleet.client.get("/metrics", headers=fleet.h("viewer"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.text)
    assert _value(samples, "bmsfw_fleet_check_ins_total", result="ok") == 3
    state = {"campaign": str(campaign), "status": "running"}
    assert _value(samples, "bmsfw_fleet_campaign_devices", **state, state="downloading") == 1
    assert _value(samples, "bmsfw_fleet_campaign_devices", **state, state="offered") == 2
    assert _value(samples, "bmsfw_fleet_campaign_devices", **state, state="succeeded") == 0
    assert _value(samples, "bmsfw_fleet_campaigns", status="running") == 1
    assert _value(samples, "bmsfw_fleet_devices", online="true", decommissioned="false") == 3
    assert _value(samples, "bmsfw_fleet_devices", online="false", decommissioned="false") == 0
    assert _value(samples, "bmsfw_fleet_open_flags", kind="unexpected_version") == 1
    refused = "bmsfw_fleet_refused_requests_total"
    assert _value(samples, refused, reason="BMSFW-E602", status="401") == 3
    assert _value(samples, refused, reason="BMSFW-E603", status="403") == 1
    route = "/api/v1/agent/check-in"
    assert _value(samples, "bmsfw_fleet_http_request_duration_seconds_count", route=route) == 3
    requests = "bmsfw_fleet_http_requests_total"
    assert _value(samples, requests, route=route, method="POST", status="200") == 3

    fleet.clock.advance(3600)  # an hour later, nobody checked in: offline
    later = _samples(fleet.client.get("/metrics", headers=fleet.h("viewer")).text)
    assert _value(later, "bmsfw_fleet_devices", online="false", decommissioned="false") == 3


def test_metrics_need_a_viewer_token_by_default(fleet: Fleet) -> None:
    fleet.add_gateway("gw", "north")
    missing = fleet.client.get("/metrics")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "BMSFW-E601"
    gateway = fleet.client.get("/metrics", headers=fleet.h("gw"))
    assert gateway.status_code == 403 and gateway.json()["error"]["code"] == "BMSFW-E603"
    for probe in ("/api/v1/nothing/here", "/x" * 50):  # no raw paths as labels
        fleet.client.get(probe, headers=fleet.h("viewer"))
    text = fleet.client.get("/metrics", headers=fleet.h("viewer")).text
    assert "nothing" not in text and "/x/x" not in text
    assert 'route="other"' in text


def test_metrics_open_and_off_settings(tmp_path: Path, root_pem: bytes) -> None:
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    init_database(db_url)
    for setting, status in (("open", 200), ("off", 404)):
        config = ServerConfig(
            db_url=db_url, trust_root_pem=root_pem, tick_interval_s=0, metrics=setting
        )
        with TestClient(create_app(config)) as client:
            assert client.get("/metrics").status_code == status, setting
            assert client.get("/api/v1/devices").status_code == 401
