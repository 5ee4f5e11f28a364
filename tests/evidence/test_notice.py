"""What the person on site is told before and after an update (UN R156)."""

from __future__ import annotations

import pytest

from bmsfw.evidence.notice import after_text, out_of_service_s, plan_notice
from bmsfw.link.uart import SerialParams
from bmsfw.link.wire import CanWireModel
from bmsfw.package import (
    ComponentSource,
    HardwareCompat,
    Manifest,
    build_release,
    create_pki,
    inspect_release,
)
from bmsfw.update.profile import BootLimits, UpdateProfile
from bmsfw.update.report import StepRecord, UpdateReport


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    pki = create_pki("ed25519")
    package = build_release(
        product="BMS-16S firmware",
        version="2.0.0",
        security_counter=2,
        hardware=HardwareCompat("BMS-16S", ("C",)),
        min_bootloader_version="1.0.0",
        components=[ComponentSource("app", bytes(range(256)) * 40)],
        image_signing_key=pki.image_signing_key,
        encoding="raw",
    )
    return inspect_release(package).manifest


@pytest.mark.req("R156-INFORM-BEFORE")
def test_before_the_update_the_plan_says_what_happens_and_how_long_the_pack_is_down(
    manifest: Manifest,
) -> None:
    profile = UpdateProfile(boot=BootLimits(boot_timeout_s=20.0, revert_timeout_s=25.0))
    notice = plan_notice(
        manifest, profile, link="can", rate=500_000, packs=1, one_after_another=False
    )
    stored = manifest.component("app").stored_size
    assert notice.transfer_bytes == stored
    assert notice.transfer_min_s == pytest.approx(
        stored / CanWireModel(500_000).raw_payload_rate_bytes_per_s()
    )
    assert (notice.out_of_service_max_s, notice.worst_case_s) == (20.0, 45.0)
    text = notice.text()
    assert (
        "install BMS-16S firmware 2.0.0 (security counter 2, standard) on 1 BMS over CAN 500 kbit/s"
        in text
    )
    assert "the pack stays in service" in text and "OUT OF SERVICE" in text
    assert "at most 20 s; at most 45 s if it falls back" in text

    string = plan_notice(
        manifest, profile, link="serial", rate=115_200, packs=4, one_after_another=True
    )
    assert string.link == "RS485 115200 8E1"
    assert string.transfer_min_s == pytest.approx(
        stored / SerialParams(115_200).raw_char_rate_per_s
    )
    assert "on 4 BMS over RS485 115200 8E1, one after another" in string.text()


def _report(outcome: str, steps: list[tuple[str, float]], running: str) -> UpdateReport:
    return UpdateReport(
        node="SIM0000001",
        outcome=outcome,  # type: ignore[arg-type]
        running_version=running,
        steps=[StepRecord(name, True, 0.0, duration) for name, duration in steps],
    )


@pytest.mark.req("R156-INFORM-AFTER")
def test_after_the_update_the_person_on_site_learns_what_happened_and_the_outage() -> None:
    done = _report(
        "updated",
        [("transfer", 9.0), ("device-verify", 0.5), ("activate", 0.25), ("self-test", 3.75)],
        "2.0.0",
    )
    assert out_of_service_s(done) == 4.0
    assert after_text(done) == (
        "After the update: SIM0000001: runs 2.0.0, confirmed; "
        "the pack was out of service for 4.0 s (reset to self-test end).\n"
    )
    back = _report("rolled-back", [("activate", 0.5), ("self-test", 12.0)], "1.0.0")
    assert "the new firmware failed; it runs 1.0.0 again" in after_text(back)
    refused = _report("refused", [("preflight", 1.0)], "1.0.0")
    assert out_of_service_s(refused) is None
    assert after_text(refused).endswith(
        "nothing written; it runs 1.0.0; the pack was not taken out of service.\n"
    )
