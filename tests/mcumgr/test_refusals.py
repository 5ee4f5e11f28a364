"""What the SMP BMS refuses, with the exact error, and that nothing stored changed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.smp import open_smp_session
from bmsfw.protocol.smp.errors import SmpAuthRejectedError, SmpRefusedError
from bmsfw.sim import lab
from bmsfw.sim.config import snapshot_checksum

from .conftest import SmpBench, start_device


def test_without_tester_authentication_nothing_is_written(
    device_dir: Path, smp_bench: SmpBench, tester: TesterCredentials
) -> None:
    process = start_device(device_dir, udp=True, require_auth=True)
    try:
        with open_smp_session(f"udp:{process.info['udp']}") as session:
            before = session.read_config()
            image = smp_bench.releases["2.0.0"].image
            with pytest.raises(SmpRefusedError) as refused:
                list(session.write(image))
            assert refused.value.code == "BMSFW-E393"
            assert refused.value.device_code == "BMSFW-E349" and refused.value.rc == 11
            config = {**before.config, "capacity_ah": 1.0}
            changed = dataclasses.replace(
                before, config=config, checksum=snapshot_checksum(config, before.calibration)
            )
            with pytest.raises(SmpRefusedError) as refused_config:
                session.write_config(changed)
            assert refused_config.value.device_code == "BMSFW-E349"
            # nothing stored changed: no upload staged, configuration as before
            assert session.transfer_state().contiguous_bytes == 0
            assert session.read_config() == before

            # a certificate the BMS's root did not issue is rejected (E394)
            with pytest.raises(SmpAuthRejectedError):
                session.authenticate(lab.tester_for(lab.lab_pki()))
            session.authenticate(tester)
            # a document whose checksum does not match is refused and changes nothing
            with pytest.raises(SmpRefusedError) as bad:
                session.write_config(dataclasses.replace(changed, checksum="00" * 32))
            assert bad.value.device_code == "BMSFW-E215"
            assert session.read_config() == before
            session.write_config(changed)
            assert session.read_config().config["capacity_ah"] == 1.0
    finally:
        process.stop()
