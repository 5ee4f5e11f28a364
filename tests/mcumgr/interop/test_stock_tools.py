"""Stock MCUmgr tools update the virtual BMS over serial and UDP (issue 17, "Must show").

The client side is only what a Zephyr developer has: the ``smpmgr`` command line
(upload, test, reset; then confirm) and ``smpclient`` for the structured image
list afterwards. Nothing of bmsfw is imported here; the device (fixtures in
``tests/mcumgr/conftest.py``) is a virtual BMS serving SMP in its own process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from smpclient import SMPClient
from smpclient.generics import success
from smpclient.mcuboot import IMAGE_TLV, ImageInfo
from smpclient.requests.image_management import ImageStatesRead
from smpclient.transport.serial import SMPSerialTransport
from smpclient.transport.udp import SMPUDPTransport

SMPMGR = str(Path(sys.executable).with_name("smpmgr"))


def smpmgr(link: list[str], *args: str) -> str:
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


def client(kind: str, info: dict[str, Any]) -> SMPClient:
    if kind == "serial":
        return SMPClient(SMPSerialTransport(), info["serial_port"], timeout_s=1.0)
    host, _, _port = info["udp"].rpartition(":")
    return SMPClient(SMPUDPTransport(), host, timeout_s=1.0)


def image_list(kind: str, info: dict[str, Any], wait_s: float = 20.0) -> list[Any]:
    """The image list, once the device answers again (it is silent while it reboots)."""

    async def read() -> list[Any]:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                async with client(kind, info) as smp:
                    response = await smp.request(ImageStatesRead(), timeout_s=1.0)
                    assert success(response), response
                    return list(response.images)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    return asyncio.run(read())


def sha256_tlv(path: Path) -> bytes:
    return bytes(ImageInfo.load_file(str(path)).get_tlv(IMAGE_TLV.SHA256).value)


@pytest.mark.parametrize("kind", ["serial", "udp"])
def test_smpmgr_upgrade_test_reset_confirm(
    kind: str, smp_device: Any, stock_images: dict[str, Path]
) -> None:
    info = smp_device.info
    link = ["--port", info["serial_port"]] if kind == "serial" else ["--ip", info["udp"][:-5]]
    old, new = stock_images["1.0.0"], stock_images["2.0.0"]

    before = image_list(kind, info)
    assert [(i.slot, i.version, i.active, i.confirmed) for i in before] == [
        (0, "1.0.0", True, True)
    ]
    assert before[0].hash == sha256_tlv(old)

    # upload, mark for test, reset: MCUboot test-boots the new image once
    smpmgr(link, "image", "upload", str(new))
    uploaded = {i.slot: i for i in image_list(kind, info)}
    assert uploaded[1].hash == sha256_tlv(new) and not uploaded[1].pending
    smpmgr(link, "image", "state-write", sha256_tlv(new).hex())
    assert {i.slot: i for i in image_list(kind, info)}[1].pending
    smpmgr(link, "os", "reset")
    booted = {i.slot: i for i in image_list(kind, info)}
    assert booted[1].version == "2.0.0" and booted[1].active and not booted[1].confirmed
    assert booted[0].confirmed and not booted[0].active  # the fallback MCUboot reverts to

    smpmgr(link, "image", "state-write", "--confirm")
    after = {i.slot: i for i in image_list(kind, info)}
    assert set(after) == {0, 1}
    assert after[1].hash == sha256_tlv(new)
    assert (after[1].version, after[1].active, after[1].confirmed, after[1].pending) == (
        "2.0.0",
        True,
        True,
        False,
    )
    assert after[0].hash == sha256_tlv(old)
    assert (after[0].active, after[0].confirmed, after[0].pending) == (False, False, False)
    # 1.0.0 carries security counter 1; the confirmed 2.0.0 raised the device's to 2:
    # MCUboot's downgrade protection no longer boots it.
    assert after[0].bootable is False


def test_unconfirmed_test_image_reverts_on_the_next_reset(
    smp_device: Any, stock_images: dict[str, Path]
) -> None:
    info = smp_device.info
    link = ["--port", info["serial_port"]]
    image = stock_images["fail-selftest"]
    smpmgr(link, "image", "upload", str(image))
    smpmgr(link, "image", "state-write", sha256_tlv(image).hex())
    smpmgr(link, "os", "reset")
    # 2.1.0 fails its self-test and asks MCUboot to revert: 1.0.0 runs again, confirmed
    deadline = time.monotonic() + 30
    while True:
        images = {i.slot: i for i in image_list("serial", info)}
        if images[0].active or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert images[0].active and images[0].confirmed and images[0].version == "1.0.0"
    assert not images[1].active and not images[1].confirmed and not images[1].pending
