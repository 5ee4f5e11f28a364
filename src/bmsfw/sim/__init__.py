"""The virtual BMS: a simulated smart BMS, faithful for everything an update touches.

Dual-bank flash with MCU timing and power-cut injection, OTP key hashes and
anti-rollback counter, an MCUboot-semantics bootloader (test boot, confirm,
automatic revert), self-test, runtime integrity, an equivalent-circuit battery
model and fault injection, all persisted in a state directory and driven by a
caller-controlled clock. Protocol servers (UDS, Modbus) call :class:`VirtualBms`
through one device-side interface, :class:`BmsDevice`. See docs/virtual-bms.md.
"""

from bmsfw.sim._state import BootRecord
from bmsfw.sim.battery import BatteryModel, BoardState
from bmsfw.sim.bms import DTC_CODES, FaultInjector, VirtualBms
from bmsfw.sim.clock import Clock, RealClock, SimClock
from bmsfw.sim.config import CONFIG_SCHEMA_VERSION, Calibration, DeviceConfig
from bmsfw.sim.flash import FlashSpec, FlashTiming, PowerCutInjector
from bmsfw.sim.images import BEHAVIOURS, AppDescriptor, find_app_descriptor, make_app_payload
from bmsfw.sim.interface import BmsDevice
from bmsfw.sim.provision import factory_calibration, provision
from bmsfw.sim.records import BankInfo, DtcRecord, TransferStatus
from bmsfw.sim.spec import BootTiming, DeviceSpec

__all__ = [
    "BEHAVIOURS",
    "CONFIG_SCHEMA_VERSION",
    "DTC_CODES",
    "AppDescriptor",
    "BankInfo",
    "BatteryModel",
    "BmsDevice",
    "BoardState",
    "BootRecord",
    "BootTiming",
    "Calibration",
    "Clock",
    "DeviceConfig",
    "DeviceSpec",
    "DtcRecord",
    "FaultInjector",
    "FlashSpec",
    "FlashTiming",
    "PowerCutInjector",
    "RealClock",
    "SimClock",
    "TransferStatus",
    "VirtualBms",
    "factory_calibration",
    "find_app_descriptor",
    "make_app_payload",
    "provision",
]
