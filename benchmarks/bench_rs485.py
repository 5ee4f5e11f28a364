"""RS485 / Modbus RTU firmware transfer over throttled simulated lines (8E1).

For 115200 and 921600 baud, a 256 KiB image:

* single node, updated by the procedure ``bmsfw update`` runs (``run_updates``):
  the transfer phase's addressed function-0x10 writes of 123 registers into the
  transfer window; wire time (characters + t3.5 silences + turnaround, from
  the bus's own counters) and wall time; payload rate as a percentage of the raw
  character rate (baud / 11 for 8E1);
* a 16-node string updated by what ``bmsfw update --broadcast`` runs
  (``run_string_update``: every node's whole procedure, the image once to unit 0);
* the whole update (identify, preflight, backup .. confirm, report) of 16 nodes by
  broadcast against one node, and against 16 × one node (one by one, extrapolated
  from the measured single-node update, not run: it would take 16 times as long).

Each at 115200 8E1 with the Modbus spec's t3.5 (1.75 ms above 19,200 baud), and at
921600 8E1 with it and with t3.5 = 3.5 characters (``frame_gap="chars"``).

Run: ``.venv/bin/python -m benchmarks.bench_rs485 [--quick] [--baud=N]`` (``--quick``:
921600 with 3.5-character gaps only, 64 KiB image, 4 nodes).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from bmsfw.package import TrustAnchors, VendorPki
from bmsfw.protocol.modbus import open_modbus_bus
from bmsfw.protocol.session import TesterCredentials
from bmsfw.sim import SimClock, VirtualBms
from bmsfw.sim.flash import FlashSpec
from bmsfw.sim.lab import LabRelease, lab_pki, provision_nodes, signed_release, tester_for
from bmsfw.sim.sim_rs485 import Rs485SimConfig, Rs485Simulator, node_state_dir
from bmsfw.sim.spec import DeviceSpec
from bmsfw.update.events import Event, StepFinished, TransferProgress
from bmsfw.update.pipeline import UpdateOptions, run_updates
from bmsfw.update.profile import DEFAULT_CONFIRMATIONS
from bmsfw.update.string import StringPolicy, run_string_update

KIB = 1024
SPEC = DeviceSpec(flash=FlashSpec.small(bank_size=320 * KIB, sector_size=4 * KIB))
TIME_SCALE = 50.0
CHAR_BITS_8E1 = 11
# (baud, Modbus t3.5 setting): see bmsfw.link.wire.FRAME_GAPS.
CASES = ((115_200, "spec"), (921_600, "spec"), (921_600, "chars"))
# The simulated string: 4 BMS behind each simulated transceiver tap (one pymodbus
# decoder for them), served by 2 processes. 16 decoders in one process miss frames at
# 921,600 baud (the simulator's limit, not the protocol's): docs/modbus.md.
NODES_PER_PORT = 4
NODE_PROCESSES = 2


def make_release(pki: VendorPki, version: str, counter: int, size: int) -> LabRelease:
    return signed_release(pki, version, counter, spec=SPEC, size=size)


def provision_string(
    state: Path, pki: VendorPki, image: bytes, units: range, *, baud: int, frame_gap: str
) -> None:
    """Nodes set to the line the host uses (the preflight's link test checks both)."""
    provision_nodes(state, pki, image, units, spec=SPEC)
    for unit in units:
        bms = VirtualBms(node_state_dir(state, unit), clock=SimClock())
        try:
            bms.wait_boot()
            gap = 1 if frame_gap == "chars" else 0
            bms.write_config(replace(bms.config(), rs485_baud=baud, rs485_char_timed_gap=gap))
        finally:
            bms.close()


class _Marks:
    """Times and bus counters at the procedure's events (the sink of the update)."""

    def __init__(self, sim: Rs485Simulator) -> None:
        self.sim = sim
        self.at: dict[str, tuple[float, Any]] = {}

    def _mark(self, name: str, *, first: bool = False) -> None:
        if first and name in self.at:
            return
        assert self.sim.bus is not None
        self.at[name] = (time.perf_counter(), self.sim.bus.stats())

    def __call__(self, event: Event) -> None:
        if isinstance(event, TransferProgress) and event.offset > event.resumed_from:
            self._mark("sending", first=True)
        elif isinstance(event, StepFinished) and event.step == "transfer":
            self._mark("transferred")
        elif isinstance(event, StepFinished) and event.step == "device-verify":
            self._mark("verified")

    def time(self, name: str) -> float:
        return float(self.at[name][0])

    def wire_tx_s(self, name: str) -> float:
        return float(self.at[name][1].wire_time_tx_s)


def run(
    baud: int,
    nodes: int,
    image_size: int,
    pki: VendorPki,
    tester: TesterCredentials,
    *,
    frame_gap: str = "spec",
    nodes_per_port: int = 1,
    node_processes: int = 0,
) -> dict[str, float]:
    """One node by ``bmsfw update``'s procedure, then ``nodes`` by ``--broadcast``'s."""
    v1 = make_release(pki, "1.0.0", 1, 16 * KIB)
    v2 = make_release(pki, "2.0.0", 2, image_size)
    image = v2.image
    raw_rate = baud / CHAR_BITS_8E1
    out: dict[str, float] = {"baud": baud, "image": len(image)}
    trust = TrustAnchors.from_root_certificate(
        pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    )
    with tempfile.TemporaryDirectory() as tmp:
        options = UpdateOptions(
            backup_dir=Path(tmp) / "backups",
            credentials=tester,
            confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
            audit_log=Path(tmp) / "backups" / "audit.jsonl",
            report_dir=Path(tmp) / "backups" / "reports",
            operator="bench",
        )

        def string(name: str, count: int) -> Rs485SimConfig:
            provision_string(Path(tmp) / name, pki, v1.image, range(1, count + 1), baud, frame_gap)
            return Rs485SimConfig(
                nodes=tuple(range(1, count + 1)),
                state_dir=str(Path(tmp) / name),
                baud_bps=baud,
                throttle=True,
                time_scale=TIME_SCALE,
                frame_gap=frame_gap,
                nodes_per_port=nodes_per_port,
                node_processes=node_processes,
            )

        with (
            Rs485Simulator(string("one", 1)) as sim,
            open_modbus_bus(sim.host_path, baud, frame_gap=frame_gap) as bus,
        ):
            marks = _Marks(sim)
            t0 = time.perf_counter()
            (report,) = run_updates([bus.session(1)], v2.package, trust, options, sink=marks)
            t_end = time.perf_counter()
        assert report.outcome == "updated", report.error
        wire = marks.wire_tx_s("transferred") - marks.wire_tx_s("sending")
        wall = marks.time("transferred") - marks.time("sending")
        out["single_wire_s"] = wire
        out["single_wall_s"] = wall
        out["single_wire_pct"] = 100 * len(image) / (wire * raw_rate)
        out["single_wall_pct"] = 100 * len(image) / (wall * raw_rate)
        out["single_update_s"] = t_end - t0

        with (
            Rs485Simulator(string("many", nodes)) as sim,
            open_modbus_bus(sim.host_path, baud, frame_gap=frame_gap) as bus,
        ):
            marks = _Marks(sim)
            t0 = time.perf_counter()
            result = run_string_update(
                [bus.session(u) for u in range(1, nodes + 1)],
                v2.package,
                trust,
                options,
                policy=StringPolicy(activation="all"),
                sink=marks,
            )
            t_all = time.perf_counter() - t0
        assert result.ok and result.transfer["mode"] == "broadcast", result.summary()
        # The bus counts a t3.5 silence only where the line really went idle; a
        # talker streaming broadcast frames back to back never idles it, so the
        # wire time of the phase is computed from the frames sent (chars + t3.5).
        t = result.transfer
        out["bcast_link_s"] = marks.wire_tx_s("transferred") - marks.wire_tx_s("sending")
        out["bcast_wire_s"] = t["wire_time_s"]
        out["bcast_wall_s"] = t["duration_s"]
        out["bcast_wire_pct"] = 100 * len(image) / (t["wire_time_s"] * raw_rate)
        out["bcast_wall_pct"] = 100 * len(image) / (t["duration_s"] * raw_rate)
        out["string_update_s"] = t_all
        out["repair_frames"] = t["repair_frames"]
        out["phase_prepare_s"] = marks.time("sending") - t0
        out["phase_broadcast_s"] = marks.time("transferred") - marks.time("sending")
        out["phase_verify_s"] = marks.time("verified") - marks.time("transferred")
        out["phase_activate_s"] = t0 + t_all - marks.time("verified")
    return out


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    quick = "--quick" in argv
    cases = [(921_600, "chars")] if quick else [*CASES]
    for arg in argv:
        if arg.startswith("--baud="):
            baud = int(arg.split("=", 1)[1])
            cases = [c for c in CASES if c[0] == baud] or [(baud, "spec")]
    image_size = (64 if quick else 256) * KIB
    nodes = 4 if quick else 16
    pki = lab_pki(backdate_s=0)
    tester = tester_for(pki)
    rows = [
        run(
            baud,
            nodes,
            image_size,
            pki,
            tester,
            frame_gap=gap,
            nodes_per_port=NODES_PER_PORT,
            node_processes=NODE_PROCESSES,
        )
        for baud, gap in cases
    ]
    print(f"\nModbus RTU 8E1, throttled simulated RS485, image {image_size // KIB} KiB")
    print(
        f"t3.5: 'spec' = 1.75 ms above 19,200 baud (Modbus spec recommendation), "
        f"'chars' = 3.5 characters; string: {nodes} nodes, {NODES_PER_PORT} per simulated "
        f"tap, served by {NODE_PROCESSES} processes"
    )
    head = "".join(f"{f'{b} {g}':>16}" for b, g in cases)

    def line(label: str, key: str, fmt: str) -> None:
        print(f"{label:36}" + "".join(f"{format(r[key], fmt):>16}" for r in rows))

    print(f"{'':36}{head}")
    line("single node: wire time s", "single_wire_s", ".2f")
    line("single node: wall time s", "single_wall_s", ".2f")
    line("single node: payload % raw (wire)", "single_wire_pct", ".1f")
    line("single node: payload % raw (wall)", "single_wall_pct", ".1f")
    line("broadcast: wire time s (model)", "bcast_wire_s", ".2f")
    line("broadcast: link-counted s", "bcast_link_s", ".2f")
    line("broadcast: wall time s", "bcast_wall_s", ".2f")
    line("broadcast: payload % raw (wire)", "bcast_wire_pct", ".1f")
    line("broadcast: payload % raw (wall)", "bcast_wall_pct", ".1f")
    line("broadcast: repair frames", "repair_frames", ".0f")
    print()
    print(f"whole update, {nodes} nodes (prepare .. confirm), wall time:")
    print(f"{'':36}{head}")
    line("one node s", "single_update_s", ".1f")
    line(f"{nodes} by broadcast s", "string_update_s", ".1f")
    line("  identify/preflight/backup/prepare s", "phase_prepare_s", ".1f")
    line("  broadcast s", "phase_broadcast_s", ".1f")
    line("  repair check/verify/activate s", "phase_verify_s", ".1f")
    line("  reset/boot/self-test/confirm s", "phase_activate_s", ".1f")
    for r in rows:
        r["ratio"] = r["string_update_s"] / r["single_update_s"]
        r["one_by_one"] = nodes * r["single_update_s"]
    line(f"{nodes} one by one s (= {nodes} × one)", "one_by_one", ".1f")
    line("broadcast / one node", "ratio", ".2f")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
