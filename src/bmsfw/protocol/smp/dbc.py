"""BMS telemetry from CAN broadcast frames, decoded with the vendor's DBC file (cantools).

For a Zephyr/MCUboot BMS that has no SMP vendor group: most BMS broadcast their
state on CAN anyway (state of charge, voltages, temperatures, fault flags), and
their vendor describes those frames in a DBC file. :class:`DbcTelemetrySource`
listens on the CAN link for a short window, decodes the frames with
``cantools`` and maps DBC signals to the preflight's values with a
:class:`DbcSignalMap` (the product profile names the signals); every value says
where it came from (``dbc:MESSAGE.SIGNAL``), so the report can show it.

:data:`EXAMPLE_DBC` is the DBC of bmsfw's virtual BMS (``smp_server
--can-broadcast``), and :data:`EXAMPLE_MAP` its mapping: a starting point for a
product's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bmsfw.protocol.session import Telemetry
from bmsfw.protocol.smp.errors import DbcFileError, SmpNoResponseError

__all__ = ["EXAMPLE_DBC", "EXAMPLE_MAP", "DbcSignalMap", "DbcTelemetry", "DbcTelemetrySource"]

EXAMPLE_DBC = Path(__file__).with_name("data") / "virtual-bms.dbc"


@dataclass(frozen=True)
class DbcSignalMap:
    """Which ``MESSAGE.SIGNAL`` of the DBC gives which telemetry value.

    ``faults`` maps a one-bit signal (1 = active) to the protection fault's name;
    ``contactors_closed`` is a one-bit signal, or "" when the BMS does not send it.
    """

    soc_pct: str
    pack_voltage_v: str
    pack_current_a: str
    supply_voltage_v: str
    cell_voltages_v: tuple[str, ...]
    temperatures_c: tuple[str, ...]
    faults: tuple[tuple[str, str], ...] = ()
    contactors_closed: str = ""

    def signals(self) -> list[str]:
        scalar = [self.soc_pct, self.pack_voltage_v, self.pack_current_a, self.supply_voltage_v]
        flags = [signal for signal, _ in self.faults]
        extra = [self.contactors_closed] if self.contactors_closed else []
        return [*scalar, *self.cell_voltages_v, *self.temperatures_c, *flags, *extra]


EXAMPLE_MAP = DbcSignalMap(
    soc_pct="BMS_Status.SOC",
    pack_voltage_v="BMS_Status.PackVoltage",
    pack_current_a="BMS_Status.PackCurrent",
    supply_voltage_v="BMS_Status.SupplyVoltage",
    cell_voltages_v=tuple(
        f"BMS_Cells_{4 * (n // 4) + 1}_{4 * (n // 4) + 4}.Cell{n + 1}" for n in range(16)
    ),
    temperatures_c=tuple(f"BMS_Temperatures.T{n + 1}" for n in range(4)),
    faults=(
        ("BMS_Status.CellOvervoltage", "cell_overvoltage"),
        ("BMS_Status.CellUndervoltage", "cell_undervoltage"),
        ("BMS_Status.Overtemperature", "overtemperature"),
        ("BMS_Status.Undertemperature", "undertemperature"),
        ("BMS_Status.Overcurrent", "overcurrent"),
    ),
    contactors_closed="BMS_Status.ContactorsClosed",
)


@dataclass(frozen=True)
class DbcTelemetry:
    """Decoded telemetry and, for each of its fields, the signal(s) it came from."""

    telemetry: Telemetry
    sources: dict[str, str] = field(default_factory=dict)


def decode_telemetry(values: dict[str, float], mapping: DbcSignalMap) -> DbcTelemetry:
    """Pure: ``MESSAGE.SIGNAL -> value`` to telemetry; raises KeyError for a missing signal."""

    def many(signals: tuple[str, ...]) -> tuple[float, ...]:
        return tuple(float(values[s]) for s in signals)

    def messages(signals: tuple[str, ...]) -> str:
        return "dbc:" + ",".join(dict.fromkeys(s.split(".")[0] for s in signals))

    telemetry = Telemetry(
        soc_pct=float(values[mapping.soc_pct]),
        pack_voltage_v=float(values[mapping.pack_voltage_v]),
        pack_current_a=float(values[mapping.pack_current_a]),
        cell_voltages_v=many(mapping.cell_voltages_v),
        temperatures_c=many(mapping.temperatures_c),
        supply_voltage_v=float(values[mapping.supply_voltage_v]),
        faults=tuple(name for signal, name in mapping.faults if values[signal]),
        contactors_closed=bool(values[mapping.contactors_closed])
        if mapping.contactors_closed
        else True,
    )
    sources = {
        "soc_pct": f"dbc:{mapping.soc_pct}",
        "pack_voltage_v": f"dbc:{mapping.pack_voltage_v}",
        "pack_current_a": f"dbc:{mapping.pack_current_a}",
        "supply_voltage_v": f"dbc:{mapping.supply_voltage_v}",
        "cell_voltages_v": messages(mapping.cell_voltages_v),
        "temperatures_c": messages(mapping.temperatures_c),
        "faults": messages(tuple(s for s, _ in mapping.faults)) if mapping.faults else "none",
        "contactors_closed": f"dbc:{mapping.contactors_closed}"
        if mapping.contactors_closed
        else "not broadcast",
    }
    return DbcTelemetry(telemetry, sources)


class DbcTelemetrySource:
    """Listens on a CAN link and decodes the BMS's broadcast frames with a DBC file."""

    def __init__(
        self,
        dbc_path: str | Path,
        can_link: str,
        mapping: DbcSignalMap = EXAMPLE_MAP,
        *,
        window_s: float = 1.0,
    ) -> None:
        import cantools

        try:
            database = cantools.database.load_file(str(dbc_path))
        except OSError as exc:
            raise DbcFileError(f"cannot read {dbc_path}: {exc.strerror}") from exc
        except Exception as exc:  # cantools raises its own and parser errors
            raise DbcFileError(f"{dbc_path} is not a DBC file: {exc}") from exc
        if not isinstance(database, cantools.database.can.Database):
            raise DbcFileError(f"{dbc_path} is not a CAN database (DBC)")
        self.database = database
        self.can_link = can_link
        self.mapping = mapping
        self.window_s = window_s
        names = {m.name for m in self.database.messages}
        missing = sorted({s.split(".")[0] for s in mapping.signals()} - names)
        if missing:
            raise DbcFileError(f"{dbc_path} has no message(s) {', '.join(missing)}")
        self._wanted = {s.split(".")[0] for s in mapping.signals()}

    def read(self) -> DbcTelemetry:
        """Listen until every mapped message was seen once (at most ``window_s``)."""
        from bmsfw.link.canlink import open_can_bus, parse_can_link

        values: dict[str, float] = {}
        seen: set[str] = set()
        bus = open_can_bus(parse_can_link(self.can_link))
        try:
            deadline = time.monotonic() + self.window_s
            while seen != self._wanted and time.monotonic() < deadline:
                frame = bus.recv(timeout=max(0.0, deadline - time.monotonic()))
                if frame is None or frame.is_error_frame:
                    continue
                try:
                    message = self.database.get_message_by_frame_id(frame.arbitration_id)
                except KeyError:
                    continue  # another node's frame
                if message.name not in self._wanted:
                    continue
                decoded = message.decode(bytes(frame.data), decode_choices=False)
                if not isinstance(decoded, dict):
                    continue  # a multiplexed container: not a BMS status frame
                values.update(
                    {f"{message.name}.{k}": float(v) for k, v in decoded.items()}  # type: ignore[arg-type]
                )
                seen.add(message.name)
        finally:
            bus.shutdown()
        if seen != self._wanted:
            raise SmpNoResponseError(
                f"no CAN broadcast of {', '.join(sorted(self._wanted - seen))} on "
                f"{self.can_link} within {self.window_s:g} s"
            )
        return decode_telemetry(values, self.mapping)
