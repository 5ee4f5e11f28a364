"""A BMS without the SMP vendor TELEMETRY: the preflight values come from its CAN broadcast,
decoded with the DBC file (cantools), and say where they came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.smp import open_smp_session
from bmsfw.protocol.smp.dbc import EXAMPLE_DBC, EXAMPLE_MAP, DbcTelemetrySource, decode_telemetry
from bmsfw.protocol.smp.errors import SmpRefusedError
from bmsfw.sim.lab import unique_multicast_link

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
        details = {check["name"]: check["detail"] for check in report.preflight}
        assert "source dbc:BMS_Status.SOC" in details["state-of-charge"]
        assert "source dbc:BMS_Temperatures" in details["temperature"]
        assert "source dbc:BMS_Cells_1_4" in details["cell-spread"]
    finally:
        process.stop()
