"""Bytes and wire time of one firmware transfer: raw, compressed, delta.

Run: ``.venv/bin/python -m benchmarks.bench_transfer_size``

Real firmware: two consecutive releases (1.0.0 -> 1.0.1, a patch release) of a
small Cortex-M4 BMS application built with Debian's gcc-arm-none-eabi 12.2 and
committed as binaries under ``benchmarks/data/bmsfw-demo-fw/`` with their
sources and ``build.sh`` (this benchmark only reads the committed binaries).
Each is wrapped into a signed MCUboot image exactly as ``bmsfw package build``
does (unpadded: no slot padding, which would flatter every codec).

Wire time, nominal bits (bmsfw.link.wire), transfer phase only:

* CAN 500 kbit/s classic, 11-bit ids, UDS TransferData blocks of 4095 bytes
  (maxNumberOfBlockLength, SID + counter + 4093 data) over ISO-TP: first frame
  6 data bytes, consecutive frames 7, flow control after the first frame and
  every 8 consecutive frames (block size 8), the 0x76 response, every frame
  padded to DLC 8; plus RequestDownload and RequestTransferExit exchanges.
* RS485 115200 baud 8E1 (11 bits/character), Modbus RTU function 0x10 window
  writes as ``bmsfw.protocol.modbus.codec.window_writes`` makes them (123
  registers = 246 bytes per request, 9 + 2n byte request, 8-byte response),
  t3.5 silence (1.75 ms) after every frame, one WINDOW_PAGE write per 64 KiB.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from bmsfw.link.wire import CanWireModel, modbus_silence_s, serial_char_bits
from bmsfw.package import ComponentSource, HardwareCompat, build_release, create_pki
from bmsfw.package._manifest import Manifest
from bmsfw.package._release import _Package
from bmsfw.protocol.modbus.codec import window_writes

DATA = Path(__file__).parent / "data" / "bmsfw-demo-fw"
OLD, NEW = "1.0.0", "1.0.1"
CAN_BITRATE_BPS = 500_000
RS485_BAUD = 115_200
UDS_BLOCK = 4095
ISOTP_BLOCK_SIZE = 8


def can_transfer_s(payload_bytes: int, model: CanWireModel) -> float:
    frame = model.frame_time_s(8)
    frames = 2 + 2  # RequestDownload (SF) + response, RequestTransferExit (SF) + response
    remaining = payload_bytes
    while remaining > 0:
        data = min(remaining, UDS_BLOCK - 2)
        remaining -= data
        request = data + 2
        if request <= 7:
            frames += 1
        else:
            consecutive = math.ceil((request - 6) / 7)
            flow_controls = 1 + (consecutive - 1) // ISOTP_BLOCK_SIZE
            frames += 1 + consecutive + flow_controls
        frames += 1  # positive response 0x76 + counter (single frame)
    return frames * frame


def rs485_transfer_s(payload: bytes, baud: int) -> float:
    char_s = serial_char_bits(8, "E", 1) / baud
    gap = modbus_silence_s(baud)
    total = 0.0
    page = -1
    padded = payload + (b"\xff" if len(payload) % 2 else b"")
    for write in window_writes(padded):
        if write.page != page:
            page = write.page
            total += 2 * (8 * char_s + gap)  # FC 0x06 WINDOW_PAGE + echo
        request = 9 + 2 * len(write.values)
        total += request * char_s + gap + 8 * char_s + gap
    return total


def _stored(package: bytes) -> bytes:
    pkg = _Package(package)
    manifest = Manifest.from_json_bytes(pkg.read("manifest.json", 65536))
    comp = manifest.component("app")
    return pkg.read(comp.member, comp.stored_size)


def main() -> None:
    pki = create_pki("ed25519")
    signing = pki.image_signing_key
    hw = HardwareCompat("BMS-16S", ("C",))
    firmware = {v: (DATA / f"bms-fw-{v}.bin").read_bytes() for v in (OLD, NEW)}

    def release(version: str, counter: int, encoding: str, **extra: object) -> bytes:
        return build_release(
            product="bms-demo", version=version, security_counter=counter, hardware=hw,
            min_bootloader_version="1.0.0",
            components=[ComponentSource.firmware("app", firmware[version])],
            image_signing_key=signing, encoding=encoding, **extra,  # type: ignore[arg-type]
        )  # fmt: skip

    old_image = _stored(release(OLD, 1, "raw"))
    new_image = _stored(release(NEW, 1, "raw"))
    rows: list[tuple[str, bytes]] = [("raw image", new_image)]
    for codec in ("zstd", "lz4", "heatshrink", "lzma2thumb"):
        rows.append((f"{codec}", _stored(release(NEW, 1, codec))))
    for compression in ("crle", "heatshrink", "lzma"):
        rows.append(
            (
                f"delta (detools, {compression})",
                _stored(
                    release(
                        NEW, 1, "raw", delta_from={"app": old_image}, delta_compression=compression
                    )
                ),
            )
        )
    can = CanWireModel(bitrate_bps=CAN_BITRATE_BPS)
    raw_can = can_transfer_s(len(new_image), can)
    raw_rs = rs485_transfer_s(new_image, RS485_BAUD)
    print(
        f"firmware: bms-fw {OLD} -> {NEW} (gcc-arm-none-eabi, Cortex-M4), "
        f"binaries {len(firmware[OLD])} / {len(firmware[NEW])} bytes, "
        f"{sum(a != b for a, b in zip(firmware[OLD], firmware[NEW], strict=True))} bytes differ"
    )
    print(f"new image sha256 {hashlib.sha256(new_image).hexdigest()[:16]}…\n")
    header = (
        f"{'payload':<26}{'bytes':>8}{'ratio':>7}{'CAN 500k s':>12}{'speed-up':>9}"
        f"{'RS485 115k2 s':>15}{'speed-up':>9}"
    )
    print(header)
    print("-" * len(header))
    for label, payload in rows:
        t_can = can_transfer_s(len(payload), can)
        t_rs = rs485_transfer_s(payload, RS485_BAUD)
        print(
            f"{label:<26}{len(payload):>8}{len(new_image) / len(payload):>7.2f}"
            f"{t_can:>12.3f}{raw_can / t_can:>8.2f}x{t_rs:>15.3f}{raw_rs / t_rs:>8.2f}x"
        )
    print(
        "\nbytes = what crosses the wire for the app component (unpadded MCUboot image,"
        " its stored\nform per codec, or the delta patch). Targets: >= 1.5x with compression,"
        " >= 10x with delta.\nzstd uses a 32 KiB window, heatshrink -w 10 -l 4, lz4 64 KiB"
        " independent blocks; lzma2thumb is raw LZMA2\n(32 KiB dictionary) behind the ARM"
        " Thumb branch filter, as MCUboot's own decompression; the delta\n(detools sequential"
        " patch) with crle or"
        " heatshrink -w 8 -l 7 is MCU-friendly,"
        " lzma is\nshown for reference."
    )


if __name__ == "__main__":
    main()
