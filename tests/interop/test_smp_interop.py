"""Stock MCUmgr tools update the virtual BMS over serial and UDP (issue 17, "Must show").

The client side (smp_client.py) is only smpmgr and smpclient; the vendor's MCUboot
images come from the packages the harness built with the `bmsfw` command line, and
the BMS serves SMP in its own process, like an MCUboot device without bmsfw's tester
check.
"""

from __future__ import annotations

import time

import pytest

from .conftest import SmpBench
from .smp_client import image_list, sha256_tlv, smpmgr


@pytest.mark.parametrize("kind", ["serial", "udp"])
def test_smpmgr_upgrade_test_reset_confirm(kind: str, smp_bench: SmpBench) -> None:
    target = smp_bench.serial_port if kind == "serial" else smp_bench.udp
    link = ["--port", target] if kind == "serial" else ["--ip", target.rpartition(":")[0]]
    old, new = smp_bench.images["v1"], smp_bench.images["v2"]

    before = image_list(kind, target)
    assert [(i.slot, i.version, i.active, i.confirmed) for i in before] == [
        (0, "1.0.0", True, True)
    ]
    assert before[0].hash == sha256_tlv(old)

    # upload, mark for test, reset: MCUboot test-boots the new image once
    smpmgr(link, "image", "upload", str(new))
    uploaded = {i.slot: i for i in image_list(kind, target)}
    assert uploaded[1].hash == sha256_tlv(new) and not uploaded[1].pending
    smpmgr(link, "image", "state-write", sha256_tlv(new).hex())
    assert {i.slot: i for i in image_list(kind, target)}[1].pending
    smpmgr(link, "os", "reset")
    booted = {i.slot: i for i in image_list(kind, target)}
    assert booted[1].version == "1.1.0" and booted[1].active and not booted[1].confirmed
    assert booted[0].confirmed and not booted[0].active  # the fallback MCUboot reverts to

    smpmgr(link, "image", "state-write", "--confirm")
    after = {i.slot: i for i in image_list(kind, target)}
    assert set(after) == {0, 1}
    assert after[1].hash == sha256_tlv(new)
    assert (after[1].version, after[1].active, after[1].confirmed, after[1].pending) == (
        "1.1.0",
        True,
        True,
        False,
    )
    assert after[0].hash == sha256_tlv(old)
    assert (after[0].active, after[0].confirmed, after[0].pending) == (False, False, False)
    # 1.0.0 carries security counter 1; the confirmed 1.1.0 raised the device's to 2:
    # MCUboot's downgrade protection no longer boots it.
    assert after[0].bootable is False


def test_unconfirmed_test_image_reverts_on_the_next_reset(smp_bench: SmpBench) -> None:
    link = ["--port", smp_bench.serial_port]
    image = smp_bench.images["selftest-fails"]
    smpmgr(link, "image", "upload", str(image))
    smpmgr(link, "image", "state-write", sha256_tlv(image).hex())
    smpmgr(link, "os", "reset")
    # it fails its self-test and asks MCUboot to revert: 1.0.0 runs again, confirmed
    deadline = time.monotonic() + 30
    while True:
        images = {i.slot: i for i in image_list("serial", smp_bench.serial_port)}
        if images[0].active or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert images[0].active and images[0].confirmed and images[0].version == "1.0.0"
    assert not images[1].active and not images[1].confirmed and not images[1].pending
