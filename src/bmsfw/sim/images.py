"""Fake-but-realistic BMS application binaries, and the behaviour markers they can carry.

``make_app_payload`` produces what a Cortex-M BMS firmware build looks like
before it is wrapped into an MCUboot image: an ARM vector table (initial stack
pointer, Thumb reset handler, 98 exception/IRQ vectors), an application
descriptor at offset 0x400 and code-like filler (Thumb instruction patterns
around deterministic pseudo-random bytes, so compression ratios are plausible).

The descriptor (``BMSFWAPP`` magic) carries the version string and an optional
*behaviour marker*. Only the virtual BMS reads the marker; it makes the
simulated firmware misbehave in a chosen way so every rollback path can be
exercised with real, correctly signed packages:

================  =============================================================
marker            what the running firmware does
================  =============================================================
fail-selftest     its post-boot self-test reports a failure (check
                  ``application``); as a test image it requests a revert
never-confirm     accepts the confirm request but never writes the image-ok
                  flag (a forgotten ``boot_set_confirmed``); the watchdog
                  window then expires and the bootloader reverts
boot-loop         crashes right after start, before the self-test; the
                  bootloader's boot counter runs out and it reverts
reset-config      on its first start rewrites configuration to factory
                  defaults (calibration untouched): a restore must catch it
integrity-fault   a stray write corrupts its own bank shortly after start;
                  the periodic runtime re-hash raises a firmware-integrity fault
================  =============================================================
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

__all__ = [
    "APP_DESCRIPTOR_MAGIC",
    "APP_DESCRIPTOR_OFFSET",
    "BEHAVIOURS",
    "AppDescriptor",
    "find_app_descriptor",
    "make_app_payload",
]

APP_DESCRIPTOR_MAGIC = b"BMSFWAPP"
APP_DESCRIPTOR_OFFSET = 0x400
BEHAVIOURS = ("fail-selftest", "never-confirm", "boot-loop", "reset-config", "integrity-fault")

_VECTORS = 16 + 82  # Cortex-M4 core exceptions + STM32F4 IRQs
_DESC = struct.Struct("<8sHH32s32sI")  # magic, format, flags, version, behaviour, crc-ish id
_FLASH_BASE = 0x0800_0000
_STACK_TOP = 0x2002_0000
_MIN_SIZE = APP_DESCRIPTOR_OFFSET + _DESC.size + 64


@dataclass(frozen=True)
class AppDescriptor:
    version: str
    behaviour: str | None
    build_id: int


def make_app_payload(
    version: str,
    *,
    size: int = 16 * 1024,
    behaviour: str | None = None,
    load_addr: int = _FLASH_BASE + 0x20200,
) -> bytes:
    """A deterministic fake firmware binary of exactly ``size`` bytes."""
    if behaviour is not None and behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour marker {behaviour!r}; known: {BEHAVIOURS}")
    if size < _MIN_SIZE:
        raise ValueError(f"payload size {size} below the minimum {_MIN_SIZE}")
    if len(version.encode()) > 31:
        raise ValueError("version string longer than 31 bytes")
    seed = hashlib.sha256(f"{version}|{behaviour}|{size}".encode()).digest()
    out = bytearray()
    reset_handler = load_addr + APP_DESCRIPTOR_OFFSET + _DESC.size + 0x40 + 1  # Thumb bit
    default_handler = reset_handler + 0x80
    out += struct.pack("<II", _STACK_TOP, reset_handler)
    for i in range(2, _VECTORS):
        # Reserved Cortex-M vectors are zero; the rest point at the default handler.
        out += struct.pack("<I", 0 if i in (7, 8, 9, 10, 13) else default_handler)
    out += _code_like(seed, APP_DESCRIPTOR_OFFSET - len(out))
    build_id = int.from_bytes(seed[:4], "little")
    out += _DESC.pack(
        APP_DESCRIPTOR_MAGIC,
        1,
        0,
        version.encode().ljust(32, b"\0"),
        (behaviour or "").encode().ljust(32, b"\0"),
        build_id,
    )
    out += _code_like(hashlib.sha256(seed).digest(), size - len(out))
    return bytes(out)


def _code_like(seed: bytes, length: int) -> bytes:
    """Thumb-ish filler: prologue/epilogue patterns between pseudo-random instruction words."""
    out = bytearray()
    block = seed
    prologue = bytes.fromhex("80b500af")  # push {r7, lr}; add r7, sp, #0
    epilogue = bytes.fromhex("bde88040704700bf")  # pop {r7, lr}; bx lr; nop
    while len(out) < length:
        block = hashlib.sha256(block).digest()
        out += prologue + block[:20] + epilogue
    return bytes(out[:length])


def find_app_descriptor(payload: bytes | memoryview) -> AppDescriptor | None:
    """Read the descriptor at its fixed offset (what the virtual BMS firmware 'knows' of itself)."""
    raw = bytes(payload[APP_DESCRIPTOR_OFFSET : APP_DESCRIPTOR_OFFSET + _DESC.size])
    if len(raw) != _DESC.size:
        return None
    magic, fmt, _flags, version, behaviour, build_id = _DESC.unpack(raw)
    if magic != APP_DESCRIPTOR_MAGIC or fmt != 1:
        return None
    marker = behaviour.rstrip(b"\0").decode(errors="replace") or None
    return AppDescriptor(version.rstrip(b"\0").decode(errors="replace"), marker, build_id)
