"""A BMS without the SMP vendor TELEMETRY: the preflight values come from its CAN broadcast,
decoded with the DBC file (cantools), and say where they came from."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.smp import SmpLink, open_smp_session
from bmsfw.protocol.smp.dbc import EXAMPLE_DBC, EXAMPLE_MAP, DbcTelemetrySource, decode_telemetry
from bmsfw.protocol.smp.errors import DbcFileError, SmpNoResponseError, SmpRefusedError
from bmsfw.protocol.smp.link import TelemetrySpecError, parse_telemetry_spec
from bmsfw.sim.lab import unique_multicast_link
from bmsfw.update.connect import parse_links
from bmsfw.update.errors import ProfileInvalidError
from bmsfw.update.profile import load_profile
from cli_support import run_bmsfw

from .conftest import SmpBench, run_smp_update, start_device


def test_decode_maps_signals_and_names_their_source() -> None:
    values = {signal: 0.0 for signal in EXAMPLE_MAP.signals()}
    values.update({"BMS_Status.SOC": 55.5, "BMS_Status.Overtemperature": 1.0})
    values.update({s: 3.3 for s in EXAMPLE_MAP.cell_voltages_v})
    decoded = decode_telemetry(values, EXAMPLE_MAP)
    assert decoded.telemetry.soc_pct == 55.5
    assert decoded.telemetry.faults == ("overtemperature",)
    assert decoded.telemetry.cell_voltages_v == (3.3,) * 16
    assert decoded.sources["soc_pct"] == "dbc:BMS_Status.SOC"
    assert decoded.sources["cell_voltages_v"].startswith("dbc:BMS_Cells_1_4,BMS_Cells_5_8")
    with pytest.raises(KeyError):
        decode_telemetry({"BMS_Status.SOC": 1.0}, EXAMPLE_MAP)


def test_update_with_telemetry_from_the_can_broadcast(
    device_dir: Path, smp_bench: SmpBench, tester: TesterCredentials, tmp_path: Path
) -> None:
    can_link = unique_multicast_link()
    process = start_device(
        device_dir,
        udp=True,
        require_auth=True,
        extra=["--no-vendor-telemetry", "--can-broadcast", can_link],
    )
    try:
        link = f"udp:{process.info['udp']}"
        with open_smp_session(link) as plain:
            with pytest.raises(SmpRefusedError) as refused:
                plain.read_telemetry()  # no vendor TELEMETRY on this BMS
            assert refused.value.rc == 8
        source = DbcTelemetrySource(EXAMPLE_DBC, can_link)
        with open_smp_session(link, telemetry_source=source) as session:
            telemetry = session.read_telemetry()
            assert 20 <= telemetry.soc_pct <= 80 and len(telemetry.cell_voltages_v) == 16
            assert telemetry.sources["soc_pct"] == "dbc:BMS_Status.SOC"
            report = run_smp_update(session, smp_bench, "2.0.0", tmp_path, tester)
            assert report.outcome == "updated", report.error
        # the report says where each preflight value came from
        details = {check.name: check.detail for check in report.preflight}
        assert "source dbc:BMS_Status.SOC" in details["state-of-charge"]
        assert "source dbc:BMS_Temperatures" in details["temperature"]
        assert "source dbc:BMS_Cells_1_4" in details["cell-spread"]
    finally:
        process.stop()


# --- choosing the source: --telemetry and the profile's [telemetry] ---------------------


@pytest.mark.parametrize(
    ("text", "dbc", "can"),
    [
        ("dbc:vendor.dbc@socketcan:can0", "vendor.dbc", "socketcan:can0"),
        (
            "dbc:/opt/a@b.dbc@udp_multicast:239.74.163.9",
            "/opt/a@b.dbc",
            "udp_multicast:239.74.163.9",
        ),
    ],
)
def test_telemetry_spec(text: str, dbc: str, can: str) -> None:
    spec = parse_telemetry_spec(text)
    assert spec is not None and (str(spec.dbc_path), spec.can_link) == (dbc, can)
    assert parse_telemetry_spec("smp") is None


@pytest.mark.parametrize(
    "text", ["vendor.dbc", "dbc:vendor.dbc", "dbc:@socketcan:can0", "csv:x@a:b"]
)
def test_malformed_telemetry_spec_is_e317(text: str) -> None:
    with pytest.raises(TelemetrySpecError) as bad:
        parse_telemetry_spec(text)
    assert bad.value.code == "BMSFW-E317"


def test_telemetry_only_with_an_smp_link() -> None:
    spec = parse_telemetry_spec(f"dbc:{EXAMPLE_DBC}@virtual:x")
    with pytest.raises(TelemetrySpecError):
        parse_links(can="virtual:x", nodes=[1], telemetry=spec)
    (link,) = parse_links(smp="udp:127.0.0.1", telemetry=spec)
    assert isinstance(link, SmpLink) and link.telemetry == spec


def test_profile_names_the_dbc_relative_to_itself_and_maps_its_signals(tmp_path: Path) -> None:
    (tmp_path / "vendor.dbc").write_bytes(EXAMPLE_DBC.read_bytes())
    profile_path = tmp_path / "packco.toml"
    cells = ", ".join(f'"{s}"' for s in EXAMPLE_MAP.cell_voltages_v)
    profile_path.write_text(
        f"""
[telemetry]
source = "dbc:vendor.dbc@virtual:packco"
window_s = 0.5

[telemetry.signals]
soc_pct = "BMS_Status.SOC"
pack_voltage_v = "BMS_Status.PackVoltage"
pack_current_a = "BMS_Status.PackCurrent"
supply_voltage_v = "BMS_Status.SupplyVoltage"
cell_voltages_v = [{cells}]
temperatures_c = ["BMS_Temperatures.T1", "BMS_Temperatures.T2"]
faults = {{ "BMS_Status.Overtemperature" = "overtemperature" }}
"""
    )
    spec = load_profile(profile_path).telemetry
    assert spec is not None
    assert spec.dbc_path == tmp_path / "vendor.dbc" and spec.can_link == "virtual:packco"
    assert spec.window_s == 0.5 and spec.mapping.temperatures_c[1] == "BMS_Temperatures.T2"
    assert spec.mapping.faults == (("BMS_Status.Overtemperature", "overtemperature"),)
    profile_path.write_text('[telemetry]\nsource = "dbc:vendor.dbc"\n')
    with pytest.raises(ProfileInvalidError):
        load_profile(profile_path)
    profile_path.write_text('[telemetry]\nsource = "smp"\n')
    assert load_profile(profile_path).telemetry is None


def test_dbc_source_on_a_python_can_virtual_bus(tmp_path: Path) -> None:
    """The vendor's frames, encoded from the real DBC with cantools, on a python-can
    ``virtual`` bus; the source decodes them and names each value's signal."""
    import can
    import cantools

    database = cantools.database.load_file(str(EXAMPLE_DBC))
    assert isinstance(database, cantools.database.can.Database)
    channel = f"bmsfw-test-{os.getpid()}"
    values = {s: 3.3 if s.startswith("BMS_Cells") else 0.0 for s in EXAMPLE_MAP.signals()}
    values.update({"BMS_Status.SOC": 61.5, "BMS_Status.SupplyVoltage": 24.0})
    values.update({"BMS_Status.PackVoltage": 52.8, "BMS_Temperatures.T1": 21.5})
    values["BMS_Status.Overcurrent"] = 1.0
    frames = []
    for message in database.messages:
        signals = {k.split(".")[1]: v for k, v in values.items() if k.split(".")[0] == message.name}
        frames.append(
            can.Message(
                arbitration_id=message.frame_id, data=message.encode(signals), is_extended_id=False
            )
        )
    stop = threading.Event()

    def broadcast() -> None:
        with can.Bus(interface="virtual", channel=channel) as bus:
            while not stop.wait(0.02):
                for frame in frames:
                    bus.send(frame)

    sender = threading.Thread(target=broadcast, daemon=True)
    sender.start()
    try:
        decoded = DbcTelemetrySource(EXAMPLE_DBC, f"virtual:{channel}", window_s=2.0).read()
    finally:
        stop.set()
        sender.join(2)
    assert decoded.telemetry.soc_pct == pytest.approx(61.5, abs=0.5)
    assert decoded.telemetry.supply_voltage_v == pytest.approx(24.0, abs=0.2)
    assert decoded.telemetry.cell_voltages_v == pytest.approx((3.3,) * 16, abs=0.001)
    assert decoded.telemetry.faults == ("overcurrent",)
    assert decoded.sources["supply_voltage_v"] == "dbc:BMS_Status.SupplyVoltage"
    # nobody broadcasting: E390 within the window, not a hang
    with pytest.raises(SmpNoResponseError):
        DbcTelemetrySource(EXAMPLE_DBC, f"virtual:{channel}-silent", window_s=0.2).read()


@pytest.mark.parametrize("content", [b"not a dbc at all \x00\xff", None])
def test_unusable_dbc_file_is_e318(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "vendor.dbc"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DbcFileError) as bad:
        DbcTelemetrySource(path, "virtual:x")
    assert bad.value.code == "BMSFW-E318"


def test_cli_preflight_reads_the_broadcast_named_by_telemetry_or_profile(
    device_dir: Path, tmp_path: Path
) -> None:
    can_link = unique_multicast_link()
    process = start_device(
        device_dir, udp=True, extra=["--no-vendor-telemetry", "--can-broadcast", can_link]
    )
    try:
        link = ["--smp", f"udp:{process.info['udp']}"]
        profile = tmp_path / "fast.toml"
        profile.write_text("[preflight]\nsupply_window_s = 0.2\nsupply_samples = 3\n")
        flag = run_bmsfw(
            "preflight", *link, "--profile", str(profile),
            "--telemetry", f"dbc:{EXAMPLE_DBC}@{can_link}", "--json",
        )  # fmt: skip
        assert flag.returncode in (0, 6), flag.stderr
        checks = {c["name"]: c for c in json.loads(flag.stdout)[0]["checks"]}
        assert "source dbc:BMS_Status.SOC" in checks["state-of-charge"]["detail"]
        assert "source dbc:BMS_Status.SupplyVoltage" in checks["supply-stability"]["detail"]

        (tmp_path / "vendor.dbc").write_bytes(EXAMPLE_DBC.read_bytes())
        profile.write_text(
            "[preflight]\nsupply_window_s = 0.2\nsupply_samples = 3\n"
            f'[telemetry]\nsource = "dbc:vendor.dbc@{can_link}"\n'
        )
        by_profile = run_bmsfw("preflight", *link, "--profile", str(profile), "--json")
        checks = {c["name"]: c for c in json.loads(by_profile.stdout)[0]["checks"]}
        assert "source dbc:BMS_Temperatures" in checks["temperature"]["detail"]

        # the vendor group would refuse (ENOTSUP): "--telemetry smp" overrides the profile
        smp = run_bmsfw("preflight", *link, "--profile", str(profile), "--telemetry", "smp")
        assert smp.returncode != 0 and "BMSFW-E393" in smp.stderr
        bad = run_bmsfw("preflight", *link, "--telemetry", "vendor.dbc")
        assert bad.returncode != 0 and "BMSFW-E317" in bad.stderr
        assert "Traceback" not in bad.stderr + smp.stderr
    finally:
        process.stop()
