"""Static description of a virtual BMS: identity, pack size, flash layout, timing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bmsfw.sim.flash import FlashSpec

__all__ = ["BootTiming", "DeviceSpec"]


@dataclass(frozen=True)
class BootTiming:
    """Durations of the reboot sequence (typical for a Cortex-M4 BMS at 168 MHz).

    The secure-boot check hashes the image at ``hash_rate_bytes_per_s`` (software
    SHA-256) and verifies one signature; the application then starts its
    peripherals, measures, and runs the self-test.
    """

    contactor_open_s: float = 0.1
    reset_s: float = 0.05
    bootloader_init_s: float = 0.2
    hash_rate_bytes_per_s: float = 2_000_000.0
    signature_verify_s: float = 0.06
    app_start_s: float = 0.8
    self_test_s: float = 2.5
    contactor_close_s: float = 0.1


@dataclass(frozen=True)
class DeviceSpec:
    vendor: str = "Example BMS Vendor"
    model: str = "BMS-16S"
    hw_revision: str = "C"
    bootloader_version: str = "2.1.0"
    cell_count: int = 16
    ntc_count: int = 4
    flash: FlashSpec = field(default_factory=FlashSpec.stm32f4_like)
    timing: BootTiming = field(default_factory=BootTiming)
    watchdog_window_s: float = 300.0  # a test image not confirmed within this is reverted
    # test boots of an unconfirmed image before it is reverted; 1 = MCUboot swap modes
    # (any reset after the test boot without a confirm reverts it)
    max_boot_attempts: int = 1
    integrity_period_s: float = 60.0  # runtime re-hash of the running bank
    model_step_s: float = 1.0  # battery model integration step
    transfer_block_size: int = 1024  # granularity of the written bitmap / block CRCs

    def __post_init__(self) -> None:
        if not 2 <= self.cell_count <= 32 or not 1 <= self.ntc_count <= 16:
            raise ValueError("cell_count must be 2..32 and ntc_count 1..16")
        if self.max_boot_attempts < 1:
            raise ValueError("max_boot_attempts must be at least 1")
        if self.transfer_block_size % self.flash.timing.program_unit_bytes:
            raise ValueError("transfer_block_size must be a multiple of the program unit")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flash"] = self.flash.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceSpec:
        data = dict(data)
        data["flash"] = FlashSpec.from_dict(data["flash"])
        data["timing"] = BootTiming(**data["timing"])
        return cls(**data)
