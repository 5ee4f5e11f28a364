"""Pure parts of the update layer: profile, preflight evaluators, audit chain, backup, links."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bmsfw.protocol.session import (
    BootStatus,
    ConfigSnapshot,
    DeviceIdentity,
    LinkQuality,
    Telemetry,
)
from bmsfw.update.audit import AuditLog, verify_audit_log
from bmsfw.update.backup import diff_snapshots, load_backup, snapshot_checksum, write_backup
from bmsfw.update.connect import CanLink, SerialLink, parse_links
from bmsfw.update.errors import (
    AuditLogTamperedError,
    BackupInvalidError,
    LinkSpecInvalidError,
    OverrideRefusedError,
    ProfileInvalidError,
)
from bmsfw.update.preflight import (
    check_bank,
    check_link,
    check_soc,
    check_supply,
    check_temperature,
    validate_overrides,
)
from bmsfw.update.profile import PreflightLimits, load_profile


def _telemetry(soc: float = 50.0, temps: tuple[float, ...] = (25.0,)) -> Telemetry:
    return Telemetry(soc, 52.0, 0.0, (3.3, 3.31), temps, 24.0)


@pytest.mark.req("SEED-SOC-RANGE")
@pytest.mark.parametrize(
    ("soc", "passed"), [(19.9, False), (20.0, True), (50.0, True), (80.0, True), (80.1, False)]
)
def test_soc_window_edges(soc: float, passed: bool) -> None:
    result = check_soc(_telemetry(soc), PreflightLimits())
    assert result.passed is passed and result.safety
    assert result.limit == "20–80 %"


@pytest.mark.req("SEED-TEMP-RANGE")
@pytest.mark.parametrize(
    ("temps", "passed"),
    [((-0.1, 20.0), False), ((0.0, 45.0), True), ((25.0, 45.1), False), ((), False)],
)
def test_temperature_uses_every_sensor(temps: tuple[float, ...], passed: bool) -> None:
    assert check_temperature(_telemetry(temps=temps), PreflightLimits()).passed is passed


@pytest.mark.req("SEED-STABLE-SUPPLY")
def test_supply_ripple_and_range() -> None:
    limits = PreflightLimits()
    assert check_supply((24.0, 24.1, 23.95, 24.0), limits).passed
    assert not check_supply((24.0, 22.0, 25.5, 24.0), limits).passed  # 14 % ripple
    assert not check_supply((8.0, 8.0, 8.0), limits).passed  # stable but too low
    assert not check_supply((24.0,), limits).passed


@pytest.mark.req("SEED-LINE-TEST")
def test_link_and_bank_checks() -> None:
    good = LinkQuality(True, 5, 0, "500000 bit/s CAN", True, 3.0)
    assert check_link(good, PreflightLimits()).passed
    assert not check_link(LinkQuality(True, 5, 1, "x", True), PreflightLimits()).passed
    assert not check_link(LinkQuality(True, 5, 0, "x", False), PreflightLimits()).passed
    pending = BootStatus("application", "B", "2.0.0", "test", 1, 1)
    assert not check_bank(pending).passed
    assert check_bank(BootStatus("application", "A", "1.0.0", "confirmed", 0, 1)).passed
    stuck = BootStatus("bootloader", "", "", "none", 3, 1)
    assert not check_bank(stuck).passed and check_bank(stuck, recovery=True).passed


def test_overrides_only_for_non_safety_checks_with_reason() -> None:
    validate_overrides({"link-quality": "spare cable"})
    for bad in ({"temperature": "x"}, {"link-quality": " "}, {"nonsense": "x"}):
        with pytest.raises(OverrideRefusedError):
            validate_overrides(bad)


def test_profile_defaults_are_the_seed_and_toml_overrides(tmp_path: Path) -> None:
    default = load_profile(None)
    assert (default.preflight.soc_min_pct, default.preflight.soc_max_pct) == (20.0, 80.0)
    assert (default.preflight.temp_min_c, default.preflight.temp_max_c) == (0.0, 45.0)
    path = tmp_path / "p.toml"
    path.write_text(
        '[product]\nname = "X"\n[preflight]\nsoc_min_pct = 30\ntemp_max_c = 40.5\n'
        '[[confirmation]]\nid = "a"\ntext = "A"\n'
    )
    profile = load_profile(path)
    assert profile.preflight.soc_min_pct == 30.0 and profile.preflight.temp_max_c == 40.5
    assert profile.transfer.soc_min_pct == 30.0  # the transfer window follows preflight
    assert [c.id for c in profile.confirmations] == ["a"]
    for bad in ("[preflight]\nsoc_min_pct = 90\n", "[preflight]\nbogus = 1\n", "[x]\n", "= ="):
        path.write_text(bad)
        with pytest.raises(ProfileInvalidError):
            load_profile(path)


@pytest.mark.req("IEC62443-CR3.9", "R156-UPDATE-RECORD")
def test_audit_chain_detects_change_and_removal(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for n in range(3):
        log.append("update", {"device": {"serial": f"S{n}"}, "result": "updated"}, who="t")
    records = verify_audit_log(log.path)
    assert [r["seq"] for r in records] == [0, 1, 2]
    lines = log.path.read_text().splitlines()
    changed = json.loads(lines[1])
    changed["result"] = "failed"
    log.path.write_text("\n".join([lines[0], json.dumps(changed), lines[2]]) + "\n")
    with pytest.raises(AuditLogTamperedError, match="changed"):
        verify_audit_log(log.path)
    log.path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    with pytest.raises(AuditLogTamperedError, match="follow"):
        verify_audit_log(log.path)


def _snapshot(overcurrent: float = 200.0) -> ConfigSnapshot:
    config = {"overcurrent_a": overcurrent, "can_bitrate_bps": 500_000}
    calibration = {"cell_gain": [1.0, 0.999]}
    return ConfigSnapshot(1, config, calibration, snapshot_checksum(config, calibration))


@pytest.mark.req("SEED-CONFIG-BACKUP")
def test_backup_roundtrip_diff_and_damage(tmp_path: Path) -> None:
    identity = DeviceIdentity("V", "M", "C", "S1", "2.1.0", "1.0.0", 1, "A")
    backup = write_backup(tmp_path, identity, _snapshot())
    assert backup.path is not None and "S1" in backup.path.name
    assert load_backup(backup.path).snapshot.checksum == _snapshot().checksum
    assert diff_snapshots(_snapshot(), _snapshot()) == []
    changes = diff_snapshots(_snapshot(), _snapshot(150.0))
    assert [(c.path, c.before, c.after) for c in changes] == [
        ("config.overcurrent_a", 200.0, 150.0)
    ]
    text = backup.path.read_text().replace("200.0", "250.0")
    backup.path.write_text(text)
    with pytest.raises(BackupInvalidError):
        load_backup(backup.path)


def test_link_names() -> None:
    links = parse_links(can="udp_multicast:239.74.163.2", nodes=[3, 4])
    assert links == [
        CanLink("udp_multicast", "239.74.163.2", 3),
        CanLink("udp_multicast", "239.74.163.2", 4),
    ]
    assert parse_links(serial="/dev/ttyUSB0", units=[5], baud=115_200) == [
        SerialLink("/dev/ttyUSB0", 5, 115_200)
    ]
    for bad in (
        {"can": "udp_multicast", "nodes": [1]},
        {"can": "x:y"},
        {"can": "x:y", "nodes": [0]},
        {"serial": "/dev/ttyUSB0", "units": [1], "baud": 12345},
        {"can": "x:y", "nodes": [1], "serial": "p"},
        {},
    ):
        with pytest.raises(LinkSpecInvalidError):
            parse_links(**bad)  # type: ignore[arg-type]


def test_two_backups_in_one_second_never_overwrite_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # File names have one-second resolution; the second backup must not replace the first.
    frozen = time.gmtime(1_790_000_000)
    monkeypatch.setattr(time, "gmtime", lambda *_: frozen)
    identity = DeviceIdentity("V", "M", "C", "S1", "2.1.0", "1.0.0", 1, "A")
    first = write_backup(tmp_path, identity, _snapshot())
    second = write_backup(tmp_path, identity, _snapshot(151.0))
    assert first.path is not None and second.path is not None
    assert first.path != second.path
    assert load_backup(first.path).snapshot.checksum == _snapshot().checksum
    assert load_backup(second.path).snapshot.checksum == _snapshot(151.0).checksum
    assert not list(tmp_path.glob(".backup-*"))  # no temp file left behind
