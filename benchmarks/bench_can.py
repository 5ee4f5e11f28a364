"""Flash a 256 KiB image over throttled CAN: ``python -m benchmarks.bench_can``.

Timed: the transfer phase (RequestDownload .. RequestTransferExit) of a 256 KiB
image into an erased bank, tester = bmsfw's ``UdsSession``, BMS = the real UDS
server of the virtual BMS. Links: classic CAN 500 kbit/s and 1 Mbit/s, CAN FD
500 k / 2 M, every frame paced at its nominal bit time by the wire model.

Where the BMS runs (``--bms``):

* ``process``: in its own process (``SimCanProcess``), on a throttled
  ``udp_multicast`` bus, so the tester's and the BMS's Python ISO-TP stacks do
  not share one GIL (as with hardware). Each process paces its own frames; the
  BMS sends few (flow control, responses), so the bus is not over-booked by much.
* ``in-process`` (default): both on one python-can ``virtual`` bus in this process (one
  bus timeline for both directions, one GIL).

Per link and block length (``--blocks``, the maxNumberOfBlockLength the BMS
announces; above 4095 the TransferData requests use ISO 15765-2:2016 escaped
first frames) a ``bmsfw`` row: block size 0 / STmin 0 granted on the throttled
link, padded frames, FD 64-byte frames. ``plain`` rows (default; ``--no-plain``): a udsoncan +
can-isotp loop with library defaults (block size 8 granted by the receiver,
8-byte frames even on FD; only ``use_server_timing`` is off, since with it
udsoncan adopts the 50 ms P2 and times out on the first 4 KiB block).

Columns: frames on the bus (both directions), wire time (nominal bits), wall
time, payload rate, and that rate as a percentage of the link's raw data rate
(classic: 8 data bytes per 111-bit frame; FD: 64 bytes per 29 nominal + 543
data-phase bits). ISO-TP caps classic CAN at 7/8 = 87.5 % (FD: 63/64). With
``--repeat N`` each row is the best of N runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import isotp
import udsoncan
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from udsoncan.client import Client
from udsoncan.connections import PythonIsoTpConnection

from bmsfw.link import open_can_bus, parse_can_link
from bmsfw.package import VendorPki
from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.uds import open_uds_session
from bmsfw.sim.flash import FlashSpec
from bmsfw.sim.lab import (
    lab_pki,
    provision_nodes,
    signed_release,
    tester_for,
    unique_multicast_link,
)
from bmsfw.sim.sim_can import CanSimConfig, CanSimulator, SimCanProcess
from bmsfw.sim.spec import DeviceSpec
from bmsfw.sim.uds_server import UdsServerConfig

KIB = 1024
SPEC = DeviceSpec(flash=FlashSpec.small(bank_size=320 * KIB, sector_size=16 * KIB))
LINKS = (
    ("classic 500k", "@500k,throttle"),
    ("classic 1M", "@1M,throttle"),
    ("FD 500k/2M", "@500k/2M,throttle"),
)
LINK_NAMES = tuple(name for name, _ in LINKS)


@dataclass(frozen=True)
class Row:
    link: str
    client: str
    block: int
    frames: int
    wire_s: float
    wall_s: float
    rate_bytes_per_s: float
    raw_bytes_per_s: float

    def line(self) -> str:
        pct = 100 * self.rate_bytes_per_s / self.raw_bytes_per_s
        return (
            f"{self.link:<13} {self.client:<6} {self.block:>6} {self.frames:>7} "
            f"{self.wire_s:>8.2f} {self.wall_s:>8.2f} "
            f"{self.rate_bytes_per_s / 1024:>9.1f} {pct:>7.1f} %"
        )


def _release(pki: VendorPki, version: str, counter: int, size: int) -> tuple[bytes, bytes]:
    release = signed_release(pki, version, counter, spec=SPEC, size=size)
    return release.header, release.image


def _provision(root: Path, pki: VendorPki, initial: bytes) -> Path:
    return provision_nodes(root, pki, initial, (1,), spec=SPEC)


def _bmsfw_run(
    link: str, header: bytes, image: bytes, tester: TesterCredentials
) -> tuple[Any, float]:
    with open_uds_session(link, 1) as session:
        session.authenticate(tester)
        session.prepare(header)
        session.erase()
        session.bus.reset_stats()
        start = time.perf_counter()
        for _ in session.write(image):
            pass
        wall = time.perf_counter() - start
        return session.bus.stats(), wall


def _plain_run(
    link: str, header: bytes, image: bytes, tester: TesterCredentials
) -> tuple[Any, float]:
    spec = parse_can_link(link)
    bus = open_can_bus(spec)
    notifier = can.Notifier(bus, [], timeout=0.05)
    stack = isotp.NotifierBasedCanStack(
        bus,
        notifier,
        address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=0x7E0, rxid=0x7E8),
    )
    config = dict(udsoncan.configs.default_client_config)
    config["use_server_timing"] = False
    try:
        with Client(PythonIsoTpConnection(stack), config=config) as client:  # type: ignore[arg-type]
            client.change_session(2)
            certs = x509.load_pem_x509_certificates(tester.certificate_chain_pem)
            der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)
            challenge = client.verify_certificate_unidirectional(
                0, der, b""
            ).service_data.challenge_server
            key = serialization.load_pem_private_key(tester.private_key_pem, None)
            client.proof_of_ownership(key.sign(challenge), b"")  # type: ignore[call-arg,union-attr]
            client.start_routine(0x0201, b"\x00" + header)
            client.start_routine(0xFF00)
            bus.reset_stats()
            start = time.perf_counter()
            response = client.request_download(udsoncan.MemoryLocation(0, len(image), 32, 32))
            block = response.service_data.max_length - 2
            for i, offset in enumerate(range(0, len(image), block)):
                client.transfer_data((i + 1) & 0xFF, image[offset : offset + block])
            client.request_transfer_exit()
            wall = time.perf_counter() - start
            return bus.stats(), wall
    finally:
        notifier.stop()
        bus.shutdown()


@contextmanager
def _bms(mode: str, root: Path, suffix: str, name: str, max_block: int) -> Iterator[str]:
    """A BMS serving node 1 from ``root``; yields the link the tester opens."""
    if mode == "in-process":
        link = f"virtual:bench{name}{suffix}"
        config = CanSimConfig(
            link,
            (1,),
            str(root),
            time_scale=20,
            server=UdsServerConfig(max_block_length=max_block),
            isotp_block_size=8 if name.endswith("plain") else None,
        )
        with CanSimulator(config):
            yield link
        return
    link = unique_multicast_link(suffix)
    with SimCanProcess(
        link, root, (1,), time_scale=20, max_block_length=max_block, log_file=root / "sim.log"
    ):
        yield link


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-kib", type=int, default=256)
    parser.add_argument("--bms", choices=("process", "in-process"), default="in-process")
    parser.add_argument(
        "--blocks", default="4095,65535", help="maxNumberOfBlockLength values, comma-separated"
    )
    parser.add_argument("--links", default=",".join(LINK_NAMES), help="subset of the link names")
    parser.add_argument(
        "--plain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the udsoncan/can-isotp library-defaults rows beside bmsfw's (issue 4 asks for both)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per row")
    args = parser.parse_args(argv)
    pki = lab_pki(backdate_s=0)
    tester = tester_for(pki)
    _, initial = _release(pki, "1.0.0", 1, 16 * KIB)
    size = args.size_kib * KIB
    header, image = _release(pki, "2.0.0", 2, size - 1024)
    wanted = args.links.split(",")
    blocks = [int(b) for b in args.blocks.split(",")]
    print(f"image {len(image)} bytes; transfer phase only (erased bank); BMS {args.bms}")
    head = ("link", "client", "block", "frames", "wire s", "wall s", "KiB/s", "of raw")
    print("{:<13} {:<6} {:>6} {:>7} {:>8} {:>8} {:>9} {:>9}".format(*head))
    runs: list[tuple[str, Any, int]] = [("bmsfw", _bmsfw_run, b) for b in blocks]
    if args.plain:
        runs.append(("plain", _plain_run, 4095))
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, suffix) in enumerate(LINKS):
            if name not in wanted:
                continue
            for client_name, run, max_block in runs:
                best: Row | None = None
                for attempt in range(args.repeat):
                    tag = f"{index}-{client_name}-{max_block}-{attempt}"
                    root = _provision(Path(tmp) / tag, pki, initial)
                    with _bms(args.bms, root, suffix, f"{index}{client_name}", max_block) as link:
                        stats, wall = run(link, header, image, tester)
                    spec = parse_can_link(link)
                    row = Row(
                        name,
                        client_name,
                        max_block,
                        stats.frames_tx + stats.frames_rx,
                        stats.wire_time_tx_s + stats.wire_time_rx_s,
                        wall,
                        len(image) / wall,
                        spec.wire_model.raw_payload_rate_bytes_per_s(fd=spec.fd),
                    )
                    if best is None or row.wall_s < best.wall_s:
                        best = row
                assert best is not None
                print(best.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
