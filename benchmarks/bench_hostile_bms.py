"""How long a hostile BMS can hold the host: wall time of one ``run_update`` (real
``UdsSession`` on python-can's virtual bus) against the fake CAN BMS of
tests/attack_bms, with the session's per-step deadlines and responsePending limit,
side by side with per-request limits only (the client as it was before: every
request bounded by P2/P2* and its own budget, no step deadline, no 0x78 count).

    python -m benchmarks.bench_hostile_bms

Short bounds so a run ends in seconds: P2* 1 s, a request's budget 5 s, every step
2 s; the product defaults (docs/uds.md, step deadlines) scale the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
import time
from pathlib import Path

import can
from cryptography.hazmat.primitives import serialization
from tests.attack_bms.conftest import CLIENT, NEW_VERSION, PROFILE, SPEC
from tests.attack_bms.hostile_can import Behaviour, HostileUdsBms

from bmsfw.package import TrustAnchors
from bmsfw.protocol.deadline import StepBudgets
from bmsfw.protocol.uds import UdsClientConfig, open_uds_session
from bmsfw.sim.lab import lab_pki, signed_package, tester_for
from bmsfw.update.pipeline import UpdateOptions, run_update
from bmsfw.update.profile import DEFAULT_CONFIRMATIONS

_channels = itertools.count()
WITH = dataclasses.replace(
    CLIENT, budgets=StepBudgets(**{f.name: 2.0 for f in dataclasses.fields(StepBudgets)})
)
# per-request limits only: step deadlines and the 0x78 count out of the way
WITHOUT = dataclasses.replace(
    CLIENT,
    max_response_pending=10**9,
    budgets=StepBudgets(**{f.name: 3600.0 for f in dataclasses.fields(StepBudgets)}),
)
ATTACKS = {
    "every DID read 0.6 s late": Behaviour(stall_prefix=b"\x22", stall_s=0.6),
    "0x78 for ever on verify": Behaviour(stall_prefix=bytes.fromhex("3101ff01"), stall_s=math.inf),
    "0x78 every 5 ms for ever (identify)": Behaviour(
        stall_prefix=bytes.fromhex("22f18a"), stall_s=math.inf, pending_interval_s=0.005
    ),
    "honest (for comparison)": Behaviour(),
}


def one(behaviour: Behaviour, client: UdsClientConfig, work: Path) -> tuple[float, str, int]:
    pki = lab_pki()
    package = signed_package(pki, NEW_VERSION, 2, spec=SPEC, size=4096)
    trust = TrustAnchors.from_root_certificate(
        pki.root_certificate.public_bytes(serialization.Encoding.PEM)
    )
    options = UpdateOptions(
        backup_dir=work / "backups",
        credentials=tester_for(pki),
        confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
    )
    channel = f"bench-hostile-{next(_channels)}"
    with HostileUdsBms(channel, dataclasses.replace(behaviour)) as bms:
        bms.new_version = NEW_VERSION + "+0"
        bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        session = open_uds_session(f"virtual:{channel}", 1, config=client, bus=bus)
        started = time.monotonic()
        try:
            report = run_update(session, package, trust, options, profile=PROFILE)
        finally:
            session.close()
            bus.shutdown()
        seconds = time.monotonic() - started
        code = (report.error.code if report.error else "") or report.outcome
        return seconds, code, bms.pending_sent


def main() -> None:
    print(f"\n{'attack':38}{'per-request limits only':>28}{'with step deadlines':>28}")
    print(f"{'':38}{'s':>8}{'ends with':>14}{'0x78':>6}{'s':>8}{'ends with':>14}{'0x78':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, behaviour) in enumerate(ATTACKS.items()):
            row = f"{name:38}"
            for k, client in enumerate((WITHOUT, WITH)):
                seconds, code, pending = one(behaviour, client, Path(tmp) / f"{n}-{k}")
                row += f"{seconds:8.1f}{code.replace('BMSFW-', ''):>14}{pending:>6}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
