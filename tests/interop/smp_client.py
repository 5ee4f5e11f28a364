"""A stock MCUmgr client: what a Zephyr developer has, and nothing of bmsfw.

The ``smpmgr`` command line for upload, test, reset and confirm; ``smpclient`` for
the structured image list (what MCUboot reports per slot) and the images' SHA-256
TLV. The device is whatever answers on the serial port or UDP address.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smpclient import SMPClient
from smpclient.generics import success
from smpclient.mcuboot import IMAGE_TLV, ImageInfo
from smpclient.requests.image_management import ImageStatesRead
from smpclient.transport.serial import SMPSerialTransport
from smpclient.transport.udp import SMPUDPTransport

SMPMGR = str(Path(sys.executable).with_name("smpmgr"))


def smpmgr(link: list[str], *args: str) -> str:
    """Run ``smpmgr LINK ARGS`` (``--port PTY`` or ``--ip HOST``); it must succeed."""
    result = subprocess.run(
        [SMPMGR, *link, "--timeout", "3", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def client(kind: str, target: str) -> SMPClient:
    """smpclient on a serial port, or on UDP port 1337 of ``target`` (HOST:PORT)."""
    if kind == "serial":
        return SMPClient(SMPSerialTransport(), target, timeout_s=1.0)
    host, _, _port = target.rpartition(":")
    return SMPClient(SMPUDPTransport(), host, timeout_s=1.0)


def image_list(kind: str, target: str, wait_s: float = 20.0) -> list[Any]:
    """The image list, once the device answers again (it is silent while it reboots)."""

    async def read() -> list[Any]:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                async with client(kind, target) as smp:
                    response = await smp.request(ImageStatesRead(), timeout_s=1.0)
                    assert success(response), response
                    return list(response.images)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    return asyncio.run(read())


def sha256_tlv(path: Path) -> bytes:
    """The image's SHA256 TLV, as smpclient's MCUboot parser reads it from the file."""
    return bytes(ImageInfo.load_file(str(path)).get_tlv(IMAGE_TLV.SHA256).value)
