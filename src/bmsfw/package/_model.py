"""Small value types shared by images, manifests and verification."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bmsfw.package.errors import InvalidManifestError

__all__ = ["DeviceFacts", "HardwareCompat"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-/ ]{0,63}$")


@dataclass(frozen=True)
class HardwareCompat:
    """Which BMS hardware a release or image runs on: one model, one or more revisions."""

    model: str
    revisions: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not _NAME_RE.match(self.model):
            raise InvalidManifestError(f"hardware model {self.model!r} is not a valid name")
        if not isinstance(self.revisions, tuple) or not self.revisions:
            raise InvalidManifestError("hardware compatibility needs at least one revision")
        for rev in self.revisions:
            if not isinstance(rev, str) or not _NAME_RE.match(rev) or len(rev) > 32:
                raise InvalidManifestError(f"hardware revision {rev!r} is not a valid name")
        if len(set(self.revisions)) != len(self.revisions):
            raise InvalidManifestError(f"hardware revisions repeat: {self.revisions}")

    def accepts(self, model: str, revision: str) -> bool:
        return model == self.model and revision in self.revisions


@dataclass(frozen=True)
class DeviceFacts:
    """What the verifier knows about the target BMS (read during identification)."""

    model: str
    hw_revision: str
    bootloader_version: str
    security_counter: int
    channel: Literal["wired", "ota"] = "wired"
    # The image-verification key hashes the BMS reports fused for secure boot (MCUboot
    # KEYHASH values); empty: not reported. An image signed by another key is then refused
    # before the transfer (:func:`bmsfw.package.image_key_refusal`).
    image_key_hashes: tuple[bytes, ...] = ()
    # The version the device runs, as a BMS judges an OTA header itself: over the air it
    # never takes a lower version (BMSFW-E145) unless the staging request says a person
    # authorised this downgrade. "" on the host, where the update core judges the version
    # with the operator's explicit downgrade reason.
    running_version: str = ""
    # The staging request carried the authorised-downgrade flag: the host's update core
    # allowed this downgrade with a person's reason (``bmsfw update --allow-downgrade``,
    # or an approved downgrade campaign on a gateway that accepts them), docs/fleet.md.
    downgrade_authorised: bool = False
