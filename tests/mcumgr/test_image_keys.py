"""Over SMP the BMS reports its fused image key in the vendor group's IDENTITY, and the
update refuses a release signed by another image key before the upload (BMSFW-E134)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bmsfw.package import TrustAnchors, generate_key, key_hash
from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.smp import open_smp_session, parse_smp_link
from bmsfw.sim.lab import signed_package
from bmsfw.update.pipeline import run_update

from .conftest import FAST_PROFILE, SPEC, SmpBench, start_device, update_options


def test_identity_names_the_fused_key_and_a_foreign_one_is_refused(
    device_dir: Path, smp_bench: SmpBench, tester: TesterCredentials, tmp_path: Path
) -> None:
    pki = smp_bench.pki
    other = dataclasses.replace(pki, image_signing_key=generate_key(pki.algorithm))
    foreign = signed_package(other, "2.0.0", 2, spec=SPEC, size=20_000)
    # the manifest's root only: the image key is judged against what the BMS reports
    trust = TrustAnchors.from_key_hashes([key_hash(pki.root_key)])
    process = start_device(device_dir, serial=True, require_auth=True)
    try:
        link = parse_smp_link(f"serial:{process.info['serial_port']}")
        with open_smp_session(link) as session:
            assert session.identify().image_key_hashes == (key_hash(pki.image_signing_key).hex(),)
            before = (device_dir / "flash.bin").read_bytes()
            report = run_update(
                session, foreign, trust, update_options(tmp_path, tester), profile=FAST_PROFILE
            )
            assert report.error.code == "BMSFW-E134", report.error
            assert report.decisions.start == "refuse-image-key"
            assert (device_dir / "flash.bin").read_bytes() == before
    finally:
        process.stop()
