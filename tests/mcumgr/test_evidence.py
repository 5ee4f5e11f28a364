"""`bmsfw update --smp ... --evidence DIR`: the bundle of an update over MCUmgr SMP holds a
timestamped log of every SMP message sent and received (bus-frames.log), the whole
image upload included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bmsfw.evidence.bundle import verify_bundle
from bmsfw.sim.lab import write_tester_files
from cli_support import CONFIRM, run_bmsfw

from .conftest import SmpBench, start_device

# SMP header (8 bytes): op, flags, length (2), group (2), sequence, command id
OP_WRITE = 2
IMAGE, OS = 1, 0
IMAGE_STATE, IMAGE_UPLOAD, OS_RESET = 0, 1, 5


def _requests(log: str) -> list[tuple[int, int, int]]:
    """(group, command, length) of every SMP write request the host sent, in order."""
    found = []
    for line in log.splitlines()[1:]:
        _stamp, direction, _size, *hex_bytes = line.split()
        data = bytes.fromhex("".join(hex_bytes))
        if direction == "TX" and len(data) >= 8 and data[0] & 0x07 == OP_WRITE:
            length = int.from_bytes(data[2:4], "big")
            found.append((int.from_bytes(data[4:6], "big"), data[7], length))
    return found


@pytest.mark.req("R156-UPDATE-RECORD")
def test_smp_update_writes_a_bundle_with_every_smp_message(
    device_dir: Path, smp_bench: SmpBench, tmp_path: Path
) -> None:
    files = write_tester_files(smp_bench.pki, tmp_path / "kit")
    package = tmp_path / "kit" / "2.0.0.bmsfw"
    package.write_bytes(smp_bench.releases["2.0.0"].package)
    process = start_device(device_dir, udp=True, require_auth=True)
    evidence = tmp_path / "evidence"
    try:
        result = run_bmsfw(
            "update", "--smp", f"udp:{process.info['udp']}", str(package),
            "--trust", str(files.trust),
            "--backup-dir", str(tmp_path / "backups"),
            "--tester-cert", str(files.tester_cert),
            "--tester-key", str(files.tester_key),
            "--evidence", str(evidence),
            *CONFIRM, "--json",
            check=0,
        )  # fmt: skip
    finally:
        process.stop()
    report = json.loads(result.stdout)
    assert report["outcome"] == "updated"
    (path,) = evidence.glob("evidence_*.zip")
    bundle = verify_bundle(path.read_bytes())
    trace = bundle.manifest["bus_trace"]
    assert trace["file"] == "bus-frames.log" and trace["kind"] == "serial-log"
    log = bundle.files["bus-frames.log"].decode()
    assert len(log.splitlines()) - 1 == trace["frames"]
    assert " RX " in log  # the answers are in the record too
    requests = _requests(log)

    def where(group: int, command: int) -> list[int]:
        return [i for i, (g, c, _n) in enumerate(requests) if (g, c) == (group, command)]

    uploads, state, resets = (
        where(IMAGE, IMAGE_UPLOAD),
        where(IMAGE, IMAGE_STATE),
        where(OS, OS_RESET),
    )
    assert len(uploads) > 1 and state and resets
    assert uploads[-1] < state[0] < resets[-1]  # upload, then mark for test, then reset
    # each upload request carries a chunk of the image: together at least its size
    image_size = len(smp_bench.releases["2.0.0"].image)
    assert sum(requests[i][2] for i in uploads) > image_size
