"""MCUmgr SMP image upload: serial at 115,200 baud against the line rate; BLE over the virtual link.

Serial: the virtual BMS serves SMP on a pty paced at 115,200 baud, 8N1 (10 bits a
character, both directions: the device takes bytes in no faster than the line
carries them and sends its answers the same way), with the SMP console framing
(base64 in lines of at most 128 characters). Side by side on the same BMS and
image: smpclient's own ``SMPClient.upload`` with its defaults (reassembly buffer
learnt from MCUmgr params), and bmsfw's ``SmpSession.write``. Each is reported as
image bytes per second of wall time and as a share of the raw line rate
(baud / 10 bytes/s). The framing alone caps it: every 3 image bytes become 4
base64 characters and each 124 of those carry 4 more (delimiter, newline), so
at most 3/4 x 124/128 = 72.7 % of the line carries image bytes, a little less
after the SMP header, CBOR and the answers.

BLE: the same upload over the SMP GATT service between two processes, through
bumble's virtual controllers (the updater's HCI on loopback TCP, as a USB dongle
would be), reported with the ATT MTU, the write size and the SMP frame size. The
virtual link delivers packets as fast as the two host stacks produce them: it has
no air-time model, so the rate says what the stacks and the SMP exchange cost,
not what a radio at a given connection interval carries.

Run: ``.venv/bin/python -m benchmarks.bench_smp [--quick]`` (``--quick``: 16 KiB image).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bmsfw.protocol.smp import SmpLink, SmpSession
from bmsfw.sim.flash import FlashSpec
from bmsfw.sim.lab import lab_pki, provision_nodes, signed_release
from bmsfw.sim.sim_can import node_state_dir
from bmsfw.sim.smp_server import SimSmpProcess
from bmsfw.sim.spec import DeviceSpec

KIB = 1024
BAUD = 115_200
SPEC = DeviceSpec(flash=FlashSpec.small(bank_size=256 * KIB, sector_size=4 * KIB))
FRAMING_CAP_PCT = 100 * 3 / 4 * 124 / 128


async def _smpclient_upload(transport: Any, address: str, image: bytes) -> tuple[float, int]:
    from smpclient import SMPClient
    from smpclient.requests.image_management import ImageErase

    async with SMPClient(transport, address) as client:
        await client.request(ImageErase(slot=1), timeout_s=30)
        started = time.perf_counter()
        async for _offset in client.upload(image):
            pass
        elapsed = time.perf_counter() - started
        return elapsed, int(transport.max_unencoded_size)


def _bmsfw_upload(link: SmpLink, image: bytes) -> tuple[float, int]:
    with SmpSession(link) as session:
        session.erase()
        started = time.perf_counter()
        for _offset in session.write(image):
            pass
        return time.perf_counter() - started, session.max_unencoded_size


def _row(what: str, size: int, seconds: float, line_bps: float | None, frame: int) -> str:
    rate = size / seconds
    share = f"{100 * rate / line_bps:6.1f} %" if line_bps else "     – "
    return f"{what:<38} {size:>8} {seconds:>8.2f} {rate / KIB:>9.2f} {share:>9} {frame:>7}"


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("smpclient").setLevel(logging.CRITICAL)
    size = 16 * KIB if "--quick" in argv else 96 * KIB
    pki = lab_pki()
    first = signed_release(pki, "1.0.0", 1, spec=SPEC, size=8 * KIB)
    image = signed_release(pki, "2.0.0", 2, spec=SPEC, size=size).image
    line_bps = BAUD / 10
    print(__doc__.split("\n\n")[0])
    print(f"image {len(image)} bytes; serial line {BAUD} baud 8N1 = {line_bps:.0f} B/s raw;")
    print(f"console framing cap {FRAMING_CAP_PCT:.1f} % of the line\n")
    header = f"{'upload':<38} {'bytes':>8} {'wall s':>8} {'KiB/s':>9} {'of line':>9} {'frame B':>7}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        state = provision_nodes(Path(tmp) / "bms", pki, first.image, spec=SPEC)
        device = node_state_dir(state, 1)
        process = SimSmpProcess(
            device,
            serial=True,
            baud_bps=BAUD,
            ble=True,
            time_scale=20.0,
            log_file=Path(tmp) / "log",
        )
        info = process.start()
        try:
            from smpclient.transport.bumble import SMPBumbleTransport
            from smpclient.transport.serial import SMPSerialTransport

            port = info["serial_port"]
            seconds, frame = asyncio.run(_smpclient_upload(SMPSerialTransport(), port, image))
            print(_row("serial: smpclient upload (defaults)", len(image), seconds, line_bps, frame))
            seconds, frame = _bmsfw_upload(SmpLink("serial", port, baud=BAUD), image)
            print(_row("serial: bmsfw SmpSession.write", len(image), seconds, line_bps, frame))

            from smpclient.transport.bumble.keystore import InMemory
            from smpclient.transport.bumble.pairing import KeyboardOnly

            # Both pair with the BMS's passkey (LE Secure Connections) before the upload.
            passkey = int(info["ble_passkey"])

            async def typed() -> int:
                return passkey

            hci = info["ble_hci"]
            ble = SMPBumbleTransport(
                hci=hci, keystore=InMemory(), pair_on_connect=KeyboardOnly(typed), settle_s=0.1
            )
            seconds, frame = asyncio.run(_smpclient_upload(ble, info["ble_address"], image))
            print(_row("BLE virtual: smpclient upload", len(image), seconds, None, frame))
            link = SmpLink(
                "ble", info["ble_address"], hci=hci, timeout_s=5.0, passkey=lambda: passkey
            )
            seconds, frame = _bmsfw_upload(link, image)
            print(_row("BLE virtual: bmsfw SmpSession.write", len(image), seconds, None, frame))
            print(
                "\nBLE: ATT MTU 247 requested and granted (bumble), ATT writes of 244 bytes "
                "without response, answers as notifications of up to 244 bytes; one SMP "
                f"frame of up to {frame} bytes = {-(-frame // 244)} writes."
            )
        finally:
            process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
