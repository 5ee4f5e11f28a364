"""Per-product update profile: preflight thresholds, timing and manual confirmations.

The defaults are the field guide's numbers (state of charge 20–80 %, 0–45 °C);
a product overrides them in a TOML file::

    [product]
    name = "PackCo BMS-48"

    [preflight]
    soc_min_pct = 25
    temp_max_c = 40
    supply_window_s = 2.0

    [[confirmation]]
    id = "flammables-removed"
    text = "Flammable materials are removed from around the BMS"

Safety limits can be tightened or moved by a profile but never switched off:
which checks count as safety checks is fixed in :mod:`bmsfw.update.preflight`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmsfw.protocol.smp.dbc import EXAMPLE_MAP, DbcSignalMap
from bmsfw.protocol.smp.link import DbcTelemetrySpec, TelemetrySpecError, parse_telemetry_spec
from bmsfw.update.errors import ProfileInvalidError

__all__ = [
    "DEFAULT_CONFIRMATIONS",
    "OTA_MIN_BANDWIDTH_BPS",
    "SELF_TEST_LIMITS",
    "BootLimits",
    "ManualConfirmation",
    "PreflightLimits",
    "SelfTestLimits",
    "TransferLimits",
    "UpdateProfile",
    "load_profile",
]

#: The field guide: an over-the-air update needs a link of more than 5 Mbit/s. The one
#: copy of that number: the decision core, the product profile and the fleet's campaign
#: default all read it from here.
OTA_MIN_BANDWIDTH_BPS = 5_000_000.0


@dataclass(frozen=True)
class ManualConfirmation:
    id: str
    text: str


@dataclass(frozen=True)
class SelfTestLimits:
    """What the BMS firmware's own self-test demands after an update (the product's numbers).

    The one source of these numbers: the preflight's supply window sits inside them
    (a pack the self-test will reject is stopped before a byte is written), and the
    virtual BMS's self-test uses them.
    """

    supply_min_v: float = 18.0
    supply_max_v: float = 30.0
    cell_cal_tolerance_pct: float = 0.5  # measured cell voltage against the reference
    ntc_min_c: float = -40.0  # a plausible NTC reading
    ntc_max_c: float = 85.0
    ntc_max_spread_c: float = 10.0
    balance_min_drop_v: float = 0.010  # a bleed switch must pull its cell down this much


SELF_TEST_LIMITS = SelfTestLimits()


@dataclass(frozen=True)
class PreflightLimits:
    soc_min_pct: float = 20.0
    soc_max_pct: float = 80.0
    temp_min_c: float = 0.0
    temp_max_c: float = 45.0
    supply_window_s: float = 2.0
    supply_samples: int = 5
    supply_min_v: float = SELF_TEST_LIMITS.supply_min_v
    supply_max_v: float = SELF_TEST_LIMITS.supply_max_v
    supply_max_ripple_pct: float = 3.0  # (max - min) / mean over the window
    link_round_trips: int = 5
    link_max_errors: int = 0
    cell_spread_max_mv: float = 150.0
    # A Bluetooth LE link (SMP over BLE): what the product's link must reach.
    ble_att_mtu_min: int = 65  # below this an SMP frame of 2 KiB takes 35+ ATT writes
    ble_interval_max_ms: float = 50.0
    ble_rssi_min_dbm: float = -85.0  # judged only when the controller reports RSSI
    ble_packets_per_event: int = 4  # ATT writes per connection event, for the estimate
    ble_expected_throughput_bps: float = 0.0  # the product's measured rate; 0: estimate
    # The product is serviced over Bluetooth by design (technician at the pack): the
    # field guide's OTA bandwidth floor does not stop a standard release over BLE.
    ble_service_link: bool = False
    # The field guide's rule for an over-the-air update; a profile may raise it, not lower it.
    ota_min_bandwidth_bps: float = OTA_MIN_BANDWIDTH_BPS


@dataclass(frozen=True)
class TransferLimits:
    monitor_interval_s: float = 0.5  # how often telemetry is watched during the transfer
    # Margins during the transfer: the seed asks to *keep* the pack in the window for the
    # whole procedure, so the same limits apply; a profile may widen them a little.
    soc_min_pct: float = 20.0
    soc_max_pct: float = 80.0
    temp_min_c: float = 0.0
    temp_max_c: float = 45.0
    supply_min_v: float = SELF_TEST_LIMITS.supply_min_v
    supply_max_v: float = SELF_TEST_LIMITS.supply_max_v
    # The slowest average transfer rate accepted, per link type, judged after each
    # block once rate_grace_s has passed: a BMS asking for ISO-TP block size 1 and
    # STmin 127 ms (~55 B/s) is stopped (E524, resumable) instead of holding the host
    # for hours. So the transfer step ends within rate_grace_s + size / floor, plus
    # one block (at most 4 KiB on CAN). SMP (serial console, UDP, Bluetooth LE) gets
    # the RS485 floor: the slowest link a BMS is serviced over. 0 = no floor
    # (in-process sessions).
    min_rate_can_bps: float = 1000.0
    min_rate_rs485_bps: float = 100.0
    min_rate_smp_bps: float = 100.0
    min_rate_other_bps: float = 0.0
    rate_grace_s: float = 10.0

    def min_rate_bps(self, address: str) -> float:
        """The floor for a session reached at ``address`` ("can:…", "modbus:…", "smp:…",
        other)."""
        if address.startswith("can:"):
            return self.min_rate_can_bps
        if address.startswith("modbus:"):
            return self.min_rate_rs485_bps
        if address.startswith("smp:"):
            return self.min_rate_smp_bps
        return self.min_rate_other_bps


@dataclass(frozen=True)
class BootLimits:
    boot_timeout_s: float = 30.0
    # After a failed boot the bootloader reverts by itself; give it this long to show it.
    revert_timeout_s: float = 30.0


DEFAULT_CONFIRMATIONS: tuple[ManualConfirmation, ...] = (
    ManualConfirmation("flammables-removed", "Flammable materials are removed from around the BMS"),
    ManualConfirmation("stable-power", "A stable power source is connected for the whole update"),
)


@dataclass(frozen=True)
class UpdateProfile:
    name: str = "default (field guide values)"
    preflight: PreflightLimits = field(default_factory=PreflightLimits)
    transfer: TransferLimits = field(default_factory=TransferLimits)
    boot: BootLimits = field(default_factory=BootLimits)
    self_test: SelfTestLimits = SELF_TEST_LIMITS
    confirmations: tuple[ManualConfirmation, ...] = DEFAULT_CONFIRMATIONS
    source: str = ""  # file the profile was loaded from, "" for built-in defaults
    # A BMS without the SMP vendor TELEMETRY: its CAN broadcast and DBC file ([telemetry]).
    telemetry: DbcTelemetrySpec | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section(cls: type[Any], raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ProfileInvalidError(f"[{where}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ProfileInvalidError(
                f"unknown key {where}.{key} (known: {', '.join(sorted(known))})"
            )
        default = getattr(cls(), key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ProfileInvalidError(f"{where}.{key} must be true or false, got {value!r}")
            values[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProfileInvalidError(f"{where}.{key} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(value, int):
                raise ProfileInvalidError(f"{where}.{key} must be a whole number, got {value!r}")
            values[key] = value
        else:
            values[key] = float(value)
    return cls(**values)


def _check_window(lo: float, hi: float, what: str) -> None:
    if not lo < hi:
        raise ProfileInvalidError(f"{what}: minimum {lo} must be below maximum {hi}")


def _validate(profile: UpdateProfile) -> None:
    p = profile.preflight
    _check_window(p.soc_min_pct, p.soc_max_pct, "preflight state of charge")
    _check_window(p.temp_min_c, p.temp_max_c, "preflight temperature")
    _check_window(p.supply_min_v, p.supply_max_v, "preflight supply voltage")
    if not 0 <= p.soc_min_pct <= 100 or not 0 <= p.soc_max_pct <= 100:
        raise ProfileInvalidError("preflight state of charge limits must lie within 0–100 %")
    if p.supply_samples < 2 or p.supply_window_s < 0:
        raise ProfileInvalidError("preflight.supply_samples must be >= 2 and supply_window_s >= 0")
    st = profile.self_test
    _check_window(st.supply_min_v, st.supply_max_v, "self-test supply voltage")
    if p.supply_min_v < st.supply_min_v or p.supply_max_v > st.supply_max_v:
        raise ProfileInvalidError(
            f"preflight supply window {p.supply_min_v:g}–{p.supply_max_v:g} V is wider than "
            f"the self-test's {st.supply_min_v:g}–{st.supply_max_v:g} V: a pack the self-test "
            "rejects would be written and activated (narrow preflight.supply_min_v/max_v, "
            "or set [self_test] to the product's numbers)"
        )
    if p.link_round_trips < 1 or p.link_max_errors < 0:
        raise ProfileInvalidError("preflight.link_round_trips must be >= 1, link_max_errors >= 0")
    if p.ota_min_bandwidth_bps < PreflightLimits.ota_min_bandwidth_bps:
        raise ProfileInvalidError(
            f"preflight.ota_min_bandwidth_bps {p.ota_min_bandwidth_bps:g} is below the field "
            f"guide's {PreflightLimits.ota_min_bandwidth_bps:g} bit/s: a profile may raise it, "
            "not lower it (declare ble_service_link for a product serviced over Bluetooth)"
        )
    if p.ble_att_mtu_min < 23 or p.ble_interval_max_ms < 7.5 or p.ble_packets_per_event < 1:
        raise ProfileInvalidError(
            "preflight.ble_att_mtu_min must be >= 23, ble_interval_max_ms >= 7.5, "
            "ble_packets_per_event >= 1 (the Bluetooth LE minimums)"
        )
    if p.ble_expected_throughput_bps < 0:
        raise ProfileInvalidError("preflight.ble_expected_throughput_bps must be >= 0")
    t = profile.transfer
    _check_window(t.soc_min_pct, t.soc_max_pct, "transfer state of charge")
    _check_window(t.temp_min_c, t.temp_max_c, "transfer temperature")
    _check_window(t.supply_min_v, t.supply_max_v, "transfer supply voltage")
    if t.monitor_interval_s <= 0:
        raise ProfileInvalidError("transfer.monitor_interval_s must be > 0")
    if min(t.min_rate_can_bps, t.min_rate_rs485_bps, t.min_rate_smp_bps, t.min_rate_other_bps) < 0:
        raise ProfileInvalidError("transfer.min_rate_*_bps must be >= 0")
    if t.rate_grace_s <= 0:
        raise ProfileInvalidError("transfer.rate_grace_s must be > 0")
    if profile.boot.boot_timeout_s <= 0 or profile.boot.revert_timeout_s <= 0:
        raise ProfileInvalidError("boot timeouts must be > 0")


def load_profile(path: str | Path | None) -> UpdateProfile:
    """Read a profile TOML file; ``None`` gives the built-in defaults (the seed's values)."""
    if path is None:
        return UpdateProfile()
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileInvalidError(f"cannot read profile {file}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileInvalidError(f"profile {file} is not valid TOML: {exc}") from exc
    unknown = set(raw) - {
        "product",
        "preflight",
        "transfer",
        "boot",
        "self_test",
        "confirmation",
        "telemetry",
    }
    if unknown:
        raise ProfileInvalidError(f"unknown section(s) in {file}: {', '.join(sorted(unknown))}")
    product = raw.get("product", {})
    name = product.get("name", file.stem) if isinstance(product, dict) else file.stem
    confirmations = DEFAULT_CONFIRMATIONS
    if "confirmation" in raw:
        items = raw["confirmation"]
        if not isinstance(items, list):
            raise ProfileInvalidError("[[confirmation]] must be an array of tables")
        parsed: list[ManualConfirmation] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise ProfileInvalidError("each [[confirmation]] needs a string `id` and `text`")
            if not isinstance(item.get("text"), str):
                raise ProfileInvalidError(f"confirmation {item['id']!r} needs a string `text`")
            parsed.append(ManualConfirmation(item["id"], item["text"]))
        ids = [c.id for c in parsed]
        if len(set(ids)) != len(ids):
            raise ProfileInvalidError(f"confirmation ids must be unique: {ids}")
        confirmations = tuple(parsed)
    # The transfer window defaults to the preflight window of *this* profile, so a
    # product that narrows preflight also narrows what is watched during the transfer.
    # The supply window defaults to what this product's self-test demands.
    self_test = _section(SelfTestLimits, raw.get("self_test"), "self_test")
    preflight_raw = dict(raw.get("preflight") or {})
    for key in ("supply_min_v", "supply_max_v"):
        preflight_raw.setdefault(key, getattr(self_test, key))
    preflight = _section(PreflightLimits, preflight_raw, "preflight")
    transfer_raw = dict(raw.get("transfer") or {})
    for key in ("soc_min_pct", "soc_max_pct", "temp_min_c", "temp_max_c"):
        transfer_raw.setdefault(key, getattr(preflight, key))
    for key in ("supply_min_v", "supply_max_v"):
        transfer_raw.setdefault(key, getattr(preflight, key))
    profile = UpdateProfile(
        name=str(name),
        preflight=preflight,
        transfer=_section(TransferLimits, transfer_raw, "transfer"),
        boot=_section(BootLimits, raw.get("boot"), "boot"),
        self_test=self_test,
        confirmations=confirmations,
        source=str(file),
        telemetry=_telemetry(raw.get("telemetry"), file),
    )
    _validate(profile)
    return profile


_SIGNAL_KEYS = {f.name for f in dataclasses.fields(DbcSignalMap)}


def _telemetry(raw: Any, file: Path) -> DbcTelemetrySpec | None:
    """``[telemetry]``: ``source = "dbc:FILE@CANLINK"`` (FILE relative to the profile) or
    ``"smp"``, ``window_s``, and ``[telemetry.signals]`` naming each value's
    ``MESSAGE.SIGNAL`` (default: the virtual BMS's map, bmsfw.protocol.smp.dbc)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), str):
        raise ProfileInvalidError('[telemetry] needs source = "dbc:FILE@CANLINK" or "smp"')
    unknown = set(raw) - {"source", "window_s", "signals"}
    if unknown:
        raise ProfileInvalidError(f"unknown key(s) in [telemetry]: {', '.join(sorted(unknown))}")
    try:
        spec = parse_telemetry_spec(raw["source"], origin=f"profile {file.name} [telemetry]")
    except TelemetrySpecError as exc:
        raise ProfileInvalidError(exc.message) from exc
    if spec is None:
        return None
    window_s = raw.get("window_s", 1.0)
    if isinstance(window_s, bool) or not isinstance(window_s, int | float) or window_s <= 0:
        raise ProfileInvalidError(f"telemetry.window_s must be a number > 0, got {window_s!r}")
    mapping = EXAMPLE_MAP
    if "signals" in raw:
        mapping = _signal_map(raw["signals"])
    path = spec.dbc_path if spec.dbc_path.is_absolute() else file.parent / spec.dbc_path
    return dataclasses.replace(spec, dbc_path=path, mapping=mapping, window_s=float(window_s))


def _signal_map(raw: Any) -> DbcSignalMap:
    if not isinstance(raw, dict):
        raise ProfileInvalidError("[telemetry.signals] must be a table")
    unknown = set(raw) - _SIGNAL_KEYS
    if unknown:
        raise ProfileInvalidError(
            f"unknown key(s) in [telemetry.signals]: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_SIGNAL_KEYS))})"
        )

    def signal(value: Any, key: str) -> str:
        if not isinstance(value, str) or value.count(".") != 1:
            raise ProfileInvalidError(f"telemetry.signals.{key}: expected MESSAGE.SIGNAL")
        return value

    def many(key: str) -> tuple[str, ...]:
        value = raw.get(key)
        if not isinstance(value, list) or not value:
            raise ProfileInvalidError(f"telemetry.signals.{key}: a list of MESSAGE.SIGNAL")
        return tuple(signal(v, key) for v in value)

    faults = raw.get("faults", {})
    if not isinstance(faults, dict):
        raise ProfileInvalidError("telemetry.signals.faults: a table SIGNAL = fault name")
    return DbcSignalMap(
        soc_pct=signal(raw.get("soc_pct"), "soc_pct"),
        pack_voltage_v=signal(raw.get("pack_voltage_v"), "pack_voltage_v"),
        pack_current_a=signal(raw.get("pack_current_a"), "pack_current_a"),
        supply_voltage_v=signal(raw.get("supply_voltage_v"), "supply_voltage_v"),
        cell_voltages_v=many("cell_voltages_v"),
        temperatures_c=many("temperatures_c"),
        faults=tuple((signal(k, "faults"), str(v)) for k, v in faults.items()),
        contactors_closed=signal(raw["contactors_closed"], "contactors_closed")
        if "contactors_closed" in raw
        else "",
    )
