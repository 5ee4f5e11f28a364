"""A release signed by a key the BMS did not fuse: refused before the transfer, or after it.

One BMS on a throttled simulated RS485 line (Modbus RTU 8E1, 115200 baud), running
1.0.0; the release 2.0.0 is signed by the vendor's manifest signer but its image by
another image key. ``bmsfw update``'s procedure (``run_updates``) against:

* the BMS reporting its fused image keys (input registers ``image_key_*``): the
  decision core refuses with BMSFW-E134 at the verify-package step;
* the same BMS with the key registers hidden (what every BMS did before them, and
  what one without them still does): the whole image goes over the line and the
  BMS's secure boot refuses it at device-verify (BMSFW-E124).

For each: wall time to the refusal, bytes the host put on the line, the failed step.
And the price of asking: the mean time of one read of the 65 key registers, against
the whole identify step.

Run: ``.venv/bin/python -m benchmarks.bench_image_key [--quick]`` (``--quick``: 64 KiB).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from bmsfw.package import TrustAnchors, generate_key
from bmsfw.protocol.modbus import open_modbus_bus
from bmsfw.protocol.modbus.registers import INPUT
from bmsfw.protocol.session import DeviceIdentity
from bmsfw.sim.flash import FlashSpec
from bmsfw.sim.lab import lab_pki, provision_nodes, signed_package, signed_release, tester_for
from bmsfw.sim.sim_rs485 import Rs485SimConfig, Rs485Simulator
from bmsfw.sim.spec import DeviceSpec
from bmsfw.update.pipeline import UpdateOptions, run_updates
from bmsfw.update.profile import DEFAULT_CONFIRMATIONS

KIB = 1024
BAUD = 115_200
SPEC = DeviceSpec(flash=FlashSpec.small(bank_size=320 * KIB, sector_size=4 * KIB))
TIME_SCALE = 50.0
KEY_READS = 20


class _KeysHidden:
    """The session of a BMS without the image-key registers (everything else passes)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def identify(self) -> DeviceIdentity:
        return dataclasses.replace(self._session.identify(), image_key_hashes=())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def run(image_size: int, *, reported: bool) -> dict[str, Any]:
    pki = lab_pki(backdate_s=0)
    v1 = signed_release(pki, "1.0.0", 1, spec=SPEC, size=16 * KIB)
    other = dataclasses.replace(pki, image_signing_key=generate_key(pki.algorithm))
    foreign = signed_package(other, "2.0.0", 2, spec=SPEC, size=image_size)
    trust = TrustAnchors.from_root_certificate(
        pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    )
    with tempfile.TemporaryDirectory() as tmp:
        provision_nodes(Path(tmp) / "bms", pki, v1.image, (1,), spec=SPEC)
        options = UpdateOptions(
            backup_dir=Path(tmp) / "backups",
            credentials=tester_for(pki),
            confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
            audit_log=Path(tmp) / "backups" / "audit.jsonl",
            report_dir=Path(tmp) / "backups" / "reports",
            operator="bench",
        )
        config = Rs485SimConfig(
            nodes=(1,),
            state_dir=str(Path(tmp) / "bms"),
            baud_bps=BAUD,
            throttle=True,
            time_scale=TIME_SCALE,
        )
        with Rs485Simulator(config) as sim, open_modbus_bus(sim.host_path, BAUD) as bus:
            session = bus.session(1)
            assert sim.bus is not None
            t0 = time.perf_counter()
            identity = session.identify()
            identify_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(KEY_READS):
                bus.read_input(
                    1, INPUT.IMAGE_KEY_COUNT, INPUT.IMAGE_KEY_HASHES_END - INPUT.IMAGE_KEY_COUNT
                )
            key_read_s = (time.perf_counter() - t0) / KEY_READS
            before = sim.bus.stats().bytes_tx
            t0 = time.perf_counter()
            target = session if reported else _KeysHidden(session)
            (report,) = run_updates([target], foreign, trust, options)  # type: ignore[list-item]
            elapsed = time.perf_counter() - t0
            line_bytes = sim.bus.stats().bytes_tx - before
    assert report.outcome != "updated", report.outcome
    assert identity.image_key_hashes, "the simulated BMS reports its key"
    return {
        "case": "keys reported" if reported else "keys not reported",
        "code": report.error.code if report.error else "",
        "step": report.failed_step,
        "seconds": elapsed,
        "line_kib": line_bytes / KIB,
        "identify_s": identify_s,
        "key_read_s": key_read_s,
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    size = (64 if "--quick" in argv else 256) * KIB
    rows = [run(size, reported=True), run(size, reported=False)]
    print(f"\nforeign image key, Modbus RTU 8E1 {BAUD} baud throttled, image {size // KIB} KiB")
    print(f"{'':22}{'refused with':>14}{'at step':>16}{'to refusal s':>14}{'on line KiB':>13}")
    for r in rows:
        print(
            f"{r['case']:22}{r['code']:>14}{r['step']:>16}{r['seconds']:>14.1f}"
            f"{r['line_kib']:>13.1f}"
        )
    r = rows[0]
    print(
        f"\nprice of asking: one read of the 65 key registers {1000 * r['key_read_s']:.1f} ms "
        f"(mean of {KEY_READS}); a whole identify (identity objects + key registers) "
        f"{1000 * r['identify_s']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
