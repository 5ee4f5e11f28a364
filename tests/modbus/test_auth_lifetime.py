"""Modbus authentication ends on reboot, on the idle time-out and on a new challenge
(docs/modbus.md, "Authentication"), on the register handler in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.package import VendorPki, key_hash
from bmsfw.protocol.modbus import codec
from bmsfw.protocol.modbus.registers import (
    AUTH_IDLE_TIMEOUT_S,
    HOLDING,
    INPUT,
    AuthState,
    Command,
)
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds._auth import chain_pem_to_der, sign_challenge
from bmsfw.sim import SimClock, VirtualBms, provision
from bmsfw.sim.modbus_server import ModbusBmsNode

from .conftest import SPEC, Release


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def bms(tmp_path: Path, pki: VendorPki, release_v1: Release) -> VirtualBms:
    provision(
        tmp_path / "bms",
        initial_image=release_v1.image,
        root_key_hash=key_hash(pki.root_key),
        image_key_hash=key_hash(pki.image_signing_key),
        spec=SPEC,
        serial="BMS0000001",
    )
    bms = VirtualBms(tmp_path / "bms", clock=SimClock())
    bms.wait_boot()
    return bms


def _command(node: ModbusBmsNode, command: Command, arg: int = 0) -> bool:
    node.touch()  # what the server does before every request
    return node.write_holding(HOLDING.COMMAND_ARG, [arg, int(command)])


def _authenticate(node: ModbusBmsNode, tester: Credentials) -> None:
    assert _command(node, Command.AUTH_CHALLENGE)
    node.touch()
    length = node.read_input(INPUT.CHALLENGE_LENGTH, 1)[0]
    challenge = codec.registers_to_bytes(node.read_input(INPUT.CHALLENGE, 32))[:length]
    proof = codec.pack_auth_proof(
        chain_pem_to_der(tester.certificate_chain_pem),
        sign_challenge(tester.private_key_pem, challenge),
    )
    node.write_holding(HOLDING.UPLOAD, codec.bytes_to_registers(proof))
    node.write_holding(HOLDING.UPLOAD_LENGTH, codec.split_u32(len(proof)))
    assert _command(node, Command.AUTH_PROVE), node.last_message
    assert node.read_input(INPUT.AUTH_STATE, 1) == [AuthState.AUTHENTICATED]


def _refused_for_auth(node: ModbusBmsNode, command: Command) -> bool:
    return not _command(node, command) and node.last_result == 349


def test_reset_ends_the_authentication(bms: VirtualBms, tester: Credentials) -> None:
    node = ModbusBmsNode(bms, 1)
    _authenticate(node, tester)
    assert _command(node, Command.RESET)
    bms.wait_boot()
    assert _refused_for_auth(node, Command.CONFIRM)
    assert node.read_input(INPUT.AUTH_STATE, 1) == [AuthState.NONE]
    _authenticate(node, tester)
    assert _command(node, Command.CONFIRM)  # a confirmed image: a harmless repeat


def test_a_reboot_the_tester_did_not_ask_for_ends_it_too(
    bms: VirtualBms, tester: Credentials
) -> None:
    node = ModbusBmsNode(bms, 1)
    _authenticate(node, tester)
    bms.reset()  # e.g. a watchdog; the node only sees the BMS rebooted
    bms.wait_boot()
    assert _refused_for_auth(node, Command.ERASE)


def test_idle_timeout_ends_the_authentication(bms: VirtualBms, tester: Credentials) -> None:
    clock = _Clock()
    node = ModbusBmsNode(bms, 1, monotonic=clock)
    _authenticate(node, tester)
    clock.t += AUTH_IDLE_TIMEOUT_S - 1
    node.touch()  # any request keeps it alive
    clock.t += AUTH_IDLE_TIMEOUT_S - 1
    assert _command(node, Command.ABORT)  # still authenticated (ABORT needs none anyway)
    assert node.auth == AuthState.AUTHENTICATED
    clock.t += AUTH_IDLE_TIMEOUT_S + 1
    assert _refused_for_auth(node, Command.ERASE)


def test_a_new_challenge_starts_a_new_session(bms: VirtualBms, tester: Credentials) -> None:
    node = ModbusBmsNode(bms, 1)
    _authenticate(node, tester)
    assert _command(node, Command.AUTH_CHALLENGE)
    assert _refused_for_auth(node, Command.ROLLBACK)
