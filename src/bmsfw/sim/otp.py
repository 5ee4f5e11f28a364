"""One-time-programmable ("fused") values of the virtual BMS.

Layout of the 1 KiB OTP block (programmed through the flash controller, so
OTP writes are flash operations that a power cut can interrupt):

======  =====  ==========================================================
offset  size   content
======  =====  ==========================================================
0x000   32     SHA-256 of the vendor root key (trust anchor for manifests)
0x020   32     MCUboot KEYHASH of the image-signing key (secure boot)
0x040   8      lock word: 0x00.. once the factory values are fused
0x100   512    anti-rollback security counter, thermometer-coded
======  =====  ==========================================================

The security counter is the number of *cleared* bits in its field, counted
from the start. Raising it only clears more bits, which OTP allows and which
is monotonic by construction: an interrupted raise leaves a value between the
old and the new one, never a lower one. Capacity: 4096 steps.
"""

from __future__ import annotations

from bmsfw.protocol.device_errors import ProvisioningError
from bmsfw.sim.flash import OTP, Flash

__all__ = ["Otp"]

ROOT_KEY_HASH_OFFSET = 0x000
IMAGE_KEY_HASH_OFFSET = 0x020
LOCK_OFFSET = 0x040
COUNTER_OFFSET = 0x100
COUNTER_BYTES = 512
COUNTER_MAX = COUNTER_BYTES * 8


class Otp:
    def __init__(self, flash: Flash) -> None:
        self.flash = flash

    @property
    def locked(self) -> bool:
        return self.flash.read(OTP, LOCK_OFFSET, 8) == bytes(8)

    @property
    def root_key_hash(self) -> bytes:
        return self.flash.read(OTP, ROOT_KEY_HASH_OFFSET, 32)

    @property
    def image_key_hash(self) -> bytes:
        return self.flash.read(OTP, IMAGE_KEY_HASH_OFFSET, 32)

    @property
    def security_counter(self) -> int:
        field = self.flash.read(OTP, COUNTER_OFFSET, COUNTER_BYTES)
        value = 0
        for byte in field:
            if byte == 0:
                value += 8
                continue
            # leading cleared bits (MSB first) of the first partially cleared byte
            mask = 0x80
            while mask and not byte & mask:
                value += 1
                mask >>= 1
            break
        return value

    def fuse(self, *, root_key_hash: bytes, image_key_hash: bytes, security_counter: int) -> None:
        """Factory fusing; refused once the lock word is programmed."""
        if self.locked:
            raise ProvisioningError("OTP is already fused and locked")
        for name, value in (("root key hash", root_key_hash), ("image key hash", image_key_hash)):
            if len(value) != 32:
                raise ProvisioningError(f"{name} must be 32 bytes (SHA-256), got {len(value)}")
        self.flash.program(OTP, ROOT_KEY_HASH_OFFSET, root_key_hash)
        self.flash.program(OTP, IMAGE_KEY_HASH_OFFSET, image_key_hash)
        self.raise_security_counter(security_counter)
        self.flash.program(OTP, LOCK_OFFSET, bytes(8))

    def raise_security_counter(self, value: int) -> bool:
        """Raise the counter to ``value``; lower values are ignored. True if it changed."""
        if value > COUNTER_MAX:
            raise ProvisioningError(
                f"security counter {value} exceeds the OTP capacity {COUNTER_MAX}"
            )
        current = self.security_counter
        if value <= current:
            return False
        full, bits = divmod(value, 8)
        field = bytearray(b"\xff" * COUNTER_BYTES)
        field[:full] = bytes(full)
        if bits:
            field[full] = (0xFF >> bits) & 0xFF
        first = current // 8
        last = full + (1 if bits else 0)
        self.flash.program(OTP, COUNTER_OFFSET + first, bytes(field[first:last]))
        return True
