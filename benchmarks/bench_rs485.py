"""RS485 / Modbus RTU firmware transfer over throttled simulated lines (8E1).

For 115200 and 921600 baud, a 256 KiB image:

* single node: addressed function-0x10 writes of 123 registers into the
  transfer window; wire time (characters + t3.5 silences + turnaround, from
  the bus's own counters) and wall time; payload rate as a percentage of the raw
  character rate (baud / 11 for 8E1);
* broadcast phase of a 16-node string: the image once to unit 0, no replies;
* the whole update (prepare .. confirm) of 16 nodes by broadcast against one
  node, and against 16 × one node (one by one, extrapolated from the measured
  single-node update, not run: it would take 16 times as long).

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
from pathlib import Path

from bmsfw.device.flash import FlashSpec
from bmsfw.device.lab import lab_pki, provision_nodes, signed_release, tester_for
from bmsfw.device.sim_rs485 import Rs485SimConfig, Rs485Simulator
from bmsfw.device.spec import DeviceSpec
from bmsfw.package import VendorPki
from bmsfw.protocol.modbus import BroadcastPolicy, broadcast_update, open_modbus_bus

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


def make_release(pki: VendorPki, version: str, counter: int, size: int) -> tuple[bytes, bytes]:
    release = signed_release(pki, version, counter, spec=SPEC, size=size)
    return release.header, release.image


def provision_string(state: Path, pki: VendorPki, image: bytes, units: range) -> None:
    provision_nodes(state, pki, image, units, spec=SPEC)


def run(
    baud: int,
    nodes: int,
    image_size: int,
    pki: VendorPki,
    tester: object,
    *,
    frame_gap: str = "spec",
    nodes_per_port: int = 1,
    node_processes: int = 0,
) -> dict[str, float]:
    _, v1_image = make_release(pki, "1.0.0", 1, 16 * KIB)
    header, image = make_release(pki, "2.0.0", 2, image_size)
    raw_rate = baud / CHAR_BITS_8E1
    out: dict[str, float] = {"baud": baud, "image": len(image)}
    with tempfile.TemporaryDirectory() as tmp:

        def string(name: str, count: int) -> Rs485SimConfig:
            provision_string(Path(tmp) / name, pki, v1_image, range(1, count + 1))
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

        config = string("one", 1)
        with (
            Rs485Simulator(config) as sim,
            open_modbus_bus(sim.host_path, baud, frame_gap=frame_gap) as bus,
        ):
            assert sim.bus is not None
            session = bus.session(1)
            t0 = time.perf_counter()
            session.authenticate(tester)  # type: ignore[arg-type]
            session.prepare(header)
            session.erase()
            before = sim.bus.stats()
            t1 = time.perf_counter()
            for _ in session.write(image):
                pass
            t2 = time.perf_counter()
            after = sim.bus.stats()
            session.verify()
            session.activate()
            session.reset()
            session.wait_boot(60)
            assert session.read_self_test().passed
            session.confirm()
            t3 = time.perf_counter()
        wire = after.wire_time_tx_s - before.wire_time_tx_s
        out["single_wire_s"] = wire
        out["single_wall_s"] = t2 - t1
        out["single_wire_pct"] = 100 * len(image) / (wire * raw_rate)
        out["single_wall_pct"] = 100 * len(image) / ((t2 - t1) * raw_rate)
        out["single_update_s"] = t3 - t0

        config = string("many", nodes)
        with (
            Rs485Simulator(config) as sim,
            open_modbus_bus(sim.host_path, baud, frame_gap=frame_gap) as bus,
        ):
            assert sim.bus is not None
            marks: dict[str, object] = {}

            def progress(what: str, _n: int) -> None:
                assert sim.bus is not None
                marks[what] = (time.perf_counter(), sim.bus.stats())

            t0 = time.perf_counter()
            report = broadcast_update(
                bus,
                range(1, nodes + 1),
                header,
                image,
                tester,  # type: ignore[arg-type]
                policy=BroadcastPolicy(activation="all", boot_timeout_s=120),
                progress=progress,
            )
            t_all = time.perf_counter() - t0
        assert report.ok, report.summary()
        (_, s_prep), (_, s_bc) = marks["prepared"], marks["broadcast"]  # type: ignore[misc]
        # The bus counts a t3.5 silence only where the line really went idle; a
        # talker streaming broadcast frames back to back never idles it, so the
        # wire time of the phase is computed from the frames sent (chars + t3.5).
        out["bcast_link_s"] = s_bc.wire_time_tx_s - s_prep.wire_time_tx_s
        wire_bc = report.broadcast_wire_s
        out["bcast_wire_s"] = wire_bc
        out["bcast_wall_s"] = report.broadcast_s
        out["bcast_wire_pct"] = 100 * len(image) / (wire_bc * raw_rate)
        out["bcast_wall_pct"] = 100 * len(image) / (report.broadcast_s * raw_rate)
        out["string_update_s"] = t_all
        out["repair_frames"] = report.repair_frames
        phases = dict(report.timeline)
        out["phase_prepare_s"] = phases["prepared"]
        out["phase_broadcast_s"] = phases["broadcast"] - phases["prepared"]
        out["phase_verify_s"] = phases["verified"] - phases["broadcast"]
        out["phase_activate_s"] = report.total_s - phases["verified"]
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
    line("  identify/auth/prepare/erase s", "phase_prepare_s", ".1f")
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
