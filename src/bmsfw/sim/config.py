"""Device configuration and per-unit calibration, with a schema version and safe limits.

Both live in their own NVM journal area (see ``_journal``), stored as canonical
JSON ``{"schema_version": N, "config"|"calibration": {...}}``. A snapshot for
backup/restore (``bmsfw.protocol.session.ConfigSnapshot``) carries both plus a
SHA-256 checksum of their canonical JSON, so a restore can prove it wrote back
exactly what was read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from bmsfw.protocol.device_errors import ConfigChecksumError, ConfigSchemaError, ConfigValueError

__all__ = [
    "CAN_BITRATES_BPS",
    "CONFIG_SCHEMA_VERSION",
    "RS485_BAUDS",
    "Calibration",
    "DeviceConfig",
    "canonical_json",
    "snapshot_checksum",
]

CONFIG_SCHEMA_VERSION = 1
CAN_BITRATES_BPS = (125_000, 250_000, 500_000, 1_000_000)
RS485_BAUDS = (9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def snapshot_checksum(config: Mapping[str, Any], calibration: Mapping[str, Any]) -> str:
    return hashlib.sha256(
        canonical_json({"config": dict(config), "calibration": dict(calibration)})
    ).hexdigest()


# (min, max) per numeric field: the firmware refuses anything outside.
_LIMITS: dict[str, tuple[float, float]] = {
    "cell_overvoltage_v": (3.0, 4.35),
    "cell_undervoltage_v": (2.0, 3.4),
    "overtemperature_c": (30.0, 85.0),
    "undertemperature_c": (-40.0, 10.0),
    "overcurrent_a": (1.0, 1000.0),
    "balance_start_v": (3.0, 4.3),
    "balance_delta_mv": (2.0, 200.0),
    "charge_current_limit_a": (0.0, 1000.0),
    "discharge_current_limit_a": (0.0, 1000.0),
    "capacity_ah": (1.0, 2000.0),
    "rs485_unit_id": (1, 247),
    "rs485_char_timed_gap": (0, 1),
}


@dataclass(frozen=True)
class DeviceConfig:
    """Protection thresholds, balancing, limits, capacity and interface settings."""

    cell_overvoltage_v: float = 4.25
    cell_undervoltage_v: float = 2.80
    overtemperature_c: float = 60.0
    undertemperature_c: float = -20.0
    overcurrent_a: float = 200.0
    balance_start_v: float = 3.90
    balance_delta_mv: float = 15.0
    charge_current_limit_a: float = 100.0
    discharge_current_limit_a: float = 150.0
    capacity_ah: float = 100.0
    can_bitrate_bps: int = 500_000
    rs485_unit_id: int = 1
    rs485_baud: int = 115_200
    # Modbus t3.5 above 19,200 baud: 0 = the spec's fixed 1.75 ms, 1 = 3.5 character
    # times (the UART times the end of a frame in hardware). The host must match it.
    rs485_char_timed_gap: int = 0

    def __post_init__(self) -> None:
        for name, (lo, hi) in _LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigValueError(f"{name} must be a number, got {value!r}")
            if not lo <= value <= hi:
                raise ConfigValueError(f"{name}={value} outside {lo}..{hi}")
        if self.cell_undervoltage_v >= self.cell_overvoltage_v:
            raise ConfigValueError("cell_undervoltage_v must be below cell_overvoltage_v")
        if self.undertemperature_c >= self.overtemperature_c:
            raise ConfigValueError("undertemperature_c must be below overtemperature_c")
        if self.can_bitrate_bps not in CAN_BITRATES_BPS:
            raise ConfigValueError(
                f"can_bitrate_bps={self.can_bitrate_bps} not one of {CAN_BITRATES_BPS}"
            )
        if self.rs485_baud not in RS485_BAUDS:
            raise ConfigValueError(f"rs485_baud={self.rs485_baud} not one of {RS485_BAUDS}")
        for name in ("rs485_unit_id", "rs485_char_timed_gap"):
            if not isinstance(getattr(self, name), int):
                raise ConfigValueError(f"{name} must be an integer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigSchemaError(f"unknown config fields {sorted(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class Calibration:
    """Per-unit calibration written at the factory end-of-line test."""

    cell_gain: tuple[float, ...]
    cell_offset_v: tuple[float, ...]
    ntc_offset_c: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.cell_gain) != len(self.cell_offset_v):
            raise ConfigValueError("cell_gain and cell_offset_v must have one entry per cell")
        for i, g in enumerate(self.cell_gain):
            if not 0.95 <= g <= 1.05:
                raise ConfigValueError(f"cell_gain[{i}]={g} outside 0.95..1.05")
        for i, o in enumerate(self.cell_offset_v):
            if not -0.05 <= o <= 0.05:
                raise ConfigValueError(f"cell_offset_v[{i}]={o} outside -0.05..0.05")
        for i, t in enumerate(self.ntc_offset_c):
            if not -5.0 <= t <= 5.0:
                raise ConfigValueError(f"ntc_offset_c[{i}]={t} outside -5..5")

    @classmethod
    def identity(cls, cells: int, ntcs: int) -> Calibration:
        return cls((1.0,) * cells, (0.0,) * cells, (0.0,) * ntcs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell_gain": list(self.cell_gain),
            "cell_offset_v": list(self.cell_offset_v),
            "ntc_offset_c": list(self.ntc_offset_c),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        try:
            return cls(
                tuple(float(x) for x in data["cell_gain"]),
                tuple(float(x) for x in data["cell_offset_v"]),
                tuple(float(x) for x in data["ntc_offset_c"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigSchemaError(f"calibration record malformed: {exc}") from exc


def encode_record(kind: str, value: Mapping[str, Any]) -> bytes:
    return canonical_json({"schema_version": CONFIG_SCHEMA_VERSION, kind: dict(value)})


def decode_record(kind: str, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigSchemaError(f"{kind} record is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") != CONFIG_SCHEMA_VERSION:
        version = data.get("schema_version") if isinstance(data, dict) else None
        raise ConfigSchemaError(
            f"{kind} schema version {version!r}, this firmware reads {CONFIG_SCHEMA_VERSION}"
        )
    body = data.get(kind)
    if not isinstance(body, dict):
        raise ConfigSchemaError(f"{kind} record lacks its body")
    return body


def check_snapshot(
    schema_version: int, config: Mapping[str, Any], calibration: Mapping[str, Any], checksum: str
) -> tuple[DeviceConfig, Calibration]:
    if schema_version != CONFIG_SCHEMA_VERSION:
        raise ConfigSchemaError(
            f"snapshot schema version {schema_version}, device uses {CONFIG_SCHEMA_VERSION}"
        )
    if snapshot_checksum(config, calibration) != checksum:
        raise ConfigChecksumError("snapshot checksum does not match its config and calibration")
    return DeviceConfig.from_dict(config), Calibration.from_dict(calibration)
