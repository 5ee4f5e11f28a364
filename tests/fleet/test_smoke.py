from .conftest import Fleet, bms, make_release


def test_upload_checkin_campaign_roundtrip(fleet: Fleet, pki) -> None:
    release = fleet.upload(make_release(pki))
    assert release["version"] == "1.1.0" and release["ota_allowed"]
    fleet.add_gateway("gw1", "site-a")
    answer = fleet.check_in("gw1", [bms(f"S{i}") for i in range(3)])
    assert answer["offers"] == []
    campaign = fleet.call(
        "POST",
        "/api/v1/campaigns",
        "operator",
        json={
            "name": "c1",
            "release_id": release["id"],
            "phases": [{"name": "all", "percent": 100, "soak_s": 0}],
        },
    )
    assert campaign["targets"] == 3
    answer = fleet.check_in("gw1", [bms(f"S{i}") for i in range(3)])
    assert len(answer["offers"]) == 3
    for offer in answer["offers"]:
        for state in ("downloading", "downloaded", "installing", "verifying", "succeeded"):
            fleet.report("gw1", offer["device_serial"], campaign["id"], state)
    assert fleet.call("GET", f"/api/v1/campaigns/{campaign['id']}")["status"] == "completed"
