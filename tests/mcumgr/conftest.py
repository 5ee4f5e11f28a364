"""Device side of the SMP tests: a vendor PKI, signed releases, virtual BMS serving SMP.

Everything here is the *device's* side (the vendor's firmware and the simulated
BMS). Stock smpclient/smpmgr against the virtual BMS: tests/interop/test_smp_interop.py.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bmsfw.package import VendorPki
from bmsfw.protocol.session import BmsSession, TesterCredentials
from bmsfw.sim import DeviceSpec, FlashSpec, SimClock, VirtualBms
from bmsfw.sim.lab import (
    LabRelease,
    lab_pki,
    provision_nodes,
    signed_release,
    tester_for,
    trust_anchors,
)
from bmsfw.sim.sim_can import node_state_dir
from bmsfw.sim.smp_server import (
    SerialConsole,
    SimSmpProcess,
    SmpBmsServer,
    loopback_udp_address,
)
from bmsfw.update.events import EventSink
from bmsfw.update.pipeline import UpdateOptions, run_update
from bmsfw.update.profile import DEFAULT_CONFIRMATIONS, PreflightLimits, UpdateProfile
from bmsfw.update.report import UpdateReport

SPEC = DeviceSpec(
    flash=FlashSpec.small(bank_size=64 * 1024, sector_size=4096),
    transfer_block_size=512,
    watchdog_window_s=600.0,
)
TIME_SCALE = 10.0  # boots and self-tests run 10x faster than on the bench


@dataclass(frozen=True)
class SmpBench:
    pki: VendorPki
    releases: dict[str, LabRelease]
    template: Path


@pytest.fixture(scope="session")
def smp_bench(tmp_path_factory: pytest.TempPathFactory) -> SmpBench:
    pki = lab_pki()
    releases = {
        "1.0.0": signed_release(pki, "1.0.0", 1, spec=SPEC, size=12_000),
        "2.0.0": signed_release(pki, "2.0.0", 2, spec=SPEC, size=20_000),
        "fail-selftest": signed_release(
            pki, "2.1.0", 2, spec=SPEC, size=20_000, behaviour="fail-selftest"
        ),
        "safety-critical": signed_release(
            pki, "2.0.1", 2, spec=SPEC, size=20_000, safety_class="safety-critical"
        ),
    }
    template = tmp_path_factory.mktemp("smp-template")
    provision_nodes(template, pki, releases["1.0.0"].image, spec=SPEC)
    return SmpBench(pki, releases, node_state_dir(template, 1))


@pytest.fixture
def device_dir(tmp_path: Path, smp_bench: SmpBench) -> Path:
    target = tmp_path / "bms"
    shutil.copytree(smp_bench.template, target)
    return target


def start_device(
    device_dir: Path,
    *,
    serial: bool = False,
    udp: bool = False,
    ble: bool = False,
    **kwargs: object,
) -> SimSmpProcess:
    process = SimSmpProcess(
        device_dir,
        serial=serial,
        udp=loopback_udp_address() if udp else None,
        ble=ble,
        time_scale=TIME_SCALE,
        log_file=device_dir.parent / "smp-device.log",
        **kwargs,  # type: ignore[arg-type]
    )
    process.start()
    return process


@pytest.fixture
def tester(smp_bench: SmpBench) -> TesterCredentials:
    return tester_for(smp_bench.pki)


def update_options(tmp_path: Path, tester: TesterCredentials) -> UpdateOptions:
    return UpdateOptions(
        backup_dir=tmp_path / "backups",
        credentials=tester,
        confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
        audit_log=tmp_path / "backups" / "audit.jsonl",
        report_dir=tmp_path / "backups" / "reports",
        operator="tester",
    )


#: Preflight sampling shortened (the default 2 s window is for the bench, not the tests).
FAST_PROFILE = UpdateProfile(preflight=PreflightLimits(supply_window_s=0.2, supply_samples=3))
#: A product serviced over Bluetooth by design: the OTA bandwidth floor does not stop it.
BLE_SERVICE_PROFILE = UpdateProfile(
    name="serviced over BLE",
    preflight=PreflightLimits(supply_window_s=0.2, supply_samples=3, ble_service_link=True),
)


def run_smp_update(
    session: BmsSession,
    smp_bench: SmpBench,
    name: str,
    tmp_path: Path,
    tester: TesterCredentials,
    *,
    profile: UpdateProfile = FAST_PROFILE,
    sink: EventSink | None = None,
    **options: Any,
) -> UpdateReport:
    return run_update(
        session,
        smp_bench.releases[name].package,
        trust_anchors(smp_bench.pki),
        dataclasses.replace(update_options(tmp_path, tester), **options),
        profile=profile,
        sink=sink,
    )


S = TypeVar("S", bound=SmpBmsServer)


@contextmanager
def serving(
    device_dir: Path, server: Callable[..., S], **behaviour: object
) -> Iterator[tuple[S, str]]:
    """A virtual BMS served in this process by ``server(bms, **behaviour)`` (the SMP
    server, or a test's subclass that lies) on the SMP console framing over a pty; yields
    the server and the ``--smp`` link. Nothing ticks its firmware: the BMS does not boot
    again after a reset (for the tests that end before one)."""
    bms = VirtualBms(device_dir, clock=SimClock())
    bms.wait_boot(30)
    handler = server(bms, **behaviour)
    console = SerialConsole(handler).start()
    try:
        yield handler, f"serial:{console.port}"
    finally:
        console.stop()
        bms.close()
