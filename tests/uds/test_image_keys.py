"""The fused image-key hashes a BMS reports (UDS DID 0x0103, Modbus image_key_* registers):
bounded decoding on the host, the same value over every protocol."""

from __future__ import annotations

import hashlib

import pytest

from bmsfw.protocol.bounds import MAX_IMAGE_KEYS
from bmsfw.protocol.modbus import codec as mb
from bmsfw.protocol.uds._codec import decode_image_key_hashes, encode_image_key_hashes

KEYS = tuple(hashlib.sha256(bytes([i])).hexdigest() for i in range(MAX_IMAGE_KEYS))


@pytest.mark.parametrize("n", range(MAX_IMAGE_KEYS + 1))
def test_round_trip(n: int) -> None:
    assert decode_image_key_hashes(encode_image_key_hashes(KEYS[:n])) == KEYS[:n]
    assert mb.decode_image_keys(mb.encode_image_keys(KEYS[:n])) == KEYS[:n]


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # no count
        b"\x01" + bytes(31),  # a short hash
        b"\x01" + bytes(33),  # a long one
        b"\x01" + bytes(32),  # blank: no key fused is no key to match
        b"\x01" + b"\xff" * 32,  # erased OTP
        bytes([MAX_IMAGE_KEYS + 1]) + b"\x11" * 32 * (MAX_IMAGE_KEYS + 1),  # too many
    ],
)
def test_uds_refuses_malformed(raw: bytes) -> None:
    with pytest.raises(ValueError, match="DID 0x0103"):
        decode_image_key_hashes(raw)


def test_modbus_refuses_a_count_beyond_the_block() -> None:
    regs = mb.encode_image_keys(KEYS[:1])
    regs[0] = MAX_IMAGE_KEYS + 1
    with pytest.raises(ValueError, match="image_key_count"):
        mb.decode_image_keys(regs)
