"""Live fault injection into a running simulator: a control channel through the state dir.

``bmsfw sim set --state-dir DIR --node N --supply-sag 16`` (or
:func:`send_command`) drops one JSON command file into
``DIR/node<N>/control/``; the simulator process serving that node
(:class:`~bmsfw.sim.sim_can.CanSimulator`) polls the directory every
100 ms, applies each command through the device's fault API
(``VirtualBms.faults``) in the order written, then deletes the file and
records the outcome in ``control/last-result.json``. A deleted command file is
therefore the acknowledgement :func:`send_command` waits for.

Files, not a socket, because the state dir already *is* the device (flash,
OTP, board state live there): whoever may power-cut the device by deleting its
files may also sag its supply, and no port needs to be found or secured. A
command is written to a temporary name and renamed, so the simulator never
reads half a command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmsfw.sim.battery import PROTECTION_FAULTS

if TYPE_CHECKING:
    from bmsfw.sim.bms import VirtualBms

__all__ = [
    "CONTROL_DIR",
    "RESULT_FILE",
    "SimCommand",
    "apply_command",
    "control_dir",
    "poll_commands",
    "send_command",
]

log = logging.getLogger(__name__)

CONTROL_DIR = "control"
RESULT_FILE = "last-result.json"
_SUFFIX = ".cmd.json"


@dataclass(frozen=True)
class SimCommand:
    """What to change on one running virtual BMS; ``None`` leaves a value alone.

    Applied in this order: ``clear`` (every injected fault and an armed power cut
    removed; physical state such as SOC stays), SOC, temperatures, pack current,
    supply sag, protection faults, then the power cut.
    """

    clear: bool = False
    soc_pct: float | None = None
    temperature_c: float | None = None  # every NTC
    pack_current_a: float | None = None  # + = charging, - = discharging (as telemetry)
    supply_sag_v: float | None = None  # volts below nominal; 0 ends the sag
    faults: tuple[str, ...] = ()  # protection faults to raise
    power_cut_after_ops: int | None = None  # power lost during that flash operation from now

    def __post_init__(self) -> None:
        if self.soc_pct is not None and not 0.0 <= self.soc_pct <= 100.0:
            raise ValueError(f"state of charge must be 0..100 %, got {self.soc_pct}")
        if self.temperature_c is not None and not -40.0 <= self.temperature_c <= 125.0:
            raise ValueError(f"temperature must be -40..125 °C, got {self.temperature_c}")
        if self.pack_current_a is not None and not -2000.0 <= self.pack_current_a <= 2000.0:
            raise ValueError(f"pack current must be -2000..2000 A, got {self.pack_current_a}")
        if self.supply_sag_v is not None and self.supply_sag_v < 0:
            raise ValueError(f"supply sag must be >= 0 V, got {self.supply_sag_v}")
        unknown = [f for f in self.faults if f not in PROTECTION_FAULTS]
        if unknown:
            raise ValueError(
                f"unknown protection fault(s) {', '.join(unknown)}; known: "
                f"{', '.join(PROTECTION_FAULTS)}"
            )
        if self.power_cut_after_ops is not None and self.power_cut_after_ops < 1:
            raise ValueError(
                f"power cut needs >= 1 flash operation, got {self.power_cut_after_ops}"
            )

    @property
    def empty(self) -> bool:
        return self == SimCommand()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["faults"] = list(self.faults)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SimCommand:
        known = {f for f in cls.__dataclass_fields__}
        extra = set(raw) - known
        if extra:
            raise ValueError(f"unknown command field(s) {', '.join(sorted(extra))}")
        values = dict(raw)
        values["faults"] = tuple(values.get("faults", ()))
        return cls(**values)


@dataclass(frozen=True)
class CommandResult:
    file: str
    applied: tuple[str, ...] = ()
    error: str = ""
    at: float = field(default_factory=time.time)


def control_dir(node_state_dir: str | Path) -> Path:
    return Path(node_state_dir) / CONTROL_DIR


def send_command(
    node_state_dir: str | Path, command: SimCommand, *, wait_s: float = 2.0
) -> dict[str, Any] | None:
    """Queue ``command`` for the simulator serving this node; wait until it is applied.

    Returns the simulator's result record (``applied``, ``error``), or ``None``
    when no simulator took the command within ``wait_s`` (it stays queued and is
    applied when one starts on this state dir). ``wait_s`` 0 does not wait.
    """
    directory = control_dir(node_state_dir)
    if not Path(node_state_dir).is_dir():
        raise FileNotFoundError(f"no virtual BMS state in {node_state_dir}")
    directory.mkdir(exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}{_SUFFIX}"
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(command.to_json(), sort_keys=True))
    os.replace(tmp, directory / name)  # atomic: the simulator never sees half a command
    if wait_s <= 0:
        return None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not (directory / name).exists():
            with contextlib.suppress(OSError, ValueError):
                result: dict[str, Any] = json.loads((directory / RESULT_FILE).read_text())
                if result.get("file") == name:
                    return result
            return {"file": name, "applied": [], "error": ""}
        time.sleep(0.02)
    return None


def apply_command(bms: VirtualBms, command: SimCommand) -> tuple[str, ...]:
    """Apply one command through the device's fault API; returns what was done."""
    faults = bms.faults
    done: list[str] = []
    if command.clear:
        faults.clear()
        done.append("cleared injected faults")
    if command.soc_pct is not None:
        faults.set_soc(command.soc_pct)
        done.append(f"soc {command.soc_pct:g} %")
    if command.temperature_c is not None:
        faults.set_temperatures(command.temperature_c)
        done.append(f"temperature {command.temperature_c:g} °C")
    if command.pack_current_a is not None:
        faults.set_pack_current(command.pack_current_a)
        done.append(f"pack current {command.pack_current_a:+g} A")
    if command.supply_sag_v is not None:
        faults.set_supply(sag_v=command.supply_sag_v)
        done.append(f"supply sag {command.supply_sag_v:g} V")
    for name in command.faults:
        faults.set_protection_fault(name, True)
        done.append(f"fault {name}")
    if command.power_cut_after_ops is not None:
        faults.power_cut_at(command.power_cut_after_ops)
        done.append(f"power cut at flash op {command.power_cut_after_ops}")
    return tuple(done)


def poll_commands(bms: VirtualBms, node_state_dir: str | Path) -> int:
    """Apply and remove every queued command of this node, oldest first; returns how many."""
    directory = control_dir(node_state_dir)
    try:
        names = sorted(p.name for p in directory.iterdir() if p.name.endswith(_SUFFIX))
    except FileNotFoundError:
        return 0
    for name in names:
        path = directory / name
        try:
            command = SimCommand.from_json(json.loads(path.read_text()))
            applied = apply_command(bms, command)
            result = CommandResult(name, applied)
            log.info("control %s: %s", name, "; ".join(applied) or "nothing")
        except Exception as exc:  # a bad command must not stop the simulator
            result = CommandResult(name, (), f"{type(exc).__name__}: {exc}")
            log.warning("control %s refused: %s", name, exc)
        tmp = directory / f".{RESULT_FILE}.tmp"
        record = asdict(result)
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, directory / RESULT_FILE)
        path.unlink(missing_ok=True)  # the acknowledgement send_command waits for
    return len(names)
