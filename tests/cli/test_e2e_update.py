"""`bmsfw update` and friends, run as a user would, against virtual BMS processes on CAN."""

from __future__ import annotations

import json
from collections.abc import Callable

from .conftest import Bench, run_bmsfw


def test_successful_update_and_config_survives(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench()
    bench.start()
    result = run_bmsfw(*bench.update_args("v2"), "--json", check=0)
    report = json.loads(result.stdout)
    assert report["outcome"] == "updated"
    assert report["running_version"] == "2.0.0"
    assert report["device_now"]["image_state"] == "confirmed"
    assert report["transfer"]["offset"] == report["transfer"]["total"]
    info = json.loads(run_bmsfw("info", *bench.link_args(), "--json", check=0).stdout)
    assert info[0]["boot"]["running_version"] == "2.0.0"
    diff = run_bmsfw("diff", *bench.link_args(), report["backup"]["path"], "--check", check=0)
    assert "no changes" in diff.stdout
    audit = run_bmsfw("report", "--audit", str(bench.work / "backups" / "audit.jsonl"), check=0)
    assert "chain intact" in audit.stdout
