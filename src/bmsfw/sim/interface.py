"""The device-side interface of the virtual BMS: what its protocol servers call.

The UDS server (:mod:`bmsfw.sim.uds_server`), the Modbus RTU server
(:mod:`bmsfw.sim.modbus_server`) and any further server of the virtual BMS
(an MCUmgr SMP server, for one) talk to the BMS through :class:`BmsDevice` and
nothing else; :class:`~bmsfw.sim.bms.VirtualBms` implements it. A server keeps
only what belongs to its protocol (sessions, security access, the transfer window,
its wire encoding and its error codes); every fact about the firmware and every
decision about it (what may be confirmed, what a rollback may do, whether a
release is accepted) is the device's, so two protocols can never disagree.

Refusals are :class:`~bmsfw.errors.BmsfwError` subclasses (device errors E2xx,
package errors E1xx for content), which each server maps to its own answer
(NRC, exception code + result register). While the BMS boots, everything except
:meth:`BmsDevice.boot_status` raises ``DeviceNotRunningError``; after a power cut
everything raises ``PowerCutError``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Literal, Protocol

from bmsfw.package import Component, ImageInfo
from bmsfw.protocol.session import (
    BootStatus,
    ConfigSnapshot,
    DeviceIdentity,
    SelfTestResult,
    Telemetry,
)
from bmsfw.sim.records import DtcRecord, TransferStatus

if TYPE_CHECKING:
    from bmsfw.sim._stream_decode import EncodedTransfer

__all__ = ["BmsDevice"]


class BmsDevice(Protocol):
    """One BMS as its protocol servers see it (implemented by ``VirtualBms``)."""

    # -- power and time ---------------------------------------------------------
    @property
    def run_state(self) -> Literal["application", "booting", "self-test", "bootloader", "off"]:
        """``application`` / ``bootloader`` answer requests; the others are silent."""
        ...

    @property
    def dead(self) -> bool:
        """Lost power (a power cut): silent until a new instance powers it on."""
        ...

    @property
    def boot_epoch(self) -> tuple[int, int]:
        """Changes at every MCU reset: servers end sessions and authentication then."""
        ...

    def responsive(self) -> bool:
        """Whether a real BMS would answer on the bus now (running, not booting, powered)."""
        ...

    def poll(self) -> None:
        """Let the firmware catch up with the clock (boot, self-test, watchdog)."""
        ...

    def now(self) -> dt.datetime:
        """The BMS's wall clock (certificate validity is checked against it)."""
        ...

    def root_key_hash(self) -> bytes:
        """SHA-256 of the vendor root key, fused in OTP (the trust anchor for testers)."""
        ...

    # -- reads ------------------------------------------------------------------
    def identity(self) -> DeviceIdentity: ...
    def telemetry(self) -> Telemetry: ...
    def boot_status(self) -> BootStatus: ...

    def self_test(self) -> SelfTestResult:
        """The record of the self-test of this boot (DeviceNotRunningError before it ran)."""
        ...

    def image_digest(self) -> bytes:
        """SHA-256 of the image in the active bank (the base a delta release names)."""
        ...

    def dtcs(self) -> tuple[DtcRecord, ...]: ...
    def clear_dtcs(self) -> None: ...
    def config_snapshot(self) -> ConfigSnapshot: ...

    def restore_snapshot(self, snapshot: ConfigSnapshot) -> None:
        """Write configuration and calibration (checksum and schema checked first)."""
        ...

    # -- update -----------------------------------------------------------------
    def check_release(self, header: bytes) -> None:
        """Refusals that must come before the erase: delta base, decryption key."""
        ...

    def begin_update(
        self,
        header: bytes,
        *,
        channel: Literal["wired", "ota"] = "wired",
        downgrade_authorised: bool = False,
    ) -> TransferStatus:
        """Verify a release header and stage it (the same header again resumes);
        ``downgrade_authorised``: the request said a person authorised a downgrade."""
        ...

    def staged_component(self) -> Component | None:
        """The app component of the staged release header, if any."""
        ...

    def staged_size(self) -> int | None: ...
    def transfer_status(self) -> TransferStatus: ...
    def bank_blank(self) -> bool: ...
    def block_crcs(self) -> tuple[int, ...]: ...
    def erase_inactive(self) -> None: ...
    def write_inactive(self, offset: int, data: bytes) -> int: ...

    def begin_encoded(self) -> EncodedTransfer:
        """A decoder for the staged component's stored bytes (compressed, delta, encrypted)."""
        ...

    def verify_inactive(self) -> ImageInfo: ...
    def activate(self) -> None: ...
    def reset(self) -> None: ...

    def confirm(self) -> None:
        """Confirm the running test image; refused after a revert (nothing to confirm)."""
        ...

    def rollback(self) -> None:
        """Back to the other bank; refused when it holds a rejected or no valid image."""
        ...

    def abort_update(self) -> None: ...
