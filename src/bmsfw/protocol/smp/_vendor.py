"""smpclient request/response types of the BMS vendor group (docs/smp.md).

Each request names its response and error types the way smpclient's own
requests do, so ``SMPClient.request`` validates every answer.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from pydantic import Field
from smp import error as smperr
from smp import message as smpmsg

from bmsfw.protocol.smp.groups import BMS_GROUP, BmsCommand

__all__ = [
    "AuthChallengeRead",
    "AuthProveWrite",
    "BootStatusRead",
    "IdentityRead",
    "ImageDigestRead",
    "LastErrorRead",
    "RollbackWrite",
    "SelfTestRead",
    "TelemetryRead",
    "UploadStatusRead",
]


class BMS_ERR(IntEnum):  # noqa: N801 - named like smp's IMG_MGMT_ERR
    """Group-specific result codes (the BMS answers generic MGMT_ERR codes instead)."""

    OK = 0


class BmsErrorV1(smperr.ErrorV1):
    _GROUP_ID = BMS_GROUP


class BmsErrorV2(smperr.ErrorV2[BMS_ERR]):
    _GROUP_ID = BMS_GROUP


class _Read(smpmsg.ReadRequest):
    _GROUP_ID = BMS_GROUP
    _ErrorV1 = BmsErrorV1
    _ErrorV2 = BmsErrorV2


class _Write(smpmsg.WriteRequest):
    _GROUP_ID = BMS_GROUP
    _ErrorV1 = BmsErrorV1
    _ErrorV2 = BmsErrorV2


class _ReadResponse(smpmsg.ReadResponse):
    _GROUP_ID = BMS_GROUP


class _WriteResponse(smpmsg.WriteResponse):
    _GROUP_ID = BMS_GROUP


class IdentityResponse(_ReadResponse):
    _COMMAND_ID = BmsCommand.IDENTITY
    vendor: str
    model: str
    hw_revision: str
    serial: str
    bootloader_version: str
    app_version: str
    security_counter: int
    active_bank: str
    # SHA-256 of each fused image key (docs/smp.md); a BMS without the field reports none
    image_key_hashes: list[bytes] = Field(default_factory=list)
    # the image banks [bank size, sector size, banks] in bytes (docs/smp.md); a BMS
    # without the field does not report them
    flash_layout: list[int] = Field(default_factory=list)


class IdentityRead(_Read):
    _COMMAND_ID = BmsCommand.IDENTITY
    _Response = IdentityResponse


class TelemetryResponse(_ReadResponse):
    _COMMAND_ID = BmsCommand.TELEMETRY
    soc_pct: float
    pack_voltage_v: float
    pack_current_a: float
    cell_voltages_v: list[float]
    temperatures_c: list[float]
    supply_voltage_v: float
    faults: list[str]
    contactors_closed: bool


class TelemetryRead(_Read):
    _COMMAND_ID = BmsCommand.TELEMETRY
    _Response = TelemetryResponse


class BootStatusResponse(_ReadResponse):
    _COMMAND_ID = BmsCommand.BOOT_STATUS
    run_state: str
    active_bank: str
    running_version: str
    image_state: str
    boot_count: int
    security_counter: int
    last_revert_reason: str


class BootStatusRead(_Read):
    _COMMAND_ID = BmsCommand.BOOT_STATUS
    _Response = BootStatusResponse


class SelfTestResponse(_ReadResponse):
    _COMMAND_ID = BmsCommand.SELF_TEST
    state: str  # "passed", "failed" or "none" (no self-test since the last reset)
    firmware: str  # the version of the firmware that ran it
    checks: list[dict[str, Any]]


class SelfTestRead(_Read):
    _COMMAND_ID = BmsCommand.SELF_TEST
    _Response = SelfTestResponse


class LastErrorResponse(_ReadResponse):
    _COMMAND_ID = BmsCommand.LAST_ERROR
    code: str
    text: str


class LastErrorRead(_Read):
    _COMMAND_ID = BmsCommand.LAST_ERROR
    _Response = LastErrorResponse


class AuthChallengeResponse(_ReadResponse):
    _COMMAND_ID = BmsCommand.AUTH
    challenge: bytes


class AuthChallengeRead(_Read):
    _COMMAND_ID = BmsCommand.AUTH
    _Response = AuthChallengeResponse


class AuthProveResponse(_WriteResponse):
    _COMMAND_ID = BmsCommand.AUTH


class AuthProveWrite(_Write):
    _COMMAND_ID = BmsCommand.AUTH
    _Response = AuthProveResponse
    chain: bytes  # DER certificates, leaf first
    signature: bytes  # over the challenge


class RollbackResponse(_WriteResponse):
    _COMMAND_ID = BmsCommand.ROLLBACK


class RollbackWrite(_Write):
    _COMMAND_ID = BmsCommand.ROLLBACK
    _Response = RollbackResponse


class ImageDigestResponse(_ReadResponse):
    _COMMAND_ID = BmsCommand.IMAGE_DIGEST
    sha256: bytes


class ImageDigestRead(_Read):
    _COMMAND_ID = BmsCommand.IMAGE_DIGEST
    _Response = ImageDigestResponse


class UploadStatusResponse(_ReadResponse):
    _COMMAND_ID = BmsCommand.UPLOAD_STATUS
    len: int
    off: int
    sha: bytes
    image_version: str


class UploadStatusRead(_Read):
    _COMMAND_ID = BmsCommand.UPLOAD_STATUS
    _Response = UploadStatusResponse
