"""Factory provisioning: make a state directory hold a brand-new, end-of-line-tested BMS.

What the factory station does, in order: program the bootloader (with the
vendor's image-signing public key compiled in, as MCUboot has it, so images that
carry only the key's hash can be verified), fuse OTP
(vendor root-key hash, image-signing key hash, initial security counter, lock),
program the initial application into bank A and mark it confirmed, write the
default configuration and the unit's calibration (measured against the
board's own ADC and NTC errors, so the ±0.5 % self-test passes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bmsfw.errors import PackageError
from bmsfw.package import key_hash, load_public_key, public_key_der, verify_image
from bmsfw.protocol.device_errors import ProvisioningError, StateDirectoryError
from bmsfw.sim import flash as fl
from bmsfw.sim._journal import Journal
from bmsfw.sim._state import BootRecord, atomic_write, write_json
from bmsfw.sim.battery import BoardState
from bmsfw.sim.clock import SimClock
from bmsfw.sim.config import Calibration, DeviceConfig, encode_record
from bmsfw.sim.flash import Flash
from bmsfw.sim.otp import Otp
from bmsfw.sim.spec import DeviceSpec

__all__ = ["BOOTLOADER_KEY_OFFSET", "factory_calibration", "provision", "read_bootloader_key"]

#: Where the bootloader blob keeps the image-signing public key: magic, u16 length, DER.
BOOTLOADER_KEY_OFFSET = 0x400
_KEY_MAGIC = b"BMSKEY01"


def read_bootloader_key(bootloader: bytes | memoryview) -> bytes | None:
    """The image-signing public key (DER) compiled into the bootloader, if any."""
    raw = bytes(bootloader[BOOTLOADER_KEY_OFFSET : BOOTLOADER_KEY_OFFSET + 10])
    if raw[:8] != _KEY_MAGIC:
        return None
    length = int.from_bytes(raw[8:10], "little")
    start = BOOTLOADER_KEY_OFFSET + 10
    return bytes(bootloader[start : start + length])


log = logging.getLogger(__name__)


def factory_calibration(board: BoardState) -> Calibration:
    """The end-of-line calibration: cancels this board's ADC gain and NTC offset errors."""
    return Calibration(
        cell_gain=tuple(round(1.0 / g, 6) for g in board.adc_gain_inherent),
        cell_offset_v=(0.0,) * len(board.adc_gain_inherent),
        ntc_offset_c=tuple(round(-o, 3) for o in board.ntc_offset_inherent_c),
    )


def provision(
    state_dir: str | Path,
    *,
    initial_image: bytes,
    root_key_hash: bytes,
    image_key_hash: bytes,
    image_public_key: bytes | None = None,
    security_counter: int | None = None,
    spec: DeviceSpec | None = None,
    serial: str = "BMS0000001",
    config: DeviceConfig | None = None,
    calibration: Calibration | None = None,
    soc_pct: float = 50.0,
) -> Path:
    """Create a factory-fresh device in ``state_dir`` (must be empty or absent).

    ``initial_image`` is a signed MCUboot image that must verify against
    ``image_key_hash``; ``security_counter`` defaults to the image's own.
    ``image_public_key`` (PEM or DER, hashing to ``image_key_hash``) goes into the
    bootloader, so it can verify images that carry only the key's hash (imgtool's
    default); without it such images are refused.
    """
    spec = spec or DeviceSpec()
    path = Path(state_dir)
    if path.exists() and any(path.iterdir()):
        raise StateDirectoryError(f"{path} is not empty; refusing to provision over a device")
    key_der: bytes | None = None
    if image_public_key is not None:
        try:
            key_der = public_key_der(load_public_key(image_public_key))
        except PackageError as exc:
            raise ProvisioningError(f"image public key unreadable: {exc}") from exc
        if key_hash(key_der) != image_key_hash:
            raise ProvisioningError("the image public key does not hash to image_key_hash")
    try:
        info = verify_image(
            initial_image,
            key_hashes=[image_key_hash],
            public_keys=[key_der] if key_der is not None else (),
        )
    except PackageError as exc:
        raise ProvisioningError(f"initial image does not pass secure boot: {exc}") from exc
    if len(initial_image) > spec.flash.bank_size:
        raise ProvisioningError(
            f"initial image of {len(initial_image)} bytes exceeds the bank ({spec.flash.bank_size})"
        )
    counter = info.security_counter or 0 if security_counter is None else security_counter
    if info.security_counter is not None and info.security_counter < counter:
        raise ProvisioningError(
            f"initial image security counter {info.security_counter} below the fused {counter}"
        )
    path.mkdir(parents=True, exist_ok=True)
    flash_path = path / "flash.bin"
    Flash.create_blank(flash_path, spec.flash)
    flash = Flash(flash_path, spec.flash, SimClock())
    try:
        blob = f"BMSFW-BOOTLOADER {spec.bootloader_version} MCUboot-compatible\0".encode()
        flash.program(fl.BOOTLOADER, 0, blob)
        if key_der is not None:
            record = _KEY_MAGIC + len(key_der).to_bytes(2, "little") + key_der
            flash.program(fl.BOOTLOADER, BOOTLOADER_KEY_OFFSET, record)
        Otp(flash).fuse(
            root_key_hash=root_key_hash, image_key_hash=image_key_hash, security_counter=counter
        )
        flash.program(fl.BANK_A, 0, initial_image)
        Journal(flash, fl.BOOTSTATE).write(BootRecord(active="A").encode())
        board = BoardState.fresh(
            spec.cell_count, spec.ntc_count, serial=serial, soc=soc_pct / 100.0
        )
        cal = calibration or factory_calibration(board)
        Journal(flash, fl.CONFIG).write(
            encode_record("config", (config or DeviceConfig()).to_dict())
        )
        Journal(flash, fl.CALIBRATION).write(encode_record("calibration", cal.to_dict()))
        Journal(flash, fl.DTC).write(b"[]")
    finally:
        flash.close()
    write_json(path / "board.json", board.to_dict())
    atomic_write(
        path / "device.json",
        json.dumps({"serial": serial, "spec": spec.to_dict()}, indent=1, sort_keys=True).encode(),
    )
    log.info("provisioned %s in %s (image %s, counter %d)", serial, path, info.version, counter)
    return path
