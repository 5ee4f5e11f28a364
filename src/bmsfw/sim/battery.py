"""The pack and the BMS board: an equivalent-circuit battery model plus fault injection.

Each of N series cells is a Thevenin model: open-circuit voltage from a
piecewise-linear OCV(SOC) curve (NMC chemistry), a series resistance R0 and one
RC pair (R1, C1) for the diffusion transient. Pack current is positive on
discharge and only flows while the contactors are closed. Every cell has a
bleed resistor for passive balancing: a bleeding cell loses charge and its
sensed voltage drops by the bleed current times the sense-wire resistance,
which is the effect the balancing self-test looks for.

The board adds what the firmware measures: a per-cell ADC with a per-unit gain
error that the factory calibration cancels (so a lost calibration fails the
±0.5 % check), NTC sensors with their own offsets, and the auxiliary supply
with settable sag and ripple. :class:`BoardState` holds everything physical
(it survives a BMS reboot; the pack does not care that the BMS restarted) and
every fault injection knob.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BatteryModel", "BoardState", "ocv_v"]

# NMC open-circuit voltage, (SOC fraction, V), typical 18650/prismatic data.
_OCV_TABLE = (
    (0.00, 3.00),
    (0.05, 3.35),
    (0.10, 3.48),
    (0.20, 3.58),
    (0.30, 3.64),
    (0.40, 3.70),
    (0.50, 3.76),
    (0.60, 3.84),
    (0.70, 3.93),
    (0.80, 4.02),
    (0.90, 4.10),
    (1.00, 4.20),
)

NTC_OPEN_READING_C = -55.0  # ADC at the rail: what an open NTC divider reads as
NTC_SHORT_READING_C = 150.0
PROTECTION_FAULTS = (
    "cell_overvoltage",
    "cell_undervoltage",
    "overtemperature",
    "undertemperature",
    "overcurrent",
)


def ocv_v(soc: float) -> float:
    soc = min(1.0, max(0.0, soc))
    for (s0, v0), (s1, v1) in itertools.pairwise(_OCV_TABLE):
        if soc <= s1:
            return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
    return _OCV_TABLE[-1][1]


@dataclass
class BoardState:
    """Physical state of pack and board plus injected faults (persisted as board.json)."""

    cell_soc: list[float]
    cell_v_rc: list[float]
    temperatures_c: list[float]
    adc_gain_inherent: list[float]  # per-unit board error, cancelled by calibration
    ntc_offset_inherent_c: list[float]
    pack_current_a: float = 0.0  # the model's sign: + = discharge (telemetry: + = charging)
    supply_nominal_v: float = 24.0
    supply_sag_v: float = 0.0
    supply_ripple_v: float = 0.0
    supply_ripple_hz: float = 100.0
    ntc_open: list[int] = field(default_factory=list)
    ntc_short: list[int] = field(default_factory=list)
    adc_gain_error: dict[int, float] = field(default_factory=dict)  # injected, relative
    dead_balancing: list[int] = field(default_factory=list)
    forced_faults: list[str] = field(default_factory=list)
    interface_faults: list[str] = field(default_factory=list)  # "can", "rs485"
    slow_flash_factor: float = 1.0

    @classmethod
    def fresh(cls, cells: int, ntcs: int, *, serial: str, soc: float = 0.5) -> BoardState:
        rng = random.Random(f"board:{serial}")
        return cls(
            cell_soc=[soc + rng.uniform(-0.01, 0.01) for _ in range(cells)],
            cell_v_rc=[0.0] * cells,
            temperatures_c=[25.0 + rng.uniform(-0.5, 0.5) for _ in range(ntcs)],
            adc_gain_inherent=[1.0 + rng.uniform(-0.012, 0.012) for _ in range(cells)],
            ntc_offset_inherent_c=[rng.uniform(-1.5, 1.5) for _ in range(ntcs)],
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adc_gain_error"] = {str(k): v for k, v in self.adc_gain_error.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoardState:
        data = dict(data)
        data["adc_gain_error"] = {int(k): float(v) for k, v in data["adc_gain_error"].items()}
        return cls(**data)


@dataclass(frozen=True)
class CellParams:
    capacity_ah: float = 100.0
    r0_ohm: float = 0.0008
    r1_ohm: float = 0.0006
    c1_f: float = 25_000.0  # tau = R1*C1 = 15 s
    bleed_ohm: float = 33.0
    sense_wire_ohm: float = 0.25


class BatteryModel:
    """Integrates the pack over time and produces what the BMS ADCs would read."""

    def __init__(self, state: BoardState, params: CellParams | None = None) -> None:
        self.state = state
        self.params = params or CellParams()
        self.bleeding = [False] * len(state.cell_soc)

    @property
    def cells(self) -> int:
        return len(self.state.cell_soc)

    def set_capacity(self, capacity_ah: float) -> None:
        self.params = CellParams(**{**asdict(self.params), "capacity_ah": capacity_ah})

    def bleed_current_a(self, cell: int) -> float:
        if not self.bleeding[cell] or cell in self.state.dead_balancing:
            return 0.0
        return ocv_v(self.state.cell_soc[cell]) / self.params.bleed_ohm

    def step(self, dt_s: float, *, contactors_closed: bool) -> None:
        if dt_s <= 0:
            return
        p = self.params
        current = self.state.pack_current_a if contactors_closed else 0.0
        decay = math.exp(-dt_s / (p.r1_ohm * p.c1_f))
        for i in range(self.cells):
            total = current + self.bleed_current_a(i)
            soc = self.state.cell_soc[i] - total * dt_s / (3600.0 * p.capacity_ah)
            self.state.cell_soc[i] = min(1.0, max(0.0, soc))
            v_rc = self.state.cell_v_rc[i]
            self.state.cell_v_rc[i] = v_rc * decay + current * p.r1_ohm * (1 - decay)

    def effective_current_a(self, contactors_closed: bool) -> float:
        return self.state.pack_current_a if contactors_closed else 0.0

    def cell_voltage_true_v(self, cell: int, contactors_closed: bool) -> float:
        """Terminal voltage of the cell (what a precision reference meter would read)."""
        current = self.effective_current_a(contactors_closed) + self.bleed_current_a(cell)
        return (
            ocv_v(self.state.cell_soc[cell])
            - current * self.params.r0_ohm
            - self.state.cell_v_rc[cell]
        )

    def cell_voltage_adc_v(self, cell: int, contactors_closed: bool) -> float:
        """Uncalibrated ADC reading on the balancing sense lines."""
        sensed = (
            self.cell_voltage_true_v(cell, contactors_closed)
            - self.bleed_current_a(cell) * self.params.sense_wire_ohm
        )
        gain = self.state.adc_gain_inherent[cell] * (1.0 + self.state.adc_gain_error.get(cell, 0.0))
        return sensed * gain

    def temperature_raw_c(self, sensor: int) -> float:
        if sensor in self.state.ntc_open:
            return NTC_OPEN_READING_C
        if sensor in self.state.ntc_short:
            return NTC_SHORT_READING_C
        return self.state.temperatures_c[sensor] + self.state.ntc_offset_inherent_c[sensor]

    def supply_voltage_v(self, t_s: float) -> float:
        s = self.state
        return (
            s.supply_nominal_v
            - s.supply_sag_v
            + s.supply_ripple_v * math.sin(2 * math.pi * s.supply_ripple_hz * t_s)
        )

    def soc_pct(self) -> float:
        return 100.0 * sum(self.state.cell_soc) / self.cells

    def set_soc_pct(self, soc_pct: float) -> None:
        if not 0.0 <= soc_pct <= 100.0:
            raise ValueError(f"state of charge {soc_pct} % outside 0..100")
        mean = sum(self.state.cell_soc) / self.cells
        target = soc_pct / 100.0
        self.state.cell_soc = [min(1.0, max(0.0, s - mean + target)) for s in self.state.cell_soc]
