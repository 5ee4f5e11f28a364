"""The Modbus node's encoded-transfer rules, on the register handler in-process (no serial)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from bmsfw.package import (
    Manifest,
    VendorPki,
    decode_header,
    key_hash,
    release_header,
)
from bmsfw.package._release import component_image
from bmsfw.protocol.modbus import codec
from bmsfw.protocol.modbus.registers import HOLDING, INPUT, AuthState, Command
from bmsfw.sim import SimClock, VirtualBms, provision
from bmsfw.sim.modbus_server import ModbusBmsNode

from .conftest import SPEC, Release
from .test_encoded_e2e import _payload, _release


@pytest.fixture
def node(tmp_path: Path, pki: VendorPki, release_v1: Release) -> ModbusBmsNode:
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
    node = ModbusBmsNode(bms, 1)
    node.auth = AuthState.AUTHENTICATED  # the proof itself is tested end to end
    return node


@pytest.fixture(scope="module")
def zstd_release(pki: VendorPki) -> bytes:
    return _release(pki, "1.1.0", 2, _payload("1.1.0"), encoding="zstd")


def _command(node: ModbusBmsNode, command: Command, arg: int = 0) -> bool:
    return node.write_holding(HOLDING.COMMAND_ARG, [arg, int(command)])


def _prepare(node: ModbusBmsNode, package: bytes) -> tuple[bytes, int]:
    header = release_header(package)
    node.write_holding(HOLDING.UPLOAD, codec.bytes_to_registers(header))
    node.write_holding(HOLDING.UPLOAD_LENGTH, codec.split_u32(len(header)))
    assert _command(node, Command.PREPARE), node.last_message
    component = Manifest.from_json_bytes(decode_header(header).manifest).component("app")
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        return archive.read(component.member), codec.transfer_encoding(component)


def _stream(node: ModbusBmsNode, stored: bytes, start: int = 0, end: int | None = None) -> None:
    for frame in codec.window_writes(stored, start, end):
        assert node.write_holding(frame.address, list(frame.values)), node.last_message


def test_stream_decodes_in_order_and_verifies(node: ModbusBmsNode, zstd_release: bytes) -> None:
    stored, encoding = _prepare(node, zstd_release)
    assert encoding == 0x10
    # announced on a bank that was never erased: refused
    assert not node.write_holding(HOLDING.TRANSFER_ENCODING, [encoding])
    assert node.last_result == 203
    assert _command(node, Command.ERASE)
    # the wrong encoding for this release: illegal value
    assert not node.write_holding(HOLDING.TRANSFER_ENCODING, [0x20])
    assert node.last_result == 1 and "0x10" in node.last_message
    # broadcasts never start a stream
    assert not node.write_holding(HOLDING.TRANSFER_ENCODING, [encoding], broadcast=True)
    assert node.read_holding(HOLDING.TRANSFER_ENCODING, 1) == [0]
    assert node.write_holding(HOLDING.TRANSFER_ENCODING, [encoding])
    frames = list(codec.window_writes(stored))
    assert len(frames) > 3
    first, second = frames[0], frames[1]
    assert node.write_holding(first.address, list(first.values))
    # the same frame again (its reply was lost): acknowledged, not decoded twice
    assert node.write_holding(first.address, list(first.values))
    # a broadcast frame does not feed this node's stream
    assert not node.write_holding(frames[2].address, list(frames[2].values), broadcast=True)
    # a frame that skips bytes is refused
    assert not node.write_holding(frames[2].address, list(frames[2].values))
    assert node.last_result == 204 and f"continues at byte {first.length}" in node.last_message
    assert node.write_holding(second.address, list(second.values))
    offset = codec.join_u32(node.read_input(INPUT.STREAM_OFFSET, 2))
    assert offset == first.length + second.length
    assert node.read_input(INPUT.STREAM_ENCODING, 1) == [encoding]
    # VERIFY before the stream is complete: refused, the stream is over
    assert not _command(node, Command.VERIFY)
    assert "incomplete" in node.last_message
    # start again from 0 after ERASE: the whole stream, then VERIFY finishes and verifies
    assert _command(node, Command.ERASE)
    assert node.write_holding(HOLDING.TRANSFER_ENCODING, [encoding])
    _stream(node, stored)
    assert _command(node, Command.VERIFY), node.last_message
    assert node.device.transfer_status().verified


def test_corrupt_stream_is_refused_and_never_verifies(
    node: ModbusBmsNode, zstd_release: bytes
) -> None:
    stored, encoding = _prepare(node, zstd_release)
    # not a zstd frame at all: the decoder refuses the first frame (BMSFW-E141)
    assert _command(node, Command.ERASE)
    assert node.write_holding(HOLDING.TRANSFER_ENCODING, [encoding])
    first = next(codec.window_writes(b"\x00" * len(stored)))
    assert not node.write_holding(first.address, list(first.values))
    assert node.last_result == 141
    assert node.read_holding(HOLDING.TRANSFER_ENCODING, 1) == [0]  # the stream is over
    # one flipped byte the decoder survives: the stored digest refuses VERIFY (E104)
    assert _command(node, Command.ERASE)
    assert node.write_holding(HOLDING.TRANSFER_ENCODING, [encoding])
    bad = bytearray(stored)
    bad[len(bad) // 2] ^= 0xFF
    _stream(node, bytes(bad))
    assert not _command(node, Command.VERIFY)
    assert node.last_result == 104 and "stored bytes differ" in node.last_message
    assert not node.device.transfer_status().verified
    assert node.device.boot_status().running_version == "1.0.0"


def test_delta_for_another_base_is_refused_at_prepare(node: ModbusBmsNode, pki: VendorPki) -> None:
    other_base = _release(pki, "0.9.0", 1, _payload("0.9.0"))
    delta = _release(
        pki, "1.0.1", 1, _payload("1.0.1", "1.0.0"), delta_from=component_image(other_base)
    )
    header = release_header(delta)
    node.write_holding(HOLDING.UPLOAD, codec.bytes_to_registers(header))
    node.write_holding(HOLDING.UPLOAD_LENGTH, codec.split_u32(len(header)))
    assert not _command(node, Command.PREPARE)
    assert node.last_result == 142
    assert not node.device.transfer_status().staged
