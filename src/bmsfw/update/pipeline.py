"""The update pipeline: the safe procedure a technician runs, over any ``BmsSession``.

identify -> verify package offline against this device -> preflight -> manual
confirmations -> configuration backup (read back) -> authenticate -> transfer
into the inactive bank (watched, resumable) -> device verify -> activate + reset
-> wait for boot and self-test -> confirm, or roll back -> compare configuration
with the backup (restore or report) -> report + audit record.

:func:`run_update` never leaves the caller guessing: it returns an
:class:`~bmsfw.update.report.UpdateReport` whose ``outcome``, ``failed_step``,
``running_version`` and ``error`` (code, diagnosis, remedy) say what happened,
and keeps the exception in ``report.exception`` for the CLI's exit code.
Only programming errors propagate.

What goes on the wire is what the package *stores* for the component
(compressed, a delta patch, ciphertext; for a raw package, the image), and the
BMS decodes it (the encoding is in the manifest it staged): progress, resume
and the report count stored bytes. An encoded stream cannot resume mid-way;
an interrupted one is sent again from byte 0 (raw images resume to the byte).

Delta or full: given a full package and a delta package of the same release
(``run_update(..., delta=...)``), the pipeline reads the digest of the image
the BMS runs (``read_image_digest``) and sends the delta only when it equals
the delta's base; otherwise the full package alone. The report says which and
why (``report.package.payload``, ``.payload_reason``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import logging
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bmsfw.errors import BmsfwError, DeviceError, TransportError, UsageError
from bmsfw.package import (
    Component,
    DeviceFacts,
    TrustAnchors,
    VerifiedRelease,
    release_header,
    verify_release,
)
from bmsfw.package.errors import HashMismatchError, ImageKeyNotFusedError, MalformedPackageError
from bmsfw.protocol.errors import StepDeadlineError
from bmsfw.protocol.session import (
    BmsSession,
    BootStatus,
    Channel,
    ConfigSnapshot,
    DeviceIdentity,
    RadioLink,
    SelfTestResult,
    StoredBytesWriter,
    Telemetry,
    TesterCredentials,
)
from bmsfw.update.audit import AuditLog
from bmsfw.update.backup import diff_snapshots, load_backup, restore_backup, write_backup
from bmsfw.update.core import (
    Action,
    BootMeaning,
    BootReading,
    ConfirmVerdict,
    InstalledVerdict,
    PayloadKind,
    SelfTestVerdict,
    StartFacts,
    StartVerdict,
    active_digest_of,
    channel_for_link,
    choose_payload,
    decide_after_boot,
    decide_start,
    identity_drift,
    interpret_boot,
    judge_confirm,
    judge_installed,
    judge_self_test,
    plan_rollback,
    plan_transfer,
    rollback_took_effect,
    same_release,
)
from bmsfw.update.errors import (
    BankLayoutMismatchError,
    BootTimeoutError,
    DeviceIdentityChangedError,
    InstalledImageMismatchError,
    ManualConfirmationMissingError,
    NoAnswerAfterResetError,
    NotConfirmedRolledBackError,
    NothingToRollBackError,
    PayloadNotSendableError,
    RecordNotWrittenError,
    SecurityCounterNotRaisedError,
    SelfTestFailedRolledBackError,
    TransferInterruptedError,
    TransferPausedUnsafeError,
    TransferTooSlowError,
    UpdateFailedNoRollbackError,
    UpdateInterruptedError,
    VersionDowngradeError,
)
from bmsfw.update.events import (
    Event,
    EventSink,
    Step,
    StepFinished,
    StepStarted,
    TransferProgress,
    UpdateFinished,
    WarningRaised,
)
from bmsfw.update.preflight import ReleaseFacts, run_preflight, validate_overrides
from bmsfw.update.profile import ManualConfirmation, TransferLimits, UpdateProfile
from bmsfw.update.record import RecordTargets, check_record_targets
from bmsfw.update.report import (
    BackupRecord,
    ConfirmationRecord,
    ErrorRecord,
    Outcome,
    ProfileRecord,
    ReportDraft,
    SelfTestRecord,
    StepRecord,
    UpdateReport,
    write_report,
)

__all__ = [
    "AskConfirmation",
    "RecordOptions",
    "UpdateOptions",
    "release_facts",
    "run_rollback",
    "run_update",
    "run_updates",
    "stored_bytes",
    "transfer_violation",
]

logger = logging.getLogger(__name__)

AskConfirmation = Callable[[ManualConfirmation], bool]


def _is_encoded(component: Component) -> bool:
    """Whether the stored bytes differ from the image (compressed, delta, encrypted)."""
    return component.encoding != "raw" or component.is_delta or component.encryption != "none"


def _encoding_name(component: Component) -> str:
    """How the stored bytes are encoded, for reports: "raw", "zstd", "delta", "delta+lz4", …"""
    parts = []
    if component.is_delta:
        parts.append("delta")
    if component.encoding != "raw" or not component.is_delta:
        parts.append(component.encoding)
    if component.encryption != "none":
        parts.append(f"encrypted {component.encryption}")
    return "+".join(parts)


def stored_bytes(package: bytes, component: Component) -> bytes:
    """The stored bytes of ``component`` in ``package``, checked against its (verified) manifest."""
    try:
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            info = archive.getinfo(component.member)
            if info.file_size != component.stored_size:
                raise HashMismatchError(
                    f"component {component.name!r}: {info.file_size} stored bytes, "
                    f"the manifest says {component.stored_size}"
                )
            with archive.open(info) as member:
                stored = member.read(component.stored_size + 1)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise MalformedPackageError(
            f"component {component.name!r} unreadable in the package: {exc}"
        ) from None
    if hashlib.sha256(stored).digest() != component.stored_sha256:
        raise HashMismatchError(f"component {component.name!r}: stored bytes differ")
    return stored


@dataclass(frozen=True)
class _Payload:
    """The release chosen for this BMS and the bytes that go on the wire for it."""

    package: bytes
    release: VerifiedRelease
    component: Component
    data: bytes
    encoded: bool  # ``data`` are stored bytes the BMS decodes (else the decoded image)


@dataclass(frozen=True)
class UpdateOptions:
    """What the technician chose for this update (flags of ``bmsfw update``)."""

    backup_dir: Path
    credentials: TesterCredentials | None = None
    confirmed: frozenset[str] = frozenset()  # confirmation ids given as flags
    overrides: Mapping[str, str] = field(default_factory=dict)  # check name -> reason
    channel: Literal["wired", "ota"] = "wired"
    recovery: bool = False  # allow flashing a BMS stuck in its bootloader
    reinstall: bool = False  # flash even when this version already runs confirmed
    restore_config: bool = True  # write the backup back when the config changed
    component: str = "app"
    audit_log: Path | None = None
    report_dir: Path | None = None
    operator: str = ""
    now: dt.datetime | None = None  # certificate validity time (tests)
    # A release lower than what runs is refused unless a reason is given (recorded).
    downgrade_reason: str = ""
    # Asked at every safe point before the activation: True stops the run there
    # (Ctrl-C / SIGTERM in the CLI); the report and audit record are still written.
    stop: Callable[[], bool] | None = None


def release_facts(release: VerifiedRelease) -> ReleaseFacts:
    m = release.manifest
    return ReleaseFacts(
        version=m.version,
        model=m.hardware.model,
        hw_revisions=tuple(m.hardware.revisions),
        min_bootloader_version=m.min_bootloader_version,
        security_counter=m.security_counter,
    )


def transfer_violation(telemetry: Telemetry, limits: TransferLimits) -> str:
    """Why writing must stop now ("" when every watched value is inside its limits)."""
    problems = []
    if not limits.soc_min_pct <= telemetry.soc_pct <= limits.soc_max_pct:
        problems.append(
            f"state of charge {telemetry.soc_pct:.1f} % outside "
            f"{limits.soc_min_pct:g}–{limits.soc_max_pct:g} %"
        )
    temps = telemetry.temperatures_c
    if temps and not (limits.temp_min_c <= min(temps) and max(temps) <= limits.temp_max_c):
        problems.append(
            f"temperature {min(temps):.1f}…{max(temps):.1f} °C outside "
            f"{limits.temp_min_c:g}–{limits.temp_max_c:g} °C"
        )
    if not limits.supply_min_v <= telemetry.supply_voltage_v <= limits.supply_max_v:
        problems.append(
            f"supply {telemetry.supply_voltage_v:.2f} V outside "
            f"{limits.supply_min_v:g}–{limits.supply_max_v:g} V"
        )
    if telemetry.faults:
        problems.append(f"protection fault(s) {', '.join(telemetry.faults)}")
    return "; ".join(problems)


@dataclass(frozen=True)
class RecordOptions:
    """Where the record of a run goes, and who ran it."""

    backup_dir: Path
    audit_log: Path | None = None
    report_dir: Path | None = None
    operator: str = ""


class _Shell:
    """The I/O around the decision core for one node: events, steps, report, audit."""

    kind: Literal["update", "rollback"] = "update"

    def __init__(
        self,
        session: BmsSession,
        profile: UpdateProfile,
        record: RecordOptions,
        *,
        sink: EventSink | None,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.session = session
        self.profile = profile
        self.record = record
        self.sink = sink
        self.sleep = sleep
        self.clock = clock
        self.node = "?"
        self.report = ReportDraft(node="?", operator=record.operator, kind=self.kind)

    def emit(self, event: Event) -> None:
        if self.sink is not None:
            try:
                self.sink(event)
            except Exception:  # a broken progress display must not break a flash
                logger.exception("event sink failed on %s", type(event).__name__)

    def warn(self, message: str) -> None:
        logger.warning("%s: %s", self.node, message)
        self.report.append("warnings", message)
        self.emit(WarningRaised(self.node, message))

    @contextlib.contextmanager
    def step(self, name: Step) -> Iterator[list[str]]:
        """Time a step, emit its events and record it; yields a list to put a detail in."""
        started_wall, started = time.time(), self.clock()
        self.emit(StepStarted(self.node, name))
        logger.info("%s: step %s", self.node, name)
        detail: list[str] = []
        ok = False
        try:
            yield detail
            ok = True
        finally:
            duration = self.clock() - started
            text = "; ".join(detail)
            self.report.append("steps", StepRecord(name, ok, started_wall, duration, text))
            self.emit(StepFinished(self.node, name, ok, text, duration))

    def identify(self) -> DeviceIdentity:
        with self.step("identify") as detail:
            identity = self.session.identify()
            self.node = identity.address or identity.serial
            self.report.set(
                node=self.node,
                device_before=identity,
                running_version=identity.app_version,
            )
            detail.append(f"{identity.model} {identity.serial} runs {identity.app_version}")
        return identity

    def check_records(self) -> None:
        """Nothing goes to the BMS before we know its record can be kept."""
        check_record_targets(
            RecordTargets(
                backup_dir=self.record.backup_dir,
                report_dir=self.record.report_dir,
                audit_log=self.record.audit_log,
            )
        )

    def wait_after_rollback(self) -> BootStatus:
        deadline = self.clock() + self.profile.boot.revert_timeout_s
        while True:
            try:
                return self.session.wait_boot(max(0.1, deadline - self.clock()))
            except BmsfwError as exc:
                if not isinstance(exc, TimeoutError) or self.clock() >= deadline:
                    raise UpdateFailedNoRollbackError(
                        f"the BMS did not come back after the rollback: {exc}"
                    ) from exc

    def read_boot_status_retrying(self, attempts: int = 3) -> BootStatus:
        """Read the boot status, retrying a transport failure (never a device refusal).

        Right after a confirm the BMS may still be writing its boot journal, and on a
        loaded link one read can time out: a lost answer must not turn a confirmed
        update into a failed one.
        """
        for attempt in range(attempts):
            try:
                return self.session.read_boot_status()
            except (TransportError, TimeoutError) as exc:
                if attempt + 1 == attempts:
                    raise
                logger.info("%s: boot status read failed (%s); retrying", self.node, exc)
                self.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def probe_after_failure(self, fallback_version: str, changed: bool) -> None:
        """What does the device run now? Ask, but a dead link must not hide the report."""
        report = self.report
        try:
            status = self.session.read_boot_status()
            report.set(running_version=status.running_version, device_now=status)
        except BmsfwError as probe:
            report.append("warnings", f"could not read the boot status afterwards: {probe}")
            report.set(
                running_version="unknown (BMS not answering)" if changed else fallback_version
            )

    def audit_fields(self) -> dict[str, Any]:
        report = self.report
        return {
            "device": {
                k: getattr(report.now.device_before, k, None)
                for k in ("model", "hw_revision", "serial", "app_version", "address")
            },
            "result": report.now.outcome,
            "decisions": report.now.decisions.to_dict(),
            "running_version": report.now.running_version,
            "failed_step": report.now.failed_step,
            "error_code": report.now.error.code if report.now.error else "",
        }

    def finish(self) -> UpdateReport:
        """Write the audit record and the report; a failure to write is reported, not lost."""
        report = self.report
        report.set(finished_at=time.time())
        if report.now.ok and report.now.device_now is None:
            try:
                report.set(device_now=self.read_boot_status_retrying())
            except BmsfwError as exc:
                report.append("warnings", f"could not read the boot status afterwards: {exc}")
        problems: list[str] = []
        if self.record.audit_log is not None:
            try:
                audit_hash = AuditLog(self.record.audit_log).append(
                    self.kind, self.audit_fields(), who=self.record.operator or None
                )
                report.set(audit_hash=audit_hash)
            except (OSError, BmsfwError) as exc:
                problems.append(f"audit record not written to {self.record.audit_log}: {exc}")
        report_path = ""
        if self.record.report_dir is not None:
            try:
                report_path = str(write_report(report.freeze(), self.record.report_dir))
                logger.info("%s: report written to %s", self.node, report_path)
            except OSError as exc:
                problems.append(f"report not written to {self.record.report_dir}: {exc}")
        if problems:
            error = RecordNotWrittenError(
                f"{'; '.join(problems)}; the {self.kind} itself ended {report.now.outcome}, "
                f"the BMS runs {report.now.running_version or 'unknown'}"
            )
            report.set(record_error=ErrorRecord.of(error))
            report.append("warnings", *problems)
            if report.now.exception is None:
                report.set(exception=error)
        final = report.freeze(report_path=report_path)
        self.emit(
            UpdateFinished(
                self.node, final.ok, final.error.code if final.error else "", final.running_version
            )
        )
        return final


class _Run(_Shell):
    """One node's update: drives the decision core (:mod:`bmsfw.update.core`)."""

    def __init__(
        self,
        session: BmsSession,
        package: bytes,
        trust: TrustAnchors,
        profile: UpdateProfile,
        options: UpdateOptions,
        *,
        sink: EventSink | None,
        ask: AskConfirmation | None,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        delta: bytes | None = None,
    ) -> None:
        record = RecordOptions(
            options.backup_dir, options.audit_log, options.report_dir, options.operator
        )
        super().__init__(session, profile, record, sink=sink, sleep=sleep, clock=clock)
        self.package = package
        self.delta = delta
        self.trust = trust
        self.options = options
        self.ask = ask
        # set once the BMS accepted the release header: from then on flash may change
        self.staged = False
        # set before the activate request goes out: from then on the BMS may boot the new
        # image by itself, so a BMS that stops answering runs an unknown image, not the old
        self.activated = False
        self.first_identity: DeviceIdentity | None = None  # the BMS as identified first

    # --- the procedure ------------------------------------------------------------

    def run(self) -> UpdateReport:
        report = self.report
        report.set(
            profile=ProfileRecord(name=self.profile.name, source=self.profile.source),
            overrides=dict(self.options.overrides),
        )
        report.note_package(
            sha256=hashlib.sha256(self.package).hexdigest(),
            delta_sha256=hashlib.sha256(self.delta).hexdigest() if self.delta else None,
            downgrade_reason=self.options.downgrade_reason or None,
        )
        step: Step = "identify"
        identity: DeviceIdentity | None = None
        snapshot: ConfigSnapshot | None = None
        try:
            validate_overrides(self.options.overrides)
            self.check_records()
            identity = self.identify()
            self.first_identity = identity
            step = "verify-package"
            with self.step("verify-package") as detail:
                # the BMS's image keys are judged by decide_start below, not here
                facts = DeviceFacts(
                    identity.model,
                    identity.hw_revision,
                    identity.bootloader_version,
                    identity.security_counter,
                    self._channel(),
                )
                release = verify_release(self.package, self.trust, facts, now=self.options.now)
                m = release.manifest
                report.note_package(
                    product=m.product,
                    version=m.version,
                    security_counter=m.security_counter,
                    safety_class=m.safety_class,
                    signer=tuple(c.subject for c in release.chain),
                )
                detail.append(f"{m.product} {m.version} signed by {release.chain[0].subject}")
                digest, digest_problem = self._running_digest()
                component = m.component(self._component(release))
                start = decide_start(
                    StartFacts(
                        release_version=m.version,
                        release_image_sha256=active_digest_of(component),
                        boot=self.session.read_boot_status(),
                        running_digest=digest,
                        reinstall=self.options.reinstall,
                        downgrade_reason=self.options.downgrade_reason,
                        image_key_hashes=tuple(
                            (name, info.key_hash) for name, info in release.image_info.items()
                        ),
                        device_key_hashes=tuple(
                            bytes.fromhex(h) for h in identity.image_key_hashes
                        ),
                        release_image_size=component.image_size,
                        flash_layout=identity.flash_layout,
                    )
                )
                report.decide(start=start.verdict.value, start_reason=start.reason)
                if start.key_check:
                    report.decide(image_key=start.key_check)
                if start.key_left_to_device:
                    self.warn(f"image key check {start.key_check}")
                if start.layout_check:
                    report.decide(bank_layout=start.layout_check)
                if start.verdict is StartVerdict.REFUSE_IMAGE_KEY:
                    raise ImageKeyNotFusedError(start.reason)
                if start.verdict is StartVerdict.REFUSE_BANK_LAYOUT:
                    report.decide(bank_layout=start.reason)
                    raise BankLayoutMismatchError(start.reason)
                if start.downgrade:
                    report.note_package(downgrade=True)
                if start.warning:
                    self.warn(start.warning)
                if start.verdict is StartVerdict.REFUSE_DOWNGRADE:
                    step = "preflight"
                    raise VersionDowngradeError(start.reason)
                if start.downgrade:
                    self.warn(start.reason)
                if start.verdict is StartVerdict.START:
                    payload = self._choose_payload(release, facts, identity, digest, digest_problem)
                    detail.append(f"sending {report.now.package.payload_reason}")
                else:
                    detail.append(start.reason)
            if start.verdict is StartVerdict.ALREADY_INSTALLED:
                report.set(outcome=Outcome.ALREADY_INSTALLED)
                self.warn(start.reason)
                return self.finish()
            if start.verdict is StartVerdict.CONTINUE_TEST_IMAGE:
                # An earlier run of this update was interrupted after the activation:
                # its self-test decides, nothing is sent again.
                self.staged = True
                self.warn(start.reason)
                step = "authenticate"
                self._authenticate()
                step = "self-test"
                confirmed = self._after_reset("", release)
                step = "confirm"
                self._confirm("", release, already=confirmed)
                self.warn(
                    "configuration not compared: the backup of the interrupted run holds "
                    "the values from before (`bmsfw diff BACKUP` compares them)"
                )
                return self.finish()
            step = "preflight"
            with self.step("preflight") as detail:
                pre = run_preflight(
                    self.session,
                    self.profile.preflight,
                    release_facts(release),
                    overrides=self.options.overrides,
                    recovery=self.options.recovery,
                    sleep=self.sleep,
                    node=self.node,
                    sink=self.emit,
                )
                report.set(preflight=list(pre.checks))
                for c in pre.checks:
                    if c.overridden:
                        self.warn(f"preflight check {c.name} overridden: {c.override_reason}")
                detail.append(f"{sum(c.passed for c in pre.checks)}/{len(pre.checks)} passed")
                pre.raise_if_failed()
                self._same_bms()
            self._check_stop()
            step = "confirmations"
            with self.step("confirmations"):
                self._confirmations()
            step = "backup"
            with self.step("backup") as detail:
                snapshot = self.session.read_config()
                backup = write_backup(self.options.backup_dir, identity, snapshot)
                report.set(backup=BackupRecord(path=str(backup.path), checksum=snapshot.checksum))
                detail.append(str(backup.path))
            self._check_stop()
            step = "authenticate"
            self._authenticate()
            step = "transfer"
            with self.step("transfer") as detail:
                self._same_bms()
                header = release_header(payload.package)
                self._transfer(header, payload)
                detail.append(self._payload_text(payload))
            self._check_stop()
            step = "device-verify"
            with self.step("device-verify") as detail:
                try:
                    self.session.verify()
                except DeviceError as exc:
                    if not report.now.transfer.resumed_from:
                        raise
                    # A block half-programmed when the power went can look written after
                    # the restart; a resumed image that fails verification gets one clean
                    # full transfer before we give up.
                    self.warn(f"resumed image failed verification ({exc.code}); sending it whole")
                    self._transfer(header, payload, force_full=True)
                    self.session.verify()
                    detail.append("verified after a full re-transfer")
            self._check_stop()
            step = "activate"
            with self.step("activate"):
                self._same_bms()
                self.activated = True
                self.session.activate()
                self.session.reset()
            # From here the BMS decides by itself if we go away (the watchdog reverts an
            # unconfirmed image): a stop request waits for the self-test and confirm.
            step = "self-test"
            confirmed = self._after_reset(identity.app_version, release)
            step = "confirm"
            self._confirm(identity.app_version, release, already=confirmed)
            step = "config-compare"
            self._compare_config(snapshot)
        except (BmsfwError, KeyboardInterrupt) as caught:
            error = (
                caught
                if isinstance(caught, BmsfwError)
                else UpdateInterruptedError(f"stopped during {step} (second Ctrl-C or SIGTERM)")
            )
            self._failed(step, error, identity)
            if report.now.outcome == Outcome.ROLLED_BACK and snapshot is not None:
                # Back on the old firmware: show that the configuration survived too.
                try:
                    self._compare_config(snapshot)
                except BmsfwError as compare_error:
                    self.warn(f"configuration not compared after the rollback: {compare_error}")
        return self.finish()

    def _authenticate(self) -> None:
        with self.step("authenticate") as detail:
            if self.options.credentials is not None:
                self.session.authenticate(self.options.credentials)
                detail.append("tester certificate accepted")
            else:
                detail.append("no tester credentials given; the session's own access")

    def _check_stop(self) -> None:
        """A safe point: the operator asked to stop (Ctrl-C, SIGTERM) before the activation."""
        if self.options.stop is not None and self.options.stop():
            raise UpdateInterruptedError(
                "stopped by the operator before the activation; the BMS runs its old "
                "firmware and keeps what it received"
            )

    def _running_digest(self) -> tuple[bytes | None, str]:
        """The digest the BMS computes over its running image (None and why when unreadable)."""
        try:
            return self.session.read_image_digest(), ""
        except BmsfwError as exc:
            return None, f"{exc.code}: {exc.message}"

    def _component(self, release: VerifiedRelease) -> str:
        names = [c.name for c in release.manifest.components]
        if self.options.component in names:
            return self.options.component
        if len(names) == 1:
            return names[0]
        raise UpdateFailedNoRollbackError(
            f"component {self.options.component!r} not in the release ({', '.join(names)})"
        )

    # --- what goes on the wire ---------------------------------------------------

    def _choose_payload(
        self,
        full: VerifiedRelease,
        facts: DeviceFacts,
        identity: DeviceIdentity,
        digest: bytes | None,
        digest_problem: str,
    ) -> _Payload:
        """The delta when the BMS runs its base image exactly, else the full package."""
        name = self._component(full)
        package, release = self.package, full
        report = self.report
        delta: VerifiedRelease | None = None
        base: bytes | None = None
        if self.delta is not None:
            delta = verify_release(self.delta, self.trust, facts, now=self.options.now)
            base = self._check_delta(full, delta, name).delta_base_sha256
        choice = choose_payload(
            delta_base=base,
            running_digest=digest,
            running_version=identity.app_version,
            digest_problem=digest_problem,
            delta_size=delta.manifest.component(name).stored_size if delta else 0,
        )
        report.note_package(
            payload="delta" if choice.sends_delta else "full", payload_reason=choice.reason
        )
        if choice.sends_delta:
            assert self.delta is not None and delta is not None
            package, release = self.delta, delta
        elif choice.kind is PayloadKind.FALLBACK_FULL:
            self.warn(choice.reason)
        component = release.manifest.component(name)
        report.note_package(
            payload_sha256=hashlib.sha256(package).hexdigest(),
            encoding=_encoding_name(component),
            stored_bytes=component.stored_size,
            image_bytes=component.image_size,
        )
        logger.info("%s: %s", self.node, choice.reason)
        if not _is_encoded(component):
            return _Payload(package, release, component, release.image(name), encoded=False)
        if isinstance(self.session, StoredBytesWriter) and self.session.accepts_stored:
            data = stored_bytes(package, component)
            return _Payload(package, release, component, data, encoded=True)
        if name in release.images:
            # a session that cannot take stored bytes gets the image the host decoded
            report.note_package(encoding="raw (decoded by the updater)")
            return _Payload(package, release, component, release.image(name), encoded=False)
        raise PayloadNotSendableError(
            f"component {name!r} is stored {_encoding_name(component)}: only the BMS can "
            f"decode it, and this session ({type(self.session).__name__}) cannot send "
            "stored bytes; use the full, unencrypted package"
        )

    @staticmethod
    def _check_delta(full: VerifiedRelease, delta: VerifiedRelease, name: str) -> Component:
        fm, dm = full.manifest, delta.manifest
        if (dm.product, dm.version, dm.security_counter) != (
            fm.product,
            fm.version,
            fm.security_counter,
        ):
            raise UsageError(
                f"the delta package is {dm.product} {dm.version} (counter "
                f"{dm.security_counter}), the full package {fm.product} {fm.version} "
                f"(counter {fm.security_counter}): give both packages of the same release"
            )
        try:
            component = dm.component(name)
        except KeyError:
            raise UsageError(f"the delta package has no component {name!r}") from None
        if not component.is_delta:
            raise UsageError(
                f"the package given as delta holds a full {name!r} image "
                f"({_encoding_name(component)}), not a delta"
            )
        if component.image_sha256 != fm.component(name).image_sha256:
            raise UsageError(
                "the delta package does not produce the full package's image "
                "(different SHA-256): they are not the same build"
            )
        return component

    def _channel(self) -> Channel:
        """The channel the package's policy judges: a radio link is over the air."""
        wireless = isinstance(self.session, RadioLink) and self.session.wireless
        channel = channel_for_link(wireless, self.options.channel)
        self.report.decide(channel=channel)
        return channel

    @staticmethod
    def _payload_text(payload: _Payload) -> str:
        c = payload.component
        if not payload.encoded:
            return f"{len(payload.data)} bytes"
        return f"{len(payload.data)} bytes {_encoding_name(c)} for a {c.image_size}-byte image"

    def _confirmations(self) -> None:
        missing = []
        for item in self.profile.confirmations:
            if item.id in self.options.confirmed:
                how = "flag"
            elif self.ask is not None and self.ask(item):
                how = "interactive"
            else:
                missing.append(item)
                continue
            self.report.append("confirmations", ConfirmationRecord(item.id, item.text, how))
        if missing:
            raise ManualConfirmationMissingError(
                "not confirmed: " + "; ".join(f"{c.text} (--confirm {c.id})" for c in missing)
            )

    def _transfer(self, header: bytes, payload: _Payload, *, force_full: bool = False) -> None:
        try:
            # A downgrade the update core allowed (with the operator's reason) is the only
            # one recorded in the package record before a transfer: the staging request
            # says so (a BMS refuses a lower version over the air without it).
            state = self.session.prepare(
                header,
                channel=self._channel(),
                downgrade_authorised=bool(self.report.now.package.downgrade),
            )
        except StepDeadlineError:
            raise  # it answered, too slowly: not a power loss or a lost link
        except TransportError as exc:
            # No answer to the staging request: the BMS may have staged it (power loss,
            # lost link). Nothing is running differently; the same command continues.
            self.staged = True
            raise TransferInterruptedError(
                f"no answer while staging the release: {exc.code}: {exc.message}"
            ) from exc
        self.staged = True
        image = payload.data
        total = len(image)
        plan = plan_transfer(state, total, encoded=payload.encoded, force_full=force_full)
        start = plan.start_offset
        if plan.reason:
            self.warn(plan.reason)
        if plan.erase:
            try:
                self.session.erase()
            except StepDeadlineError:
                raise
            except TransportError as exc:
                raise TransferInterruptedError(
                    f"no answer while erasing the inactive bank: {exc.code}: {exc.message}"
                ) from exc
        note = self.report.note_transfer
        note(
            total=total,
            resumed_from=start,
            offset=start,
            duration_s=0.0,
            encoding=_encoding_name(payload.component) if payload.encoded else "raw",
            image_bytes=payload.component.image_size,
        )
        self.emit(TransferProgress(self.node, start, total, start))
        limits = self.profile.transfer
        floor = limits.min_rate_bps(getattr(self.session, "address", ""))
        started = last_check = self.clock()
        offset = start
        if start < total:
            blocks = self.session.write(image, start_offset=start)
            try:
                for offset in blocks:
                    note(offset=offset)
                    self.emit(TransferProgress(self.node, offset, total, start))
                    if self.options.stop is not None and self.options.stop() and offset < total:
                        raise UpdateInterruptedError(
                            f"stopped by the operator at byte {offset} of {total}; the BMS "
                            "keeps what it received and runs its old firmware"
                        )
                    now = self.clock()
                    elapsed = now - started
                    if floor and elapsed >= limits.rate_grace_s and offset < total:
                        rate = (offset - start) / elapsed
                        if rate < floor:
                            raise TransferTooSlowError(
                                f"{rate:.0f} B/s over {elapsed:.1f} s at byte {offset} of "
                                f"{total}, below the floor of {floor:g} B/s for this link"
                            )
                    if now - last_check >= limits.monitor_interval_s and offset < total:
                        last_check = now
                        why = transfer_violation(self.session.read_telemetry(), limits)
                        if why:
                            # Stop between blocks: what the device holds stays resumable.
                            raise TransferPausedUnsafeError(
                                f"stopped at byte {offset} of {total}: {why}"
                            )
            except TransportError as exc:
                raise TransferInterruptedError(
                    f"at byte {offset} of {total}: {exc.code}: {exc.message}"
                ) from exc
            finally:
                close = getattr(blocks, "close", None)
                if close is not None:
                    close()
                note(duration_s=round(self.clock() - started, 3))
        if offset < total:
            raise TransferInterruptedError(f"the BMS stopped taking data at byte {offset}")
        sent = total - start
        duration = max(self.clock() - started, 1e-9)
        note(offset=total, bytes_sent=sent, rate_bps=round(sent / duration))

    def _read_self_test(self) -> SelfTestResult | None:
        try:
            result = self.session.read_self_test()
        except BmsfwError as exc:
            self.warn(f"could not read the self-test record: {exc}")
            return None
        self.report.set(
            self_test=SelfTestRecord(
                passed=result.passed, version=result.version, checks=tuple(result.checks)
            )
        )
        return result

    def _read_after_reset(self, new_version: str, previous: str, timeout_s: float) -> BootReading:
        """Wait for the application; when it does not come, ask once whether anyone answers."""
        try:
            status: BootStatus | None = self.session.wait_boot(timeout_s)
            return BootReading(new_version, previous, status)
        except BmsfwError as exc:
            if not isinstance(exc, TimeoutError | TransportError):
                raise
            logger.info("%s: no application after %g s: %s", self.node, timeout_s, exc)
        try:
            status = self.session.read_boot_status()
        except BmsfwError:
            return BootReading(new_version, previous, None, answered=False)
        return BootReading(new_version, previous, status)

    def _after_reset(self, previous: str, release: VerifiedRelease) -> bool:
        """Read what booted, judge the self-test and act on the core's decision.

        Returns whether the new image already runs confirmed (a confirm whose answer
        was lost in an earlier run); raises for every outcome but "confirm now".
        ``previous``: the version that ran before ("" when unknown: a resumed run).
        """
        new_version = release.manifest.version
        boot = self.profile.boot
        with self.step("self-test") as detail:
            reading = self._read_after_reset(new_version, previous, boot.boot_timeout_s)
            meaning = interpret_boot(reading)
            if meaning is BootMeaning.STILL_BOOTING:
                # It answers but its application does not start: give the bootloader its
                # revert window, then judge again.
                self.warn(f"no application within {boot.boot_timeout_s:g} s; waiting for a revert")
                reading = self._read_after_reset(new_version, previous, boot.revert_timeout_s)
                meaning = interpret_boot(reading)
                if meaning is BootMeaning.STILL_BOOTING:
                    state = reading.status.run_state if reading.status else "silent"
                    raise BootTimeoutError(
                        f"the BMS answers ({state}) but no application started within "
                        f"{boot.boot_timeout_s + boot.revert_timeout_s:g} s of the reset"
                    )
            status = reading.status
            verdict: SelfTestVerdict | None = None
            if meaning is BootMeaning.NEW_IN_TEST:
                verdict = judge_self_test(self._read_self_test(), new_version)
            elif meaning in (BootMeaning.REVERTED, BootMeaning.BOOT_LOOP):
                self._read_self_test()  # the previous firmware's record, for the report
            decision = decide_after_boot(meaning, verdict)
            self.report.decide(after_boot=decision.action.value, after_boot_reason=decision.reason)
            if status is not None:
                self.report.set(running_version=status.running_version)
                detail.append(f"booted {status.running_version} ({status.image_state})")
            detail.append(f"{meaning.value}: {decision.action.value}")
            if decision.action is Action.CONFIRM:
                return False
            if decision.action is Action.REPORT_CONFIRMED:
                self.warn(f"{new_version} already runs confirmed")
                return True
            if decision.action is Action.REPORT_NO_ANSWER:
                raise NoAnswerAfterResetError(
                    f"no answer within {boot.boot_timeout_s:g} s of the reset: power loss or "
                    "lost link (not a boot loop); run the same command again when the BMS is back"
                )
            if decision.action is Action.REPORT_STUCK:
                assert status is not None
                raise UpdateFailedNoRollbackError(
                    f"after the update the BMS runs {status.running_version or 'no application'} "
                    f"({status.run_state}, {status.image_state}): {meaning.value}"
                )
            if decision.action is Action.REVERT:
                failed = ""
                if verdict is SelfTestVerdict.FAILED:
                    failed = ", ".join(c.name for c in self.report.now.self_test.failed_checks())
                self.warn(
                    f"self-test {verdict.value if verdict else 'not read'}"
                    f"{f' ({failed})' if failed else ''}; rolling back"
                )
                status = self._roll_back(new_version)
            assert status is not None
            self._raise_reverted(status, new_version, meaning)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_reverted(self, status: BootStatus, new_version: str, meaning: BootMeaning) -> None:
        """The BMS is back on its previous image: say why, with the self-test if there is one."""
        self.report.set(outcome=Outcome.ROLLED_BACK)
        st = self.report.now.self_test
        if not st or (st.version and not same_release(new_version, st.version)):
            # The bootloader already reverted: this record is the old firmware's.
            self.report.set(
                self_test=SelfTestRecord(
                    passed=False,
                    version=new_version,
                    checks=(),
                    detail=status.last_revert_reason or "reverted by the bootloader",
                    after_revert=st or None,
                )
            )
        failed = self.report.now.self_test.failed_checks()
        listed = ", ".join(f"{c.name} {c.value} (limit {c.limit})" for c in failed)
        reason = status.last_revert_reason
        if failed or "self" in reason.lower():
            raise SelfTestFailedRolledBackError(
                f"{new_version} failed its self-test ({listed or reason}); "
                f"the BMS runs {status.running_version} again"
            )
        if meaning is BootMeaning.BOOT_LOOP:
            raise NotConfirmedRolledBackError(
                f"{new_version} did not start (boot loop: {reason}); "
                f"the BMS runs {status.running_version} again"
            )
        raise NotConfirmedRolledBackError(
            f"{new_version} did not stay active ({reason or status.image_state}); "
            f"the BMS runs {status.running_version} again"
        )

    def _same_bms(self, *, after_reset: bool = False) -> None:
        """Re-read the identity: another serial, model or bank layout stops the run here."""
        assert self.first_identity is not None
        drift = identity_drift(
            self.first_identity, self.session.identify(), after_reset=after_reset
        )
        if drift:
            raise DeviceIdentityChangedError(
                f"the BMS is not the one identified at the start ({drift}); nothing more "
                "is written to it"
            )

    def _roll_back(self, new_version: str) -> BootStatus:
        """Ask for the rollback, wait, and believe it only when the new image is gone."""
        self.session.rollback()
        after = self.wait_after_rollback()
        self.report.set(running_version=after.running_version)
        if not rollback_took_effect(after, new_version):
            raise UpdateFailedNoRollbackError(
                f"the BMS acknowledged the rollback but still runs {after.running_version} "
                f"({after.run_state}, {after.image_state}); it was not rolled back"
            )
        return after

    def _confirm(self, previous: str, release: VerifiedRelease, *, already: bool) -> None:
        new_version = release.manifest.version
        with self.step("confirm") as detail:
            refused: DeviceError | None = None
            self._same_bms(after_reset=True)
            if not already:
                try:
                    self.session.confirm()
                except DeviceError as exc:  # E210: the BMS refused; its status decides
                    refused = exc
            status = self.read_boot_status_retrying()
            detail.append(f"bank {status.active_bank} {status.image_state}")
            verdict = judge_confirm(status, new_version)
            if refused is not None and verdict is not ConfirmVerdict.LOST:
                if verdict is ConfirmVerdict.CONFIRMED:
                    # Refused, yet "confirmed": the BMS contradicts itself. Nothing more
                    # is written to it; the report says failed, never updated.
                    self.warn(
                        f"the BMS refused the confirm ({refused.code}) but reports "
                        f"{status.running_version} confirmed: not believed"
                    )
                    raise refused
                self.warn(f"the BMS refused the confirm ({refused.code}); rolling back now")
                self._roll_back(new_version)
                self.report.set(outcome=Outcome.ROLLED_BACK)
                raise refused
            if verdict is ConfirmVerdict.STILL_TEST:
                # The firmware acknowledged but did not make itself permanent: do not
                # leave the pack on an image the watchdog will throw out later.
                self.warn(f"{new_version} did not confirm itself; rolling back now")
                after = self._roll_back(new_version)
                self.report.set(outcome=Outcome.ROLLED_BACK)
                raise NotConfirmedRolledBackError(
                    f"{new_version} acknowledged the confirm but stayed a test image; "
                    f"rolled back, the BMS runs {after.running_version}"
                )
            if verdict is ConfirmVerdict.LOST:
                reading = self._read_after_reset(
                    new_version, previous, self.profile.boot.revert_timeout_s
                )
                if reading.status is None:
                    raise NoAnswerAfterResetError("the BMS stopped answering after the confirm")
                self.report.set(running_version=reading.status.running_version)
                self._raise_reverted(reading.status, new_version, interpret_boot(reading))
            self.report.set(running_version=status.running_version)
            self._judge_installed(release, status)
            detail.append(self.report.now.decisions.installed_reason or "")
        self.report.set(outcome=Outcome.UPDATED)

    def _judge_installed(self, release: VerifiedRelease, status: BootStatus) -> None:
        """ "updated" only on the BMS's digest of its active image and a raised counter."""
        assert self.first_identity is not None
        m = release.manifest
        digest, problem = self._running_digest()
        before = self.first_identity.security_counter
        component = m.component(self._component(release))
        check = judge_installed(
            release_image_sha256=active_digest_of(component),
            running_digest=digest,
            release_counter=m.security_counter,
            counter_before=before,
            counter_after=status.security_counter,
        )
        self.report.decide(
            installed=check.verdict.value,
            installed_reason=check.reason,
            security_counter=f"{before} -> {status.security_counter}",
        )
        if not check.ok:
            error = (
                SecurityCounterNotRaisedError
                if check.verdict is InstalledVerdict.COUNTER_NOT_RAISED
                else InstalledImageMismatchError
            )
            raise error(f"{check.reason}{f' ({problem})' if problem else ''}; not reported updated")

    def _compare_config(self, backup_snapshot: ConfigSnapshot) -> None:
        with self.step("config-compare") as detail:
            now = self.session.read_config()
            changes = diff_snapshots(backup_snapshot, now)
            self.report.set(config_changes=tuple(changes))
            if not changes:
                detail.append("unchanged")
                return
            if not self.options.restore_config:
                self.warn(f"{len(changes)} configuration value(s) changed; not restored")
                return
            restore_backup(self.session, load_backup(str(self.report.now.backup.path)))
            self.report.set(config_restored=True)
            detail.append(f"{len(changes)} value(s) restored")

    def _failed(self, step: Step, exc: BmsfwError, identity: DeviceIdentity | None) -> None:
        report = self.report
        cause = exc.__cause__ if isinstance(exc.__cause__, BaseException) else None
        report.fail(step, exc, cause)
        if report.now.outcome != Outcome.ROLLED_BACK:
            # a release header the BMS refused (delta base, missing key, ...) wrote nothing
            if isinstance(
                exc,
                TransferPausedUnsafeError
                | TransferInterruptedError
                | UpdateInterruptedError
                | NoAnswerAfterResetError,
            ):
                report.set(outcome=Outcome.PAUSED)
            elif not self.staged:
                report.set(outcome=Outcome.REFUSED)
            else:
                report.set(outcome=Outcome.FAILED)
        logger.warning("%s: update failed at %s: %s", self.node, step, exc)
        if identity is not None:
            self.probe_after_failure(
                identity.app_version,
                changed=self.activated
                or report.now.outcome not in (Outcome.REFUSED, Outcome.PAUSED),
            )

    def audit_fields(self) -> dict[str, Any]:
        report = self.report
        return {
            **super().audit_fields(),
            "package": report.now.package.to_dict(),
            "overrides": report.now.overrides,
            "confirmations": [c.id for c in report.now.confirmations],
            "backup": report.now.backup.path or "",
        }


class _Rollback(_Shell):
    """``bmsfw rollback`` for one node: the core's :func:`plan_rollback` decides."""

    kind = "rollback"

    def __init__(
        self,
        session: BmsSession,
        profile: UpdateProfile,
        record: RecordOptions,
        credentials: TesterCredentials | None,
        *,
        sink: EventSink | None,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(session, profile, record, sink=sink, sleep=sleep, clock=clock)
        self.credentials = credentials
        self.changed = False

    def run(self) -> UpdateReport:
        report = self.report
        step: Step = "identify"
        identity: DeviceIdentity | None = None
        try:
            self.check_records()
            identity = self.identify()
            step = "rollback"
            with self.step("rollback") as detail:
                before = self.read_boot_status_retrying()
                plan = plan_rollback(before)
                report.decide(rollback=plan.action.value, rollback_reason=plan.reason)
                detail.append(plan.reason)
                if not plan.changes_device:
                    raise NothingToRollBackError(plan.reason)
                if self.credentials is not None:
                    self.session.authenticate(self.credentials)
                self.changed = True
                self.session.rollback()
                after = self.wait_after_rollback()
                report.set(running_version=after.running_version, device_now=after)
                if after.image_state == "test":
                    raise UpdateFailedNoRollbackError(
                        f"after the rollback the BMS still runs a test image "
                        f"({after.running_version})"
                    )
                report.set(outcome=Outcome.ROLLED_BACK)
                detail.append(
                    f"was {before.running_version} (bank {before.active_bank} "
                    f"{before.image_state}), now runs {after.running_version} "
                    f"(bank {after.active_bank} {after.image_state})"
                )
        except (BmsfwError, KeyboardInterrupt) as caught:
            error = (
                caught
                if isinstance(caught, BmsfwError)
                else UpdateInterruptedError(f"stopped during {step}")
            )
            cause = error.__cause__ if isinstance(error.__cause__, BaseException) else None
            report.fail(step, error, cause)
            report.set(outcome=Outcome.FAILED if self.changed else Outcome.REFUSED)
            if identity is not None:
                self.probe_after_failure(identity.app_version, changed=self.changed)
        return self.finish()


def run_rollback(
    session: BmsSession,
    record: RecordOptions,
    *,
    credentials: TesterCredentials | None = None,
    profile: UpdateProfile | None = None,
    sink: EventSink | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> UpdateReport:
    """Roll one BMS back as :func:`bmsfw.update.core.plan_rollback` allows; report + audit.

    Only an unconfirmed test image is rolled back (to the confirmed image). Otherwise
    nothing changes on the BMS and the report carries ``NothingToRollBackError``
    (outcome "refused"). Either way a report and an audit record are written.
    """
    run = _Rollback(
        session,
        profile or UpdateProfile(),
        record,
        credentials,
        sink=sink,
        sleep=sleep,
        clock=clock,
    )
    return run.run()


def run_update(
    session: BmsSession,
    package: bytes,
    trust: TrustAnchors,
    options: UpdateOptions,
    *,
    profile: UpdateProfile | None = None,
    sink: EventSink | None = None,
    ask: AskConfirmation | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    delta: bytes | None = None,
) -> UpdateReport:
    """Run the whole procedure on one BMS; returns its report (see the module docstring).

    ``delta``: a delta package of the same release as ``package``; it is sent only
    when the BMS runs exactly its base image, else ``package`` is (the report says why).
    """
    run = _Run(
        session,
        package,
        trust,
        profile or UpdateProfile(),
        options,
        sink=sink,
        ask=ask,
        sleep=sleep,
        clock=clock,
        delta=delta,
    )
    return run.run()


def run_updates(
    sessions: Sequence[BmsSession],
    package: bytes,
    trust: TrustAnchors,
    options: UpdateOptions,
    *,
    profile: UpdateProfile | None = None,
    sink: EventSink | None = None,
    ask: AskConfirmation | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    delta: bytes | None = None,
) -> list[UpdateReport]:
    """Update several BMS (one session each) concurrently; reports in the given order.

    Interactive confirmations are asked once, before any thread starts, and then
    apply to every node (the technician checks the site, not each pack).
    """
    confirmed = set(options.confirmed)
    chosen = profile or UpdateProfile()
    if ask is not None:
        for item in chosen.confirmations:
            if item.id not in confirmed and ask(item):
                confirmed.add(item.id)
    shared = dataclasses.replace(options, confirmed=frozenset(confirmed))
    sink_lock = threading.Lock()

    def locked_sink(event: Event) -> None:
        if sink is not None:
            with sink_lock:
                sink(event)

    if len(sessions) == 1:
        return [
            run_update(
                sessions[0],
                package,
                trust,
                shared,
                profile=chosen,
                sink=sink,
                sleep=sleep,
                clock=clock,
                delta=delta,
            )
        ]
    with ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix="bmsfw-update") as pool:
        futures = [
            pool.submit(
                run_update,
                s,
                package,
                trust,
                shared,
                profile=chosen,
                sink=locked_sink,
                sleep=sleep,
                clock=clock,
                delta=delta,
            )
            for s in sessions
        ]
        return [f.result() for f in futures]
