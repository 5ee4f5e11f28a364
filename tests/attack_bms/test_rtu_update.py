"""`bmsfw update` from the CLI (its own process) against a hostile BMS on RS485: our own
Modbus RTU framer on a pty (hostile_rtu.RtuBms), not the virtual BMS. The RS485 twins of
test_false_success.py, test_lies.py and test_slow.py, each with the exact code, the exit
code of docs/cli.md, a bound on wall time, no traceback (the fixture checks), and nothing
written to the BMS after the first inconsistency."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bmsfw.update.audit import verify_audit_log
from cli_support import run_bmsfw

from .conftest import NEW_VERSION, CliAttack
from .hostile_rtu import COMMAND_REGISTER, CONFIRM, DOC_SELECT, RtuBehaviour, RtuBms

WALL_S = 20  # each run takes ~3 s here; generous for a loaded 2-CPU CI machine
REFUSED = (0x10, COMMAND_REGISTER)  # the last write: the command the BMS refused or lied on


def audit(run: CliAttack) -> list[dict[str, Any]]:
    """The audit log's records, its hash chain verified (the CLI's listing of it: below)."""
    return verify_audit_log(run.audit_log)


def ends_at_the_confirm(run: CliAttack) -> None:
    """The confirm was the last thing written: nothing after the inconsistency."""
    assert run.bms.writes[-1] == REFUSED
    assert run.bms.commands[-1] == CONFIRM


def test_honest_fake_updates(rtu_update: Callable[..., CliAttack]) -> None:
    """The fake is good enough for a whole update (so the attacks below are real)."""
    run = rtu_update(RtuBehaviour())
    assert run.result.returncode == 0, run.result.stderr
    assert run.report["outcome"] == "updated"
    assert run.report["decisions"]["security-counter"] == "1 -> 2"
    assert run.bms.version == f"{NEW_VERSION}+0" and run.bms.image_state == "confirmed"
    assert run.seconds < WALL_S


def test_refused_confirm_then_confirmed_is_e210_not_updated(
    rtu_update: Callable[..., CliAttack],
) -> None:
    """CONFIRM answered exception 0x04 / last_result 210, yet the boot status then says
    confirmed: E210, exit 4, failed; the audit log says failed, never updated."""
    run = rtu_update(RtuBehaviour(confirm_refused=True, confirm_makes_confirmed=True))
    assert run.code == "BMSFW-E210", run.result.stderr
    assert run.result.returncode == 4
    assert run.report["outcome"] == "failed"
    assert run.bms.image_state == "confirmed"  # what the BMS claims
    ends_at_the_confirm(run)  # no rollback of an image it says is confirmed
    assert [(r["result"], r["error_code"]) for r in audit(run)] == [("failed", "BMSFW-E210")]
    assert run.seconds < WALL_S


def test_identity_drift_stops_before_anything_is_written(
    rtu_update: Callable[..., CliAttack],
) -> None:
    """RS-0001 at identify, RS-0002 from the preflight on: E508, exit 7, nothing written."""
    run = rtu_update(RtuBehaviour(serial="RS-0001", serial_later="RS-0002"))
    assert run.code == "BMSFW-E508", run.result.stderr
    assert run.result.returncode == 7
    assert "RS-0002" in run.report["error"]["message"]
    assert run.report["outcome"] == "refused"
    assert run.bms.writes == [] and run.bms.commands == []
    assert run.seconds < WALL_S


def test_updated_needs_the_release_digest(rtu_update: Callable[..., CliAttack]) -> None:
    """After the confirm the BMS reports a digest that is not the release image's: E509."""
    run = rtu_update(RtuBehaviour(digest_override=hashlib.sha256(b"other").digest()))
    assert run.code == "BMSFW-E509", run.result.stderr
    assert run.result.returncode == 7
    assert run.report["outcome"] == "failed"
    assert run.report["decisions"]["installed"] == "digest mismatch"
    ends_at_the_confirm(run)
    assert run.seconds < WALL_S


def test_already_installed_on_the_device_word_is_not_exit_0(
    rtu_update: Callable[..., CliAttack],
) -> None:
    """It claims to run the release (version and counter) but its active image digest is
    another image's, before and after: sent again, then E509; never already-installed."""
    liar = RtuBehaviour(
        version=f"{NEW_VERSION}+0", counter=2, digest_override=hashlib.sha256(b"x").digest()
    )
    run = rtu_update(liar)
    assert run.report["decisions"]["start"] == "start"
    assert run.report["outcome"] != "already-installed"
    assert run.code == "BMSFW-E509", run.result.stderr
    assert run.result.returncode == 7
    ends_at_the_confirm(run)
    assert [r["result"] for r in audit(run)] == ["failed"]
    assert run.seconds < WALL_S


def test_slow_drip_below_the_rs485_floor(rtu_update: Callable[..., CliAttack]) -> None:
    """Every transfer-window write answered 0.4 s late (inside the 0.5 s time-out): ~600
    B/s against the profile's 1000 B/s RS485 floor. E524 once the 1 s grace is over,
    within grace + one frame (docs/update-procedure.md), never verified or activated."""
    run = rtu_update(RtuBehaviour(window_delay_s=0.4))
    assert run.code == "BMSFW-E524", run.result.stderr
    assert run.result.returncode == 7
    assert run.report["outcome"] == "paused"
    assert run.report["failed_step"] == "transfer"
    assert "below the floor of 1000 B/s" in run.report["error"]["message"]
    # grace + one frame, + 1 s for a loaded CI machine (all 20 frames would take 8 s)
    assert 1.0 <= run.report["transfer"]["duration_s"] <= 1.0 + 0.4 + 1.0
    assert run.bms.writes[-1][1] >= 0x7FFF  # the last write: a window frame
    assert CONFIRM not in run.bms.commands and 3 not in run.bms.commands  # no VERIFY
    assert run.seconds < WALL_S


@pytest.mark.req("SEED-ANTI-ROLLBACK")
def test_counter_that_did_not_move_is_an_error(rtu_update: Callable[..., CliAttack]) -> None:
    """The release carries counter 2; the BMS still reports 1 after the confirm: E523."""
    run = rtu_update(RtuBehaviour(counter_frozen=True))
    assert run.code == "BMSFW-E523", run.result.stderr
    assert run.result.returncode == 7
    assert run.report["decisions"]["security-counter"] == "1 -> 1"
    assert run.report["outcome"] == "failed"
    ends_at_the_confirm(run)
    assert run.seconds < WALL_S


ESCAPES = b"\x1b]0;owned\x07\x1b[2J\x1b[H[green]UPDATED OK[/green]"


def test_device_strings_are_shown_as_text(rtu_update: Callable[..., CliAttack]) -> None:
    """ESC/OSC sequences and rich markup in the serial, the refusal text and the self-test
    document: the terminal gets them as visible text (no ESC byte, markup literal), in the
    update's output, the saved report shown by `bmsfw report`, and the audit listing."""
    behaviour = RtuBehaviour(
        serial=b"RS-\x1b[31m[bold]1[/bold]",
        confirm_refused=True,
        confirm_makes_confirmed=False,
        last_message=ESCAPES,
        self_test_detail="\x1b[1A\x1b[2K[link=http://x]ok[/link]",
    )
    run = rtu_update(behaviour, as_json=False)
    shown = run.result.stdout + run.result.stderr
    assert run.code == "BMSFW-E210"
    assert run.result.returncode == 4
    assert run.report["outcome"] == "rolled-back"  # refused and left in test: rolled back
    assert run.bms.version == "1.0.0+0"
    assert run.report["device_before"]["serial"] == "RS-\x1b[31m[bold]1[/bold]"
    report = run_bmsfw("report", str(next((run.work / "backups" / "reports").glob("*.json"))))
    listing = run_bmsfw("report", "--audit", str(run.audit_log))
    assert report.returncode == 0 and listing.returncode == 0, report.stderr + listing.stderr
    for text in (shown, report.stdout + report.stderr, listing.stdout + listing.stderr):
        assert "\x1b" not in text and "\x07" not in text
        assert "Traceback" not in text
        assert "[bold]1[/bold]" in text  # markup shown, not applied
    assert r"\x1b]0;owned\x07\x1b[2J\x1b[H[green]UPDATED OK[/green]" in shown
    assert r"\x1b[1A\x1b[2K[link=http://x]ok[/link]" in report.stdout
    assert run.seconds < WALL_S


# --- the other commands that read device data: `backup` and `info` ------------------------


def rtu_link(bms: RtuBms) -> list[str]:
    return ["--serial", bms.port, "--unit", "1", "--timeout", "0.5"]


NAN_CONFIG = b'{"schema_version":1,"config":{"cell_ov_mv":NaN},"calibration":{},"checksum":""}'


@pytest.mark.req("IEC62443-CR3.5")
@pytest.mark.parametrize(
    "behaviour",
    [RtuBehaviour(doc_length=0xFFFFFFFF), RtuBehaviour(config_document=NAN_CONFIG)],
    ids=["document-of-4-gib", "nan"],
)
def test_backup_of_a_hostile_configuration_document(
    behaviour: RtuBehaviour, tmp_path: Path
) -> None:
    """`bmsfw backup` (its own process): E381, exit 5, no traceback, no backup file, and
    nothing written but the document select."""
    with RtuBms(behaviour) as bms:
        started = time.monotonic()
        result = run_bmsfw("backup", *rtu_link(bms), "--to", str(tmp_path / "b"), "--json")
        seconds = time.monotonic() - started
    assert result.returncode == 5, result.stderr
    assert json.loads(result.stdout)["error"]["code"] == "BMSFW-E381"
    assert "Traceback" not in result.stderr
    assert not any((tmp_path / "b").rglob("*.json"))
    assert bms.writes == [(0x10, DOC_SELECT)]
    assert seconds < WALL_S


def test_info_never_shows_impossible_telemetry() -> None:
    """SOC 250 % and -300 degC are not printed as values: `bmsfw info` ends with E365, exit
    5 (a device answer outside physics is a transport-level invalid answer, docs/cli.md)."""
    with RtuBms(RtuBehaviour(soc_raw=25_000, temps_raw=(250, -3000))) as bms:
        result = run_bmsfw("info", *rtu_link(bms), "--json")
    assert "Traceback" not in result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "BMSFW-E365", result.stdout
    assert "state of charge" in error["message"]
    assert result.returncode == 5
    assert bms.writes == []
