"""Power-cut sweep over SMP: a cut at the flash operations of the update procedure.

What is driven is what `bmsfw update --smp serial:PORT` runs: :func:`run_update` over
an :class:`~bmsfw.protocol.smp.SmpSession` (SMP console framing on a pty) to a
virtual MCUboot BMS served in this process (:class:`~bmsfw.sim.smp_server.SmpSimulator`),
so the test can cut the power during an exact flash operation, as
tests/sim/test_power_cut.py does over CAN and RS485. One uninterrupted update
counts its flash operations N and which step of the procedure does each; then the
update runs once per chosen operation k with the power cut during it (a partial
write). Chosen: every operation outside the transfer step (the test-mark, the
test boot, self-test, confirm) and every STRIDE-th one of the transfer (its erase
and chunk writes) plus its first and last (those are alike: after each the
upload resumes from the offset the BMS reports). ``BMSFW_SMP_SWEEP_STRIDE=1`` cuts
at every operation. After each cut:

* the first run ends with a report and an audit record, never "updated" and never
  a boot loop, and its error says running it again helps;
* after power-on the BMS runs an application (old or new, never none) that passed
  its self-test, its configuration and calibration unchanged;
* the same update again finishes with the new image confirmed and the security
  counter raised; it sends nothing when the BMS already runs the new image, and an
  upload resumes at the offset the BMS reports.

The stages the process-kill test (test_power_cut.py) cuts at by hand (half upload,
test-mark, reset, before confirm) are all among these operations. Timing: the BMS
runs TIME_SCALE times faster than wall time, and so do the procedure's own waits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bmsfw.errors import retry_helps_for
from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.smp import open_smp_session, parse_smp_link
from bmsfw.sim import VirtualBms
from bmsfw.sim.lab import trust_anchors
from bmsfw.sim.smp_server import SmpSimulator
from bmsfw.update.events import Event, EventSink, StepStarted
from bmsfw.update.pipeline import run_update
from bmsfw.update.report import UpdateReport

from .conftest import FAST_PROFILE, SmpBench, update_options

OLD, NEW = "1.0.0", "2.0.0"
TIME_SCALE = 50.0
#: Every STRIDE-th chunk write of the upload (3: 10 of the 18 operations, ~30 s; 1: all, ~55 s).
STRIDE = int(os.environ.get("BMSFW_SMP_SWEEP_STRIDE", "3"))
# A BMS without power never answers: short answer and boot windows keep each cut short
# (the BMS boots in well under 0.1 s of wall time at TIME_SCALE).
PROFILE = dataclasses.replace(
    FAST_PROFILE,
    boot=dataclasses.replace(FAST_PROFILE.boot, boot_timeout_s=1.0, revert_timeout_s=1.0),
)


class Site:
    """One BMS (its state directory), powered on and off in this process."""

    def __init__(self, state: Path, records: Path, bench: SmpBench, tester: TesterCredentials):
        self.state, self.records, self.bench, self.tester = state, records, bench, tester
        self.sim: SmpSimulator | None = None

    @contextmanager
    def powered(self) -> Iterator[VirtualBms]:
        self.sim = SmpSimulator(self.state, time_scale=TIME_SCALE, require_auth=True).start()
        try:
            yield self.sim.bms
        finally:
            self.sim.stop()  # a BMS that lost its power stays dead until the next start
            self.sim = None

    def update(self, sink: EventSink | None = None) -> UpdateReport:
        """`bmsfw update --smp serial:PORT` as the technician runs it: a new session."""
        assert self.sim is not None
        link = parse_smp_link(f"serial:{self.sim.port}", timeout_s=0.5)
        with open_smp_session(link, upload_timeout_s=1.0) as session:
            return run_update(
                session,
                self.bench.releases[NEW].package,
                trust_anchors(self.bench.pki),
                update_options(self.records, self.tester),
                profile=PROFILE,
                sleep=lambda s: time.sleep(s / TIME_SCALE),
                sink=sink,
            )

    def audit_lines(self) -> int:
        path = self.records / "backups" / "audit.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.req("SEED-DUAL-BANK", "SEED-INTERRUPTION", "R156-SAFE-STATE", "NIST800-193-RECOVER")
def test_power_cut_at_every_stride_th_flash_operation_over_smp(
    tmp_path: Path, smp_bench: SmpBench, tester: TesterCredentials
) -> None:
    def site(name: str) -> Site:
        shutil.copytree(smp_bench.template, tmp_path / name)
        return Site(tmp_path / name, tmp_path / f"{name}-records", smp_bench, tester)

    started = time.monotonic()
    counting = site("count")
    steps: list[tuple[int, str]] = []  # (operations done when the step started, step)
    with counting.powered() as bms:
        expected = bms.config_snapshot()
        start = bms.flash_op_count

        def note(event: Event) -> None:
            if isinstance(event, StepStarted):
                steps.append((bms.flash_op_count - start, event.step))

        clean = counting.update(note)
        n_ops = bms.flash_op_count - start
    assert clean.outcome == "updated", clean.error
    assert n_ops >= 12, n_ops  # staging, erase, chunk writes, test-mark, boot, confirm

    def step_of(k: int) -> str:  # the step during which operation k ran
        return [step for done, step in steps if done < k][-1]

    upload = [k for k in range(1, n_ops + 1) if step_of(k) == "transfer"]
    assert len(upload) >= 5 and upload != list(range(1, n_ops + 1)), upload
    others = [k for k in range(1, n_ops + 1) if k not in upload]
    cuts = sorted({*upload[::STRIDE], upload[-1], *others})
    first_outcomes: dict[str, int] = {}
    booted = {OLD: 0, NEW: 0}
    resumed = 0
    for k in cuts:
        where_site = site(f"cut{k}")
        with where_site.powered() as bms:
            bms.faults.power_cut_at(k, seed=k)
            first = where_site.update()
            assert bms.dead, (k, first.outcome)  # the cut happened inside this update
        where = f"cut at flash operation {k}/{n_ops} during {first.failed_step}"
        assert not first.ok and first.error, where
        assert first.outcome in ("paused", "failed"), (where, first.outcome)
        assert first.error.code not in ("BMSFW-E510", "BMSFW-E513"), (where, first.error)
        assert retry_helps_for(first.error.code), (where, first.error)
        assert first.report_path and Path(first.report_path).exists(), where
        assert where_site.audit_lines() == 1, where
        first_outcomes[first.outcome] = first_outcomes.get(first.outcome, 0) + 1

        with where_site.powered() as bms:  # power comes back
            status = bms.boot_status()
            assert status.run_state == "application", (where, status)  # never bricked
            assert status.running_version in (OLD, NEW), (where, status)
            assert bms.self_test().passed and bms.contactors_closed, where
            snapshot = bms.config_snapshot()
            assert (snapshot.config, snapshot.calibration) == (
                expected.config,
                expected.calibration,
            ), where
            booted[status.running_version] += 1
            held = bms.transfer_status().contiguous_bytes

            again = where_site.update()
            assert again.ok, (where, again.outcome, again.error)
            final = bms.boot_status()
            assert (final.running_version, final.image_state) == (NEW, "confirmed"), where
            assert bms.otp.security_counter == 2, where
            if status.running_version == NEW:
                # the power cycle booted the test image (its self-test decides) or the
                # confirm had landed: nothing is sent again
                assert not again.transfer, (where, again.transfer)
                assert again.decisions.start in ("continue-test-image", "already-installed")
            else:
                # the upload goes on at the offset the BMS reports, to the byte
                transfer = again.transfer
                assert transfer.resumed_from == held, (where, held, transfer)
                assert transfer.bytes_sent == (transfer.total or 0) - held, (where, transfer)
                resumed += held > 0
        assert where_site.audit_lines() == 2, where

    elapsed = time.monotonic() - started
    print(
        f"\nSMP power-cut sweep (run_update over serial SMP, in process): N={n_ops} flash "
        f"operations ({len(upload)} in the upload), {len(cuts)} cuts ({cuts}: every "
        f"operation outside the upload, every {STRIDE}. in it and its last), all recovered by "
        f"running the update again; first runs ended {json.dumps(first_outcomes, sort_keys=True)}; "
        f"booted old after {booted[OLD]}, new after {booted[NEW]}; {resumed} uploads resumed; "
        f"{elapsed:.1f} s"
    )
    assert booted[OLD] > 0 and booted[NEW] > 0
