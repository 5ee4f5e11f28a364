"""A retry after the BMS reverted an interrupted update's test image: `bmsfw update` sends
the release again and its report line says why (core.decide_start), over CAN."""

from __future__ import annotations

import json
from collections.abc import Callable

from bmsfw.package import TrustAnchors, release_header, verify_release
from bmsfw.sim import VirtualBms

from .conftest import Bench, run_bmsfw


def _test_boot_then_cut(bench: Bench) -> None:
    """What a power cut between the test boot and the confirm leaves: release 2.0.0 was
    written and activated, its test image ran once, and the power went before the confirm."""
    package = bench.kit.packages["v2"].read_bytes()
    trust = TrustAnchors.from_root_certificate(bench.kit.trust.read_bytes())
    image = verify_release(package, trust).image()

    def interrupted_update(bms: VirtualBms) -> None:
        bms.begin_update(release_header(package))
        bms.erase_inactive()
        bms.write_inactive(0, image)
        bms.verify_inactive()
        bms.activate()
        bms.reset()
        status = bms.wait_boot()
        assert (status.running_version, status.image_state) == ("2.0.0", "test"), status

    bench.prepare(1, interrupted_update)  # closing it is the power cut: nothing confirmed


def test_retry_after_a_revert_says_the_release_is_sent_again(
    make_bench: Callable[..., Bench],
) -> None:
    bench = make_bench()
    _test_boot_then_cut(bench)
    bench.start()  # power on: the bootloader reverts the test image that ran unconfirmed
    reports = bench.work / "reports"
    retry = run_bmsfw(*bench.update_args("v2"), "--report-dir", str(reports))
    assert retry.returncode == 0, retry.stdout + retry.stderr
    lines = retry.stdout.splitlines()
    assert (
        "  decision:        start: start (1.0.0 -> 2.0.0 (sent again: the BMS reverted its "
        "last test image: test image on bank B not confirmed before the next start "
        "(reset cause: power-on)))"
    ) in lines, retry.stdout
    assert "  result:          UPDATED" in lines, retry.stdout
    assert "  device runs now: 2.0.0" in lines, retry.stdout
    # the whole image went again: a reverted bank is not resumed from
    (report_file,) = reports.glob("update_*.json")
    report = json.loads(report_file.read_text())
    assert report["decisions"]["start"] == "start"
    assert report["transfer"]["resumed_from"] == 0
    assert report["transfer"]["bytes_sent"] == report["transfer"]["total"] > 0
