"""What a BMS may say: bounds every protocol client applies to the device's answers.

The host trusts nothing a BMS reports without checking it (docs/threat-model.md,
"A broken or hostile BMS"). The UDS and Modbus decoders check the *form* of each
answer (lengths, counts, field widths); this module holds the checks both share,
so each rule exists once:

* :func:`physical_telemetry` - values no battery can have (a cell above
  ``CELL_V_MAX``, a state of charge above 100 %, a temperature outside
  ``TEMP_C_MIN..TEMP_C_MAX``, a NaN) are refused as a whole answer: the host does
  not update, and does not display as a reading, a BMS whose measurements are
  impossible. These bounds are physics, not policy: the product profile's preflight
  limits (docs/update-procedure.md) are far inside them and judge the plausible
  values that pass here.
* :func:`strict_json` - the JSON documents a BMS sends (configuration, self-test
  detail): bounded in size and depth, finite numbers only (``NaN``/``Infinity``
  are not JSON and are refused), UTF-8.
* :func:`counter_value`, :func:`device_text` - a security counter is a number in
  0..2^32-1; identity texts are bounded and decoded, never interpreted.
* :func:`image_key_hashes` - the fused image-key hashes a BMS reports: at most
  ``MAX_IMAGE_KEYS`` SHA-256 values (32 bytes each), not all zero or all 0xFF.

Every function raises :class:`ValueError` with the field it refused; the client
turns that into its protocol's own error (UDS E363, Modbus E381) or, for values
outside physics, :class:`~bmsfw.protocol.errors.DeviceValueImplausibleError` (E365).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from bmsfw.errors import BmsfwError
from bmsfw.protocol.errors import DeviceValueImplausibleError
from bmsfw.protocol.session import ConfigSnapshot, FlashLayout, Telemetry

_T = TypeVar("_T")

__all__ = [
    "CELL_V_MAX",
    "CURRENT_A_MAX",
    "MAX_DOCUMENT_BYTES",
    "MAX_IMAGE_KEYS",
    "MAX_JSON_DEPTH",
    "MAX_TEXT_CHARS",
    "PACK_V_MAX",
    "SUPPLY_V_MAX",
    "TEMP_C_MAX",
    "TEMP_C_MIN",
    "ImplausibleValue",
    "counter_value",
    "decode_config_document",
    "decoded",
    "device_text",
    "flash_layout",
    "flash_layout_text",
    "image_key_hashes",
    "physical_telemetry",
    "strict_json",
]

#: no lithium, lead or sodium cell sits above this (0xFFFF = 6.5535 V is a "no data" fill)
CELL_V_MAX = 5.0
#: sensor range of automotive/industrial NTCs; below -55 degC or above 150 degC is a fault
TEMP_C_MIN = -55.0
TEMP_C_MAX = 150.0
#: the largest pack bmsfw knows (high-voltage storage strings), its current and BMS supply
PACK_V_MAX = 1500.0
CURRENT_A_MAX = 5000.0
SUPPLY_V_MAX = 100.0
#: a configuration or self-test document from the BMS
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16
#: identity strings (vendor, model, serial, versions)
MAX_TEXT_CHARS = 64
COUNTER_MAX = 0xFFFF_FFFF
#: image-verification keys a BMS may report (MCUboot builds hold one, rarely two)
MAX_IMAGE_KEYS = 4


class ImplausibleValue(ValueError):  # noqa: N818 - a verdict the client maps to E365
    """A well-formed answer with a value no battery can have."""


def _in(value: float, lo: float, hi: float, what: str) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ImplausibleValue(f"{what} {value:g} outside {lo:g}..{hi:g}")


def physical_telemetry(t: Telemetry) -> Telemetry:
    """``t`` unchanged when every value is physically possible; else ImplausibleValue."""
    _in(t.soc_pct, 0.0, 100.0, "state of charge (%)")
    _in(t.pack_voltage_v, 0.0, PACK_V_MAX, "pack voltage (V)")
    _in(t.pack_current_a, -CURRENT_A_MAX, CURRENT_A_MAX, "pack current (A)")
    _in(t.supply_voltage_v, 0.0, SUPPLY_V_MAX, "supply voltage (V)")
    for i, v in enumerate(t.cell_voltages_v):
        _in(v, 0.0, CELL_V_MAX, f"cell {i + 1} voltage (V)")
    for i, c in enumerate(t.temperatures_c):
        _in(c, TEMP_C_MIN, TEMP_C_MAX, f"temperature sensor {i + 1} (°C)")
    return t


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(obj: Any, level: int = 0) -> None:
    if level > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(obj, dict):
        for value in obj.values():
            _depth(value, level + 1)
    elif isinstance(obj, list):
        for value in obj:
            _depth(value, level + 1)


def strict_json(data: bytes, what: str) -> Any:
    """A JSON document from the BMS: bounded size and depth, finite numbers, UTF-8."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{what}: {len(data)} bytes, more than {MAX_DOCUMENT_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not the documented JSON: {exc}") from None
    _depth(doc)
    return doc


def decode_config_document(data: bytes, what: str = "configuration") -> ConfigSnapshot:
    """The configuration document (docs/uds.md DID 0x0150, docs/modbus.md document 1)."""
    doc = strict_json(data, what)
    if not isinstance(doc, dict):
        raise ValueError(f"{what} is not a JSON object")
    schema, config, calibration = (doc.get(k) for k in ("schema_version", "config", "calibration"))
    checksum = doc.get("checksum", "")
    if not isinstance(schema, int) or isinstance(schema, bool) or not 0 <= schema <= 0xFFFF:
        raise ValueError(f"{what}: schema_version {schema!r} is not a number 0..65535")
    if not isinstance(config, Mapping) or not isinstance(calibration, Mapping):
        raise ValueError(f"{what}: config and calibration must be JSON objects")
    if not isinstance(checksum, str) or len(checksum) > 128:
        raise ValueError(f"{what}: checksum is not a hex string")
    return ConfigSnapshot(
        schema_version=schema, config=dict(config), calibration=dict(calibration), checksum=checksum
    )


def counter_value(raw: int | str, what: str = "security counter") -> int:
    """A security counter: a whole number 0..2^32-1 (as an integer or decimal digits)."""
    if isinstance(raw, str):
        text = raw.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 10:
            raise ValueError(f"{what} {raw[:20]!r} is not a number")
        raw = int(text)
    if not 0 <= raw <= COUNTER_MAX:
        raise ValueError(f"{what} {raw} outside 0..{COUNTER_MAX}")
    return raw


def device_text(raw: object, what: str) -> str:
    """An identity string: UTF-8 (undecodable bytes shown as U+FFFD), at most 64 characters."""
    if not isinstance(raw, bytes | bytearray):
        raise ValueError(f"{what}: {type(raw).__name__}, not a byte string")
    text = bytes(raw).decode("utf-8", errors="replace").rstrip("\x00")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{what}: {len(text)} characters, more than {MAX_TEXT_CHARS}")
    return text


def image_key_hashes(hashes: list[bytes], what: str) -> tuple[str, ...]:
    """Fused image-key hashes as lower-case hex: each 32 bytes, at most ``MAX_IMAGE_KEYS``.

    An erased (all 0xFF) or blank (all zero) value is no key: refused, never a match.
    """
    if len(hashes) > MAX_IMAGE_KEYS:
        raise ValueError(f"{what}: {len(hashes)} image keys, more than {MAX_IMAGE_KEYS}")
    out: list[str] = []
    for i, raw in enumerate(hashes):
        if not isinstance(raw, bytes | bytearray) or len(raw) != 32:
            raise ValueError(f"{what}: key hash {i} is not 32 bytes")
        if raw in (bytes(32), b"\xff" * 32):
            raise ValueError(f"{what}: key hash {i} is blank (no key fused)")
        out.append(bytes(raw).hex())
    return tuple(out)


def flash_layout_text(text: str, what: str) -> FlashLayout:
    """``BANK/SECTOR/BANKS`` in decimal (a Modbus identity object), then :func:`flash_layout`."""
    parts = text.split("/")
    if len(parts) != 3 or not all(p.isascii() and p.isdecimal() and len(p) <= 10 for p in parts):
        raise ValueError(f"{what}: {text[:40]!r} is not BANK/SECTOR/BANKS in decimal")
    bank, sector, banks = (int(p) for p in parts)
    if max(bank, sector) > COUNTER_MAX or banks > 255:
        raise ValueError(f"{what}: {text[:40]!r} outside u32/u32/u8")
    return flash_layout(bank, sector, banks, what)


def flash_layout(bank_size: int, sector_size: int, banks: int, what: str) -> FlashLayout:
    """A reported bank geometry with no zero in it; whether an image fits is the update
    core's decision (``core.layout_refusal``), not the decoder's."""
    if bank_size <= 0 or sector_size <= 0 or banks <= 0:
        raise ValueError(
            f"{what}: bank size {bank_size}, sector size {sector_size}, {banks} bank(s): "
            "a zero is no layout"
        )
    return FlashLayout(bank_size, sector_size, banks)


def decoded(what: str, fn: Callable[[], _T], invalid: Callable[[str], BmsfwError]) -> _T:
    """Run a decoder on a device answer; its refusals become the protocol's errors.

    A value outside physics raises E365 (:class:`DeviceValueImplausibleError`); any
    other refusal (``ValueError``, a missing key, a wrong type, a short struct)
    raises ``invalid(message)``: the protocol's own invalid-answer error.
    """
    try:
        return fn()
    except ImplausibleValue as exc:
        raise DeviceValueImplausibleError(f"{what}: {exc}") from None
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
        raise invalid(f"{what}: {exc}") from None
