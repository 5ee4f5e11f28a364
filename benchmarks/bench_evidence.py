"""What recording the bus for an evidence bundle costs, next to the wire time it records.

Run: ``.venv/bin/python -m benchmarks.bench_evidence``

A CAN flash of an N-byte image over ISO-TP is ~N/7 consecutive frames plus flow
control and responses; each is handed to the bundle's recorder
(:class:`bmsfw.link.tap.CanFrameRecorder`, a copy into a list) while the update
runs, and turned into BLF at the end. Columns:

* ``record us/frame`` — the recorder's cost per frame, on the sending thread,
  against ``wire us/frame`` (one 8-byte classic frame at 500 kbit/s and 1 Mbit/s);
* ``stream us/frame`` — the alternative: a stamped copy of each frame fed to
  python-can's ``BLFWriter`` during the update (compressing as it goes);
* ``peak MiB`` — the recorder's memory (tracemalloc, Python allocations);
* ``BLF`` / ``build`` / ``verify`` — writing the BLF, building the bundle, and
  ``bmsfw evidence verify``'s check, once at the end.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import tracemalloc

import can

from bmsfw.evidence.bundle import BusTrace, EvidenceInputs, blf_bytes, build_bundle, verify_bundle
from bmsfw.link.tap import CanFrameRecorder
from bmsfw.link.wire import CanWireModel
from bmsfw.protocol.session import DeviceIdentity
from bmsfw.update.report import UpdateReport

KIB = 1024
MIB = 1024 * 1024


def flash_frames(image_bytes: int) -> list[tuple[can.Message, bool]]:
    """The frames of a flash of ``image_bytes``: request CFs, an FC and a reply per 4 KiB."""
    frames: list[tuple[can.Message, bool]] = []
    payload = bytes(range(7))
    for offset in range(0, image_bytes, 7):
        frames.append((can.Message(arbitration_id=0x7E0, data=b"\x21" + payload), False))
        if offset % 4095 < 7:
            frames.append((can.Message(arbitration_id=0x7E8, data=b"\x30\x00\x00"), True))
            frames.append((can.Message(arbitration_id=0x7E8, data=b"\x02\x76\x01"), True))
    return frames


def time_recorder(frames: list[tuple[can.Message, bool]]) -> tuple[CanFrameRecorder, float]:
    recorder = CanFrameRecorder()
    start = time.perf_counter()
    for msg, received in frames:
        recorder(msg, received=received)
    return recorder, time.perf_counter() - start


def time_streaming(frames: list[tuple[can.Message, bool]]) -> float:
    """The alternative: a stamped copy per frame, written to BLF as it passes."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = can.BLFWriter(os.path.join(tmp, "bus.blf"))
        start = time.perf_counter()
        for msg, received in frames:
            writer.on_message_received(
                can.Message(
                    timestamp=time.time(),
                    arbitration_id=msg.arbitration_id,
                    is_extended_id=msg.is_extended_id,
                    channel=1,
                    dlc=msg.dlc,
                    data=msg.data,
                    is_rx=received,
                )
            )
        writer.stop()
        return time.perf_counter() - start


def peak_recorder_bytes(frames: list[tuple[can.Message, bool]]) -> int:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    recorder, _ = time_recorder(frames)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del recorder
    return peak


def main() -> None:
    wire_500k = CanWireModel(500_000).frame_time_s(8) * 1e6
    wire_1m = CanWireModel(1_000_000).frame_time_s(8) * 1e6
    report = UpdateReport(
        node="bench",
        outcome="updated",
        device_before=DeviceIdentity("vendor", "BMS-48V", "A", "BENCH", "1.0", "1.0.0", 1, "A"),
    )
    header = (
        f"{'image':>8} {'frames':>8} {'record us/frame':>16} {'stream us/frame':>16} "
        f"{'wire us 500k/1M':>16} {'peak MiB':>9} {'BLF s':>6} {'BLF KiB':>8} "
        f"{'build s':>8} {'verify s':>9}"
    )
    print(header)
    print("-" * len(header))
    for image in (64 * KIB, 256 * KIB, 1 * MIB):
        frames = flash_frames(image)
        recorder, record_s = min((time_recorder(frames) for _ in range(3)), key=lambda r: r[1])
        stream_s = min(time_streaming(frames) for _ in range(3))
        peak = peak_recorder_bytes(frames)
        start = time.perf_counter()
        blf = blf_bytes(recorder.messages())
        blf_s = time.perf_counter() - start
        inputs = EvidenceInputs(
            report=report,
            created_at=0.0,
            bmsfw_version="bench",
            trace=BusTrace("can-blf", blf, len(recorder)),
        )
        start = time.perf_counter()
        bundle = build_bundle(inputs)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        verify_bundle(bundle)
        verify_s = time.perf_counter() - start
        assert len(list(can.BLFReader(io.BytesIO(blf)))) == len(frames)
        n = len(frames)
        print(
            f"{image // KIB:>6}Ki {n:>8} {record_s / n * 1e6:>16.2f} {stream_s / n * 1e6:>16.2f} "
            f"{f'{wire_500k:.0f}/{wire_1m:.0f}':>16} {peak / MIB:>9.1f} {blf_s:>6.2f} "
            f"{len(blf) / KIB:>8.0f} {build_s:>8.3f} {verify_s:>9.3f}"
        )
    print(
        "\nrecord: the cost on the sending thread while the update runs; BLF, build and "
        "verify run once at the end.\nstream: a stamped copy of each frame written to BLF as "
        "it passes (python-can BLFWriter, zlib), the alternative to recording in memory."
    )


if __name__ == "__main__":
    main()
