"""The BMS side of compressed, delta and encrypted transfers.

A protocol server hands the component's *stored* bytes (as the package holds
them: compressed, a patch, or ciphertext) to :class:`EncodedTransfer` in the
order they arrive; it writes the image into the inactive bank through the
device API (:meth:`VirtualBms.write_inactive`), so the usual
``verify_inactive -> activate -> reset`` sequence follows unchanged.

* compression: a bounded streaming decoder (bmsfw.package._encoding), output
  capped at the manifest's size;
* encryption (MCUboot ECIES): the AES key is unwrapped from the signed
  manifest's ``enc_key`` with the device-class private key in OTP, and the
  body is decrypted as it streams; the received ciphertext must hash to the
  manifest's ``image_sha256``, then the bank's expected digest becomes the
  plaintext's (which secure boot checks against the signed SHA256 TLV);
* delta: the active bank must hold exactly the base image (SHA-256 named in
  the manifest), checked *before anything is written* (:func:`check_delta_base`).
  The patch is collected (bounded by its declared size) and applied at the end
  reading the active bank and writing the inactive bank, never in place: a
  power cut at any point leaves the active image untouched and bootable, and a
  corrupt patch fails its size/SHA-256 check before anything can be activated.

Device-class encryption key in OTP (free space of the OTP block):
offset 0x080, 32 bytes private key; 0x0A0, 1 byte scheme (0x01 X25519, 0x02 P-256).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from bmsfw.package import (
    Manifest,
    TrustAnchors,
    _encoding,
    decode_header,
    parse_image_stream,
    verify_header,
)
from bmsfw.package._delta import BankReader, apply_delta
from bmsfw.package._encrypt import (
    BodyDecryptor,
    EncPrivateKey,
    enc_scheme_of,
    private_from_raw,
    private_raw,
    unwrap_key,
)
from bmsfw.package._image import _HEADER, IMAGE_F_ENCRYPTED_AES256
from bmsfw.package._manifest import Component
from bmsfw.package.errors import (
    ComponentDecodeError,
    DecryptionError,
    DeltaBaseMismatchError,
    DeltaPatchError,
    HashMismatchError,
)
from bmsfw.sim import flash as fl
from bmsfw.sim._state import StagedUpdate, bank_region, other_bank

if TYPE_CHECKING:
    from bmsfw.sim.bms import VirtualBms

__all__ = [
    "EncodedTransfer",
    "active_image_digest",
    "check_delta_base",
    "fuse_encryption_key",
    "install_encoded",
    "read_encryption_key",
]

log = logging.getLogger(__name__)

ENC_KEY_OFFSET = 0x080
ENC_SCHEME_OFFSET = 0x0A0
_SCHEME_CODES = {"ecies-x25519": 0x01, "ecies-p256": 0x02}


def fuse_encryption_key(bms: VirtualBms, key: EncPrivateKey) -> None:
    """Program the device-class private key into OTP (factory step; once)."""
    scheme = enc_scheme_of(key)
    if bms.flash.read(fl.OTP, ENC_SCHEME_OFFSET, 1) != b"\xff":
        raise DecryptionError("an encryption key is already fused in this BMS's OTP")
    bms.flash.program(fl.OTP, ENC_KEY_OFFSET, private_raw(key))
    bms.flash.program(fl.OTP, ENC_SCHEME_OFFSET, bytes([_SCHEME_CODES[scheme]]))


def read_encryption_key(bms: VirtualBms) -> EncPrivateKey | None:
    code = bms.flash.read(fl.OTP, ENC_SCHEME_OFFSET, 1)[0]
    for scheme, value in _SCHEME_CODES.items():
        if value == code:
            raw = bms.flash.read(fl.OTP, ENC_KEY_OFFSET, 32)
            return private_from_raw(scheme, bytes(raw))  # type: ignore[arg-type]
    return None


def _app(manifest: Manifest) -> Component:
    return manifest.component("app")


def active_image_digest(bms: VirtualBms) -> bytes:
    """SHA-256 of the MCUboot image in the active bank (up to the end of its TLVs)."""
    bank = other_bank(bms._inactive_bank())
    read, size = bms._bank_reader(bank)
    image = parse_image_stream(read, size)
    view = bms.flash.view(bank_region(bank))
    return hashlib.sha256(view[: image.total_size]).digest()


def _verified_manifest(bms: VirtualBms, header: bytes) -> Manifest:
    trust = TrustAnchors.from_key_hashes([bms.otp.root_key_hash])
    return verify_header(header, trust, bms.device_facts("wired"), now=bms.clock.now())


def check_delta_base(bms: VirtualBms, header: bytes) -> None:
    """Refuse a delta release whose base is not the active image; writes nothing."""
    manifest = _verified_manifest(bms, header)
    comp = _app(manifest)
    if not comp.is_delta:
        return
    actual = active_image_digest(bms)
    if actual != comp.delta_base_sha256:
        raise DeltaBaseMismatchError(
            f"delta {manifest.version} patches image {comp.delta_base_sha256.hex()[:16]}…, "
            f"the active bank holds {actual.hex()[:16]}…"
        )


def check_release(bms: VirtualBms, header: bytes) -> None:
    """Refusals every server makes before any erase or write: a delta for another base,
    an encrypted release this BMS has no device-class key for."""
    check_delta_base(bms, header)
    manifest = Manifest.from_json_bytes(decode_header(header).manifest)
    component = _app(manifest)
    if component.encryption != "none" and read_encryption_key(bms) is None:
        raise DecryptionError(
            f"release {manifest.version} is encrypted ({component.encryption}); "
            "this BMS has no device-class key in OTP"
        )


def staged_component(bms: VirtualBms) -> Component | None:
    """The app component of the staged (already verified) release header, if any."""
    staged = bms._staged()
    if staged is None:
        return None
    return _app(Manifest.from_json_bytes(decode_header(staged.header).manifest))


def staged_bank_blank(bms: VirtualBms) -> bool:
    """Whether the staged image's range of the inactive bank is erased (0xFF)."""
    staged = bms._staged()
    if staged is None or not staged.erased:
        return False
    return bms.flash.is_erased(bank_region(staged.bank), 0, staged.size)


class EncodedTransfer:
    """Receives the stored bytes of the staged release's app component (see module doc)."""

    def __init__(self, bms: VirtualBms) -> None:
        staged = bms._staged()
        if staged is None:
            raise ComponentDecodeError("no staged update: begin_update first")
        self._bms = bms
        self._staged: StagedUpdate = staged
        self._comp = _app(Manifest.from_json_bytes(decode_header(staged.header).manifest))
        comp = self._comp
        self._decoder = _encoding.new_decoder(comp.encoding, comp.payload_size)
        self._produced = 0
        self._stored_hash = hashlib.sha256()
        self._stored_count = 0
        self._payload_hash = hashlib.sha256()  # what the manifest's image_sha256 covers
        self._flash_hash = hashlib.sha256()  # what lands in the bank
        self._patch = bytearray() if comp.is_delta else None
        self._decrypt: BodyDecryptor | None = None
        self._head = bytearray()  # the first 32 bytes, until the body range is known
        self._flash_offset = 0
        if comp.encryption != "none":
            key = read_encryption_key(bms)
            if key is None or enc_scheme_of(key) != comp.encryption:
                raise DecryptionError(
                    f"release is encrypted with {comp.encryption}; this BMS has no such key in OTP"
                )
            self._plainkey = unwrap_key(key, comp.enc_key)
        if comp.is_delta:
            actual = active_image_digest(bms)
            if actual != comp.delta_base_sha256:
                raise DeltaBaseMismatchError(
                    f"delta patches image {comp.delta_base_sha256.hex()[:16]}…, the active bank "
                    f"holds {actual.hex()[:16]}…"
                )

    def feed(self, stored: bytes) -> None:
        self._stored_count += len(stored)
        if self._stored_count > self._comp.stored_size:
            raise HashMismatchError(
                f"more than the {self._comp.stored_size} stored bytes the manifest declares"
            )
        self._stored_hash.update(stored)
        for part in self._decoder.feed(stored):
            self._take(part)

    def _take(self, part: bytes) -> None:
        self._produced += len(part)
        if self._produced > self._comp.payload_size:
            raise ComponentDecodeError(
                f"component decodes to more than the declared {self._comp.payload_size} bytes"
            )
        if self._patch is not None:
            self._patch += part
            return
        self._payload_hash.update(part)
        if self._comp.encryption != "none":
            part = self._decrypt_part(part)
            if not part:
                return
        self._write(part)

    def _decrypt_part(self, part: bytes) -> bytes:
        if self._decrypt is None:
            self._head += part
            if len(self._head) < _HEADER.size:
                return b""
            fields = _HEADER.unpack_from(bytes(self._head), 0)
            header_size, img_size, flags = fields[2], fields[4], fields[5]
            if flags & IMAGE_F_ENCRYPTED_AES256 and len(self._plainkey) != 32:
                raise DecryptionError("image flags AES-256 but the wrapped key is 128-bit")
            self._decrypt = BodyDecryptor(self._plainkey, header_size, header_size + img_size)
            part, self._head = bytes(self._head), bytearray()
        return self._decrypt.feed(part)

    def _write(self, data: bytes) -> None:
        self._flash_hash.update(data)
        offset = self._flash_offset
        self._bms.write_inactive(offset, data)
        self._flash_offset = offset + len(data)

    def finish(self) -> None:
        """End of stream: check sizes and digests, apply a delta; raises before activation."""
        for part in self._decoder.finish():
            self._take(part)
        comp = self._comp
        if self._stored_count != comp.stored_size or (
            self._stored_hash.digest() != comp.stored_sha256
        ):
            raise HashMismatchError("the received stored bytes differ from the signed manifest")
        if self._produced != comp.payload_size:
            raise ComponentDecodeError(
                f"component decoded to {self._produced} bytes, manifest says {comp.payload_size}"
            )
        if self._patch is not None:
            self._apply_patch()
            return
        if self._payload_hash.digest() != comp.image_sha256:
            raise HashMismatchError("the received image differs from the signed manifest")
        if comp.encryption != "none":
            # The bank holds the plaintext: from now on verify_inactive checks its digest;
            # secure boot checks it against the vendor-signed SHA256 TLV.
            staged = replace(self._staged, sha256=self._flash_hash.digest())
            self._bms._journal(fl.STAGING).write(staged.encode())

    def _apply_patch(self) -> None:
        assert self._patch is not None
        bms = self._bms
        active = other_bank(self._staged.bank)
        read, size = bms._bank_reader(active)
        patch, self._patch = bytes(self._patch), None
        try:
            apply_delta(
                BankReader(read, size),
                patch,
                self._write,
                expected_size=self._comp.image_size,
                expected_sha256=self._comp.image_sha256,
            )
        except DeltaPatchError:
            log.warning("delta patch rejected; the active bank %s is untouched", active)
            raise


def install_encoded(bms: VirtualBms, header: bytes, stored: bytes, *, chunk: int = 512) -> None:
    """The device API sequence for a stored payload, up to and including verify_inactive."""
    check_delta_base(bms, header)
    bms.begin_update(header)
    bms.erase_inactive()
    transfer = EncodedTransfer(bms)
    for offset in range(0, len(stored), chunk):
        transfer.feed(stored[offset : offset + chunk])
    transfer.finish()
    bms.verify_inactive()
