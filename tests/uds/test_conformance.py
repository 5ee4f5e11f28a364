"""ISO 14229-1 details of the UDS server, on the protocol core in-process (no CAN)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.link import node_address
from bmsfw.package import VendorPki
from bmsfw.protocol.uds._auth import AuthenticationResponseError, challenge_from_verify_response
from bmsfw.sim import SimClock, VirtualBms
from bmsfw.sim.uds_server import UdsServer

from .conftest import Release, provision_nodes


@pytest.fixture
def bms(tmp_path: Path, pki: VendorPki, release_v1: Release) -> VirtualBms:
    state = provision_nodes(tmp_path / "sim", pki, release_v1)
    bms = VirtualBms(state / "node1", clock=SimClock())
    bms.wait_boot()
    return bms


def _server(bms: VirtualBms) -> UdsServer:
    return UdsServer(bms, node_address(1))


def test_software_version_while_booting_is_conditions_not_correct(bms: VirtualBms) -> None:
    server = _server(bms)
    assert server.handle(b"\x22\xf1\x89") == b"\x62\xf1\x89" + b"1.0.0"
    bms.reset()
    assert bms.run_state == "booting"
    assert server.handle(b"\x22\xf1\x89") == b"\x7f\x22\x22"
    assert server.handle(b"\x22\x01\x20")[:3] == b"\x62\x01\x20"  # boot status still answers
    bms.wait_boot()
    assert server.handle(b"\x22\xf1\x89") == b"\x62\xf1\x89" + b"1.0.0"


def test_a_reboot_drops_session_and_security(bms: VirtualBms) -> None:
    server = _server(bms)
    assert server.handle(b"\x10\x02")[:2] == b"\x50\x02"
    server.security_unlocked = True  # as after 0x27 (tested on the bus elsewhere)
    bms.reset()  # not through 0x11: e.g. the watchdog
    bms.wait_boot()
    assert server.handle(b"\x22\xf1\x86") == b"\x62\xf1\x86\x01"  # default session
    assert not server.access_granted


def test_authentication_configuration_and_return_parameters(bms: VirtualBms) -> None:
    server = _server(bms)
    assert server.handle(b"\x29\x08") == b"\x69\x08\x02"  # APCE
    assert server.handle(b"\x29\x00") == b"\x69\x00\x10"  # deAuthentication successful
    # the tester's parser takes only 0x11 as "certificate verified, prove ownership"
    assert challenge_from_verify_response(b"\x01\x11\x00\x02ab\x00\x00") == b"ab"
    with pytest.raises(AuthenticationResponseError, match="0x13"):
        challenge_from_verify_response(b"\x01\x13\x00\x02ab\x00\x00")
