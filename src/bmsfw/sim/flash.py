"""Flash memory of the virtual BMS: regions, timing, and the one choke point for power cuts.

The whole flash (bootloader, boot-state journal, NVM areas, both application
banks, the OTP block) is one byte array mirrored into ``flash.bin`` in the state
directory. Every erase and program passes through :meth:`Flash._commit`, which

* counts the operation (``op_count``), so a test can first count the flash
  operations of an update and then cut the power at each one;
* consumes the operation's time on the device clock (sector erase and
  program-unit times of a typical MCU, scaled by a "slow flash" fault);
* applies a *power cut* when the injector says so: only a prefix of the
  operation reaches the flash (a partially erased sector, a partially
  programmed run), the file is left like that, and the flash goes dead
  (every further call raises :class:`~bmsfw.protocol.device_errors.PowerCutError`).

Programming rules follow NOR flash as a careful bootloader uses it: in the
main array a byte can only be programmed if it is erased (0xFF) or already
holds the same value (so re-sending a block is harmless, writing over old data
without an erase is refused). In OTP, bits can only go from 1 to 0 and the
block can never be erased.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bmsfw.protocol.device_errors import EraseNeededError, FlashProgramError, PowerCutError
from bmsfw.sim.clock import Clock

__all__ = [
    "Flash",
    "FlashSpec",
    "FlashTiming",
    "PowerCutInjector",
    "Region",
]

log = logging.getLogger(__name__)

KIB = 1024
ERASED = 0xFF

# Region names the device relies on. Journals use exactly two sectors each.
BOOTLOADER = "bootloader"
BOOTSTATE = "bootstate"
CONFIG = "config"
CALIBRATION = "calibration"
STAGING = "staging"
DTC = "dtc"
BANK_A = "bank_a"
BANK_B = "bank_b"
OTP = "otp"
JOURNAL_REGIONS = (BOOTSTATE, CONFIG, CALIBRATION, STAGING, DTC)


@dataclass(frozen=True)
class Region:
    name: str
    offset: int
    size: int
    sector_size: int

    @property
    def sector_count(self) -> int:
        return self.size // self.sector_size


@dataclass(frozen=True)
class FlashTiming:
    """Erase/program timing. Defaults: STM32F4 datasheet typicals at 2.7-3.6 V, x64 parallelism.

    Sector erase: about 250 ms for 16 KiB and 1 s for 128 KiB, i.e. a fixed part
    plus a part per KiB. Programming: one ``program_unit_bytes`` unit per
    ``program_unit_time_s``.
    """

    program_unit_bytes: int = 8
    program_unit_time_s: float = 16e-6
    erase_base_s: float = 0.15
    erase_per_kib_s: float = 0.0066
    otp_unit_time_s: float = 32e-6

    def erase_time_s(self, sector_size: int) -> float:
        return self.erase_base_s + self.erase_per_kib_s * sector_size / KIB


@dataclass(frozen=True)
class FlashSpec:
    """Flash layout (ordered regions) and timing."""

    regions: tuple[Region, ...]
    timing: FlashTiming = field(default_factory=FlashTiming)

    def __post_init__(self) -> None:
        names = [r.name for r in self.regions]
        needed = {BOOTLOADER, BANK_A, BANK_B, OTP, *JOURNAL_REGIONS}
        missing = needed - set(names)
        if missing:
            raise ValueError(f"flash layout lacks regions {sorted(missing)}")
        end = 0
        unit = self.timing.program_unit_bytes
        for r in self.regions:
            if r.offset != end:
                raise ValueError(f"region {r.name} starts at {r.offset:#x}, expected {end:#x}")
            if r.size % r.sector_size or r.sector_size % unit:
                raise ValueError(f"region {r.name}: size/sector/program unit do not divide")
            end = r.offset + r.size
        for name in JOURNAL_REGIONS:
            if self.region(name).sector_count != 2:
                raise ValueError(f"journal region {name} must have exactly two sectors")
        if self.region(BANK_A).size != self.region(BANK_B).size:
            raise ValueError("banks A and B must have the same size")

    @property
    def total_size(self) -> int:
        last = self.regions[-1]
        return last.offset + last.size

    @property
    def bank_size(self) -> int:
        return self.region(BANK_A).size

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    @classmethod
    def build(
        cls,
        *,
        bank_size: int,
        bank_sector_size: int,
        nvm_sector_size: int,
        bootloader_size: int,
        timing: FlashTiming | None = None,
    ) -> FlashSpec:
        layout = [
            (BOOTLOADER, bootloader_size, nvm_sector_size),
            (BOOTSTATE, 2 * nvm_sector_size, nvm_sector_size),
            (CONFIG, 2 * nvm_sector_size, nvm_sector_size),
            (CALIBRATION, 2 * nvm_sector_size, nvm_sector_size),
            (STAGING, 2 * nvm_sector_size, nvm_sector_size),
            (DTC, 2 * nvm_sector_size, nvm_sector_size),
            (BANK_A, bank_size, bank_sector_size),
            (BANK_B, bank_size, bank_sector_size),
            (OTP, 1 * KIB, 1 * KIB),
        ]
        regions = []
        offset = 0
        for name, size, sector in layout:
            regions.append(Region(name, offset, size, sector))
            offset += size
        return cls(tuple(regions), timing or FlashTiming())

    @classmethod
    def stm32f4_like(cls, *, bank_size: int = 256 * KIB) -> FlashSpec:
        """16 KiB NVM sectors, 128 KiB bank sectors, 32 KiB bootloader (an STM32F4-style map)."""
        return cls.build(
            bank_size=bank_size,
            bank_sector_size=min(128 * KIB, bank_size),
            nvm_sector_size=16 * KIB,
            bootloader_size=32 * KIB,
        )

    @classmethod
    def small(cls, *, bank_size: int = 16 * KIB, sector_size: int = 1 * KIB) -> FlashSpec:
        """A tiny layout with small sectors, for exhaustive power-cut tests."""
        return cls.build(
            bank_size=bank_size,
            bank_sector_size=sector_size,
            nvm_sector_size=8 * KIB,
            bootloader_size=8 * KIB,
        )

    def to_dict(self) -> dict[str, object]:
        t = self.timing
        return {
            "regions": [[r.name, r.offset, r.size, r.sector_size] for r in self.regions],
            "timing": {
                "program_unit_bytes": t.program_unit_bytes,
                "program_unit_time_s": t.program_unit_time_s,
                "erase_base_s": t.erase_base_s,
                "erase_per_kib_s": t.erase_per_kib_s,
                "otp_unit_time_s": t.otp_unit_time_s,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FlashSpec:
        regions_raw = data["regions"]
        timing_raw = data["timing"]
        assert isinstance(regions_raw, list) and isinstance(timing_raw, dict)
        regions = tuple(Region(str(n), int(o), int(s), int(ss)) for n, o, s, ss in regions_raw)
        return cls(regions, FlashTiming(**timing_raw))


class PowerCutInjector:
    """Decides at which flash operation the power fails.

    ``arm_at(n)`` cuts during the n-th operation from now (1 = the next one);
    ``arm_random(max_ops, seed)`` picks one of the next ``max_ops`` operations.
    The fraction of the interrupted operation that reaches the flash is drawn
    from a seeded generator, so every run is reproducible.
    """

    def __init__(self, seed: int = 0) -> None:
        self._countdown: int | None = None
        self.rng = random.Random(seed)

    @property
    def armed(self) -> bool:
        return self._countdown is not None

    def arm_at(self, n_ops: int, *, seed: int | None = None) -> None:
        if n_ops < 1:
            raise ValueError("power cut operation index starts at 1")
        self._countdown = n_ops
        if seed is not None:
            self.rng = random.Random(seed)

    def arm_random(self, max_ops: int, *, seed: int = 0) -> int:
        self.rng = random.Random(seed)
        n = self.rng.randint(1, max_ops)
        self._countdown = n
        return n

    def disarm(self) -> None:
        self._countdown = None

    def tick(self) -> bool:
        """Called once per flash operation; True when the power fails during it."""
        if self._countdown is None:
            return False
        self._countdown -= 1
        if self._countdown == 0:
            self._countdown = None
            return True
        return False


class Flash:
    """File-backed flash with MCU-like timing and power-cut injection."""

    def __init__(
        self,
        path: Path,
        spec: FlashSpec,
        clock: Clock,
        power: PowerCutInjector | None = None,
    ) -> None:
        self.path = path
        self.spec = spec
        self.clock = clock
        self.power = power or PowerCutInjector()
        self.slow_factor = 1.0
        self.op_count = 0
        self.dead = False
        raw = path.read_bytes()
        if len(raw) != spec.total_size:
            raise FlashProgramError(
                f"{path} holds {len(raw)} bytes but the layout needs {spec.total_size}"
            )
        self._data = bytearray(raw)
        self._fd = os.open(path, os.O_RDWR)

    @staticmethod
    def create_blank(path: Path, spec: FlashSpec) -> None:
        """A factory-fresh chip: everything erased (OTP included)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(bytes([ERASED]) * spec.total_size)
        os.replace(tmp, path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)

    # --- reads (no flash operation, instant at MCU speed) ---

    def _check_alive(self) -> None:
        if self.dead:
            raise PowerCutError("the flash lost power")

    def _span(self, region: str, offset: int, length: int) -> tuple[Region, int]:
        r = self.spec.region(region)
        if offset < 0 or length < 0 or offset + length > r.size:
            raise FlashProgramError(
                f"access {offset:#x}+{length} outside region {region} (size {r.size:#x})"
            )
        return r, r.offset + offset

    def read(self, region: str, offset: int, length: int) -> bytes:
        self._check_alive()
        _, addr = self._span(region, offset, length)
        return bytes(self._data[addr : addr + length])

    def view(self, region: str) -> memoryview:
        """Read-only view of a whole region (for hashing without copies)."""
        self._check_alive()
        r = self.spec.region(region)
        return memoryview(self._data)[r.offset : r.offset + r.size].toreadonly()

    def is_erased(self, region: str, offset: int, length: int) -> bool:
        _, addr = self._span(region, offset, length)
        chunk = self._data[addr : addr + length]
        return chunk.count(ERASED) == len(chunk)

    # --- operations ---

    def erase_sector(self, region: str, index: int) -> None:
        r = self.spec.region(region)
        if region == OTP:
            raise FlashProgramError("OTP cannot be erased")
        if not 0 <= index < r.sector_count:
            raise FlashProgramError(f"sector {index} outside region {region}")
        start = r.offset + index * r.sector_size
        after = bytes([ERASED]) * r.sector_size
        units = max(1, r.sector_size // self.spec.timing.program_unit_bytes)
        self._commit(
            "erase", region, start, after, units, self.spec.timing.erase_time_s(r.sector_size)
        )

    def erase_region(self, region: str) -> None:
        for i in range(self.spec.region(region).sector_count):
            if not self.is_erased(
                region,
                i * self.spec.region(region).sector_size,
                self.spec.region(region).sector_size,
            ):
                self.erase_sector(region, i)

    def program(self, region: str, offset: int, data: bytes) -> None:
        """Program ``data`` at ``offset`` as one flash operation (equal bytes: a no-op)."""
        self._check_alive()
        if not data:
            return
        _, addr = self._span(region, offset, len(data))
        old = self._data[addr : addr + len(data)]
        if old == data:
            return  # re-sending the same data programs nothing (and costs no operation)
        if region == OTP:
            for i, (o, n) in enumerate(zip(old, data, strict=True)):
                if n & ~o & 0xFF:
                    raise FlashProgramError(f"OTP byte {offset + i:#x}: cannot set bits back to 1")
            unit_time = self.spec.timing.otp_unit_time_s
        else:
            for i, (o, n) in enumerate(zip(old, data, strict=True)):
                if o not in (n, ERASED):
                    raise EraseNeededError(
                        f"{region} offset {offset + i:#x} holds {o:#04x}, cannot program {n:#04x}"
                        " without an erase"
                    )
            unit_time = self.spec.timing.program_unit_time_s
        unit = self.spec.timing.program_unit_bytes
        first = addr - addr % unit
        last = addr + len(data)
        units = max(1, -(-(last - first) // unit))
        self._commit("program", region, addr, bytes(data), units, units * unit_time)

    def corrupt(self, region: str, offset: int, xor_mask: int = 0x01) -> None:
        """Flip bits without the controller (bit rot, radiation): not a flash operation."""
        self._check_alive()
        _, addr = self._span(region, offset, 1)
        self._data[addr] ^= xor_mask
        os.pwrite(self._fd, bytes(self._data[addr : addr + 1]), addr)

    def _commit(  # noqa: PLR0917 - internal choke point, called from two places
        self, kind: str, region: str, addr: int, after: bytes, units: int, duration_s: float
    ) -> None:
        """THE choke point: every erase/program of every region goes through here."""
        self._check_alive()
        self.op_count += 1
        if self.power.tick():
            unit = self.spec.timing.program_unit_bytes
            done_units = self.power.rng.randrange(units)  # 0 .. units-1: never the whole op
            done = min(len(after), done_units * unit)
            partial = after[:done]
            self._data[addr : addr + done] = partial
            os.pwrite(self._fd, partial, addr)
            # An interrupted erase also leaves the next unit in an undefined state.
            if kind == "erase" and done < len(after):
                garbage = bytes(
                    self.power.rng.randrange(256) for _ in range(min(unit, len(after) - done))
                )
                self._data[addr + done : addr + done + len(garbage)] = garbage
                os.pwrite(self._fd, garbage, addr + done)
            self.dead = True
            log.info(
                "power cut during flash op %d (%s %s @%#x, %d of %d bytes done)",
                self.op_count,
                kind,
                region,
                addr,
                done,
                len(after),
            )
            raise PowerCutError(
                f"power cut during flash operation {self.op_count} ({kind} {region} @{addr:#x})"
            )
        self.clock.sleep(duration_s * self.slow_factor)
        self._data[addr : addr + len(after)] = after
        os.pwrite(self._fd, after, addr)
        log.log(5, "flash %s %s @%#x len %d", kind, region, addr, len(after))

    def sectors_of(self, region: str, offset: int, length: int) -> Iterator[int]:
        r = self.spec.region(region)
        if length <= 0:
            return iter(())
        return iter(range(offset // r.sector_size, (offset + length - 1) // r.sector_size + 1))
