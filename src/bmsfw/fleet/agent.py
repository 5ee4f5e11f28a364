"""The gateway agent: polls the fleet server and updates the BMS units behind it.

One poll (:meth:`Agent.run_once`):

1. send what the server has not acknowledged yet (the outbox of state reports
   and configuration backups, kept in the state file);
2. after a (re)start, re-read every BMS whose update was in flight and report
   what is true: the new image runs confirmed (succeeded), runs as an
   unconfirmed test image (read its self-test, then confirm or roll back), or
   the bootloader reverted it (rolled back); otherwise the install is retried
   and the pipeline resumes the transfer;
3. read every local BMS (identity, telemetry, runtime integrity, firmware
   hash) and check in; the answer holds the poll interval and the offers;
4. per offered release: download it once for all devices (HTTP Range resume,
   bounded by the offered size, SHA-256 checked, bandwidth measured against the
   floor), verify the package *end to end against the agent's own trust root*
   (the server is never trusted for authenticity; a safety-critical package is
   refused over OTA by the package policy, and again by the BMS), then, inside
   the maintenance window, run the update pipeline on each targeted BMS
   (preflight, backup uploaded to the server, transfer, self-test, confirm or
   roll back) and report every state change with the error code; then upload
   the run's evidence bundle (:mod:`bmsfw.evidence`), which the server keeps as
   the device's update record.

Every state change is written to the state file (temp file + ``os.replace``)
before it is sent, so a crash at any point loses nothing the agent knew.

The server is not trusted to behave (docs/threat-model.md): every answer is
bounded in size and time and validated (:mod:`bmsfw.fleet.client`); a refused
answer fails that poll only, is kept as a *problem* with its code and sent with
the next check-in, and the next poll waits with exponential backoff and jitter.
The server's poll interval is clamped to :data:`POLL_INTERVAL_RANGE_S`. Artifact
files are named by a validated digest inside the state directory; artifacts come
only from the server's origin (or a configured artifact origin).
The agent talks to its BMS only through :class:`~bmsfw.protocol.session.BmsSession`
(CAN/UDS, RS485/Modbus, or in-process for the simulated fleet).
"""

from __future__ import annotations

import functools
import logging
import random
import re
import threading
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from bmsfw import __version__
from bmsfw.errors import BmsfwError, FleetError, PackageError, retry_helps_for
from bmsfw.evidence.bundle import bundle_name
from bmsfw.evidence.collect import EvidenceCollector
from bmsfw.evidence.notice import UpdateNotice, notice_for_links
from bmsfw.fleet.agent_errors import (
    AgentConfigError,
    AnswerTooSlowError,
    BandwidthBelowFloorError,
    BmsIdentityNotReportableError,
    MalformedAnswerError,
    OfferMismatchError,
    TufOfferNotSignedError,
)
from bmsfw.fleet.agent_state import AgentState, Job, is_sha256
from bmsfw.fleet.agent_tuf import TufTrust
from bmsfw.fleet.campaigns import window_open
from bmsfw.fleet.client import CheckInAnswer, DownloadResult, FleetClient
from bmsfw.fleet.errors import (
    DownloadDigestMismatchError,
    DownloadTooLargeError,
    FleetServerError,
    FleetTimeoutError,
    FleetUnreachableError,
    InvalidStateTransitionError,
    RequestInvalidError,
)
from bmsfw.fleet.protocol import (
    TERMINAL_STATES,
    AgentProblem,
    BackupUpload,
    BmsReport,
    CheckIn,
    DeviceState,
    Offer,
    StateReport,
    UpdateSummary,
)
from bmsfw.fleet.ranges import TELEMETRY_INTERVAL_RANGE_S
from bmsfw.package import DeviceFacts, TrustAnchors, verify_release
from bmsfw.protocol.session import BmsSession, DeviceIdentity, TesterCredentials
from bmsfw.update.backup import load_backup
from bmsfw.update.connect import Connection, LinkSpec, open_sessions
from bmsfw.update.core import (
    Action,
    BootMeaning,
    BootReading,
    ConfirmVerdict,
    decide_after_boot,
    interpret_boot,
    judge_confirm,
    judge_self_test,
    same_release,
)
from bmsfw.update.errors import (
    NotConfirmedRolledBackError,
    SelfTestFailedRolledBackError,
    VersionDowngradeError,
)
from bmsfw.update.events import Event, StepStarted
from bmsfw.update.pipeline import UpdateOptions, run_update
from bmsfw.update.profile import UpdateProfile
from bmsfw.update.report import UpdateReport

__all__ = [
    "POLL_INTERVAL_RANGE_S",
    "Agent",
    "AgentClock",
    "AgentConfig",
    "BmsProvider",
    "FirmwareDigestReader",
    "LinkProvider",
    "PollResult",
    "StateChange",
]

log = logging.getLogger(__name__)

S = DeviceState
_IN_FLIGHT = frozenset({S.INSTALLING.value, S.VERIFYING.value})
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)
# Preflight refusals that no amount of waiting fixes: the device is not a target
# (incompatible, counter downgrade, override refused, version downgrade: the update
# core's rules; the agent only maps their codes to the campaign state).
_PERMANENT_PREFLIGHT = frozenset({"BMSFW-E407", "BMSFW-E408", "BMSFW-E410", "BMSFW-E414"})
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# Failures that say nothing about the firmware: the link or the BMS's power went away.
# Whether the next poll should retry is the error's own declaration (retry_helps):
# the BMS keeps what it has (A/B banks, staged transfer) and the pipeline resumes.
# Whatever the server answers, the next poll comes this many seconds later at the
# earliest / latest (a local AgentConfig.max_poll_interval_s may only lower both).
POLL_INTERVAL_RANGE_S = (5.0, 3600.0)
_MAX_PROBLEMS = 16  # distinct refused answers kept for the next check-in
_EVIDENCE_ATTEMPTS = 3  # answers without a stored bundle before the upload is given up


class AgentClock(Protocol):
    """Device-side time for the pipeline (``SimClock`` in the simulated fleet)."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class _WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@runtime_checkable
class FirmwareDigestReader(Protocol):
    """A session that can hash the running image (reported for the server's hash check)."""

    def read_firmware_sha256(self) -> str: ...


class BmsProvider(Protocol):
    """Opens sessions to the BMS behind this gateway (once per poll; closed after it)."""

    def open(self) -> Connection: ...


@dataclass(frozen=True)
class LinkProvider:
    """BMS on a CAN or RS485 link (``--can``/``--serial`` with ``--node``/``--unit``)."""

    links: tuple[LinkSpec, ...]

    def open(self) -> Connection:
        return open_sessions(self.links)


@dataclass(frozen=True)
class AgentConfig:
    """How one gateway's agent behaves; the safe choices are the defaults."""

    state_dir: Path
    trust_root_pem: bytes  # the vendor root every package must chain to (not the server's)
    credentials: TesterCredentials | None = None  # tester certificate for BMS authentication
    profile: UpdateProfile = field(default_factory=UpdateProfile)
    # Manual confirmations of the profile the site's installer attested at set-up
    # (e.g. "flammables-removed"); without them the pipeline refuses (E409).
    confirmed: frozenset[str] = frozenset()
    site: str | None = None  # None: keep the site the server has for this gateway
    tags: tuple[str, ...] | None = None
    # Local floor; the effective floor is the higher of this and the campaign's.
    bandwidth_floor_bps: int = 0
    # The rate is judged once this many bytes arrived or this many seconds passed.
    bandwidth_probe_bytes: int = 256 * 1024
    bandwidth_probe_s: float = 10.0
    max_artifact_bytes: int = 256 * 1024 * 1024
    # Local cap on the poll interval below POLL_INTERVAL_RANGE_S's 3600 s (tests, sims).
    max_poll_interval_s: float | None = None
    # Backoff after a failed poll: this, doubled per failure up to max_backoff_s (and
    # max_poll_interval_s), times a random factor in [0.5, 1] so gateways do not align.
    error_retry_interval_s: float = 30.0
    max_backoff_s: float = 1800.0
    # The server's TUF root.json (provisioned like the CA); None: TUF off (not for production).
    tuf_root: bytes | None = None
    tuf_refresh_s: float = 300.0  # refreshed at least this often, and before any offer
    max_install_attempts: int = 3
    max_preflight_attempts: int = 12
    max_download_failures: int = 2  # digest mismatches before the release is rejected
    # A verified download is kept this long after its last offer: later phases of the
    # campaign offer it to the gateway's other BMS.
    artifact_keep_s: float = 6 * 3600.0
    agent_version: str = __version__
    # An evidence bundle per update (bus trace, audit record, configuration before and
    # after), uploaded to the server, which keeps it as the device's update record.
    evidence: bool = True
    # Install a release lower than the one a BMS runs when the server offers it from a
    # downgrade campaign (its reason, approved by a second person on the server). Off:
    # every downgrade is refused (BMSFW-E414), so the server alone can never downgrade.
    accept_approved_downgrades: bool = False

    def validate(self) -> None:
        if self.bandwidth_floor_bps < 0 or self.bandwidth_probe_bytes < 1:
            raise AgentConfigError("bandwidth floor must be >= 0 and probe size >= 1 byte")
        if min(self.max_install_attempts, self.max_preflight_attempts) < 1:
            raise AgentConfigError("attempt limits must be at least 1")
        if self.max_download_failures < 1 or self.max_artifact_bytes < 1:
            raise AgentConfigError("download limits must be at least 1")
        if self.max_poll_interval_s is not None and self.max_poll_interval_s <= 0:
            raise AgentConfigError("max_poll_interval_s must be > 0")
        if self.error_retry_interval_s <= 0 or self.max_backoff_s < self.error_retry_interval_s:
            raise AgentConfigError("error_retry_interval_s must be > 0 and <= max_backoff_s")
        if self.bandwidth_probe_s <= 0:
            raise AgentConfigError("bandwidth_probe_s must be > 0")

    def poll_interval_s(self, server_s: float, telemetry_s: float | None = None) -> float:
        """The server's interval clamped to POLL_INTERVAL_RANGE_S (and the local cap), and
        no longer than its telemetry interval clamped to TELEMETRY_INTERVAL_RANGE_S: the
        server samples each device's telemetry that often and wants a fresh reading."""
        low, high = POLL_INTERVAL_RANGE_S
        if telemetry_s is not None:
            t_low, t_high = TELEMETRY_INTERVAL_RANGE_S
            high = min(high, max(telemetry_s, t_low), t_high)
        if self.max_poll_interval_s is not None:
            high = min(high, self.max_poll_interval_s)
        low = min(low, high)
        return min(max(server_s, low), high)

    def backoff_s(self, failures: int, rng: random.Random) -> float:
        """Wait after ``failures`` (>= 1) polls in a row failed: exponential, with jitter."""
        cap = self.max_backoff_s
        if self.max_poll_interval_s is not None:
            cap = min(cap, self.max_poll_interval_s)
        base = min(cap, self.error_retry_interval_s * 2.0 ** min(failures - 1, 30))
        return base * rng.uniform(0.5, 1.0)


@dataclass(frozen=True)
class StateChange:
    """One state the agent reported (kept in memory for the CLI and tests)."""

    serial: str
    campaign_id: int
    state: str
    error_code: str = ""
    detail: str = ""


@dataclass(frozen=True)
class PollResult:
    poll_interval_s: float
    devices: int
    offers: int
    changes: tuple[StateChange, ...]


@dataclass(frozen=True)
class PollOutcome:
    """What one poll of the daemon loop came to, and how long to wait before the next."""

    result: PollResult | None
    error: BmsfwError | None
    wait_s: float


@dataclass
class _Local:
    session: BmsSession
    identity: DeviceIdentity
    report: BmsReport


class Agent:
    """One gateway's agent. Not thread-safe: one thread runs its polls."""

    def __init__(
        self,
        config: AgentConfig,
        client: FleetClient,
        provider: BmsProvider,
        *,
        clock: AgentClock | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.client = client
        self.provider = provider
        self.clock: AgentClock = clock or _WallClock()
        try:
            self.trust = TrustAnchors.from_root_certificate(config.trust_root_pem)
        except PackageError as exc:
            raise AgentConfigError(f"the trust root is not usable: {exc}") from exc
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir = config.state_dir / "artifacts"
        self.artifacts_dir.mkdir(exist_ok=True)
        self.state = AgentState.load(config.state_dir)
        self.history: list[StateChange] = []
        self.downloads: list[DownloadResult] = []
        self._reconciled = False
        self._interval_s: float | None = None
        self._campaign_status: dict[int, str] = {}
        self._changes: list[StateChange] = []
        self._last_offered: dict[str, float] = {}
        self._failures = 0
        self._evidence_later: set[str] = set()  # bundles the server did not take this poll
        self._rng = random.Random()
        self.tuf: TufTrust | None = None
        self._tuf_checked_at: float | None = None
        if config.tuf_root is not None:
            self.tuf = TufTrust(config.tuf_root, config.state_dir / "tuf", client)
        else:
            log.warning(
                "no TUF root configured (--tuf-root): offers are not checked against signed "
                "metadata, and a frozen or replaying server is not detected"
            )

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event | None = None, *, max_polls: int | None = None) -> None:
        """Poll until ``stop`` is set (or ``max_polls`` polls ran); never ends on an error."""
        stop = stop or threading.Event()
        polls = 0
        while not stop.is_set():
            outcome = self.poll()
            polls += 1
            if max_polls is not None and polls >= max_polls:
                return
            stop.wait(outcome.wait_s)

    def poll(self) -> PollOutcome:
        """One poll for the daemon loop: whatever happens, it returns when to poll next.

        A refused answer or an unreachable server fails this poll only: the error is kept
        as a problem for the next check-in and the wait backs off with jitter. An
        unexpected exception (a bug) is logged with its traceback and treated alike: one
        bad answer must not stop a site's agent for good.
        """
        try:
            result = self.run_once()
        except BmsfwError as exc:
            error: BmsfwError = exc
        except Exception as exc:
            log.exception("poll failed on an unexpected error")
            error = BmsfwError(f"unexpected {type(exc).__name__}: {exc}")
        else:
            self._failures = 0
            return PollOutcome(result, None, result.poll_interval_s)
        self._failures += 1
        self.note_problem(error)
        wait = self.config.backoff_s(self._failures, self._rng)
        log.warning("poll failed (%s); next try in %.1f s", error, wait)
        return PollOutcome(None, error, wait)

    def note_problem(self, error: BmsfwError) -> None:
        """Keep ``error`` to tell the server with the next check-in (bounded, deduplicated)."""
        # Printable text only (it may quote the server); the server refuses NUL in a body.
        detail = "".join(c if c.isprintable() else "?" for c in error.message[:500])
        for problem in self.state.problems:
            if problem["code"] == error.code and problem["detail"] == detail:
                problem["count"] = int(problem["count"]) + 1
                break
        else:
            self.state.problems.append({"code": error.code, "detail": detail, "count": 1})
            del self.state.problems[:-_MAX_PROBLEMS]
        try:
            self.state.save()
        except OSError as exc:  # a full disk must not end the daemon either
            log.error("cannot save the agent state: %s", exc)

    def run_once(self) -> PollResult:
        """One poll: outbox, reconcile, check-in, offers. Raises the FleetError that stopped it."""
        self._changes = []
        self._evidence_later.clear()  # each waiting bundle is tried once per poll
        self._flush_outbox()
        connection = self.provider.open()
        try:
            local = self._read_devices(connection.sessions)
            if not self._reconciled:
                self._reconcile(local)
                self._reconciled = True
                local = self._read_devices(connection.sessions)
            self._flush_outbox()
            answer = self._check_in([d.report for d in local.values()])
            self._interval_s = self.config.poll_interval_s(
                answer.poll_interval_s, answer.telemetry_interval_s
            )
            self._refused_offers(answer)
            self._adopt_server_states(answer.offers)
            self._refresh_tuf(bool(answer.offers))
            # One download per artifact: offers are grouped by everything that names it
            # (a server that gives two devices different digests under one release id
            # gets two downloads, each checked on its own).
            by_release: dict[tuple[object, ...], list[Offer]] = {}
            for offer in answer.offers:
                by_release.setdefault(_artifact_identity(offer), []).append(offer)
            for offers in by_release.values():
                self._process_release(offers, local)
            self._prune_artifacts({o.sha256 for o in answer.offers})
        finally:
            connection.close()
        return PollResult(self._interval_s, len(local), len(answer.offers), tuple(self._changes))

    def _refresh_tuf(self, offered: bool) -> None:
        """Refresh the signed metadata before offers are trusted, and every
        ``tuf_refresh_s`` anyway (a frozen server is noticed without offers too)."""
        if self.tuf is None:
            return
        now = time.monotonic()
        due = (
            self._tuf_checked_at is None or now - self._tuf_checked_at >= self.config.tuf_refresh_s
        )
        if offered or due:
            self.tuf.refresh()  # raises the TufError that fails this poll
            self._tuf_checked_at = now

    def _check_in(self, devices: list[BmsReport]) -> CheckInAnswer:
        """Check in, with the problems kept since the last good check-in."""
        sent = [dict(p) for p in self.state.problems]
        body = CheckIn(
            agent_version=self.config.agent_version,
            site=self.config.site,
            tags=list(self.config.tags) if self.config.tags is not None else None,
            devices=devices,
            problems=[AgentProblem.model_validate(p) for p in sent],
        )
        try:
            answer = self.client.check_in(body)
        except (RequestInvalidError, FleetServerError):
            if not sent:
                raise
            # A server from before the "problems" field refuses it (422): check in
            # without them rather than never again; they stay in the log.
            answer = self.client.check_in(body.model_copy(update={"problems": []}))
            log.warning("the server refused the problems field; %d dropped", len(sent))
        if sent:
            self.state.problems = [p for p in self.state.problems if p not in sent]
            self.state.save()
        return answer

    def _refused_offers(self, answer: CheckInAnswer) -> None:
        for refused in answer.refused:
            log.error(
                "offer for %s (campaign %s) refused: %s",
                refused.device_serial or "?",
                refused.campaign_id or "?",
                refused.error,
            )
            self.note_problem(refused.error)

    # ------------------------------------------------------------------ devices

    def _read_devices(self, sessions: Sequence[BmsSession]) -> dict[str, _Local]:
        local: dict[str, _Local] = {}
        for session in sessions:
            try:
                identity = session.identify()
            except BmsfwError as exc:
                log.warning("a BMS did not answer identification: %s", exc)
                continue
            unreportable = _control_characters(identity)
            if unreportable:
                # one such BMS would make the server refuse the check-in for all of them
                error = BmsIdentityNotReportableError(
                    f"BMS at {identity.address or '?'}: {unreportable}; left out of the check-in"
                )
                log.warning("%s", error)
                self.note_problem(error)
                continue
            soc = temperature = None
            integrity_ok, integrity_detail = True, ""
            try:
                telemetry = session.read_telemetry()
                # Out-of-range readings (a shorted sensor) are not sent as values: the
                # server's schema would refuse the whole check-in.
                if 0 <= telemetry.soc_pct <= 100:
                    soc = telemetry.soc_pct
                if telemetry.temperatures_c and -80 <= max(telemetry.temperatures_c) <= 200:
                    temperature = max(telemetry.temperatures_c)
                if "firmware_integrity" in telemetry.faults:
                    integrity_ok = False
                    integrity_detail = "runtime re-hash of the running image failed"
            except BmsfwError as exc:
                log.info("%s: no telemetry (%s)", identity.serial, exc)
            digest = ""
            if isinstance(session, FirmwareDigestReader):
                try:
                    digest = session.read_firmware_sha256()
                except BmsfwError as exc:
                    log.info("%s: firmware hash not readable (%s)", identity.serial, exc)
            version = identity.app_version
            if not version:
                integrity_ok = False
                integrity_detail = "no application running (bootloader)"
                version = "none"
            local[identity.serial] = _Local(
                session,
                identity,
                BmsReport(
                    serial=identity.serial,
                    model=identity.model,
                    hw_revision=identity.hw_revision,
                    bootloader_version=identity.bootloader_version,
                    firmware_version=version,
                    firmware_sha256=digest,
                    security_counter=identity.security_counter,
                    soc_pct=soc,
                    temperature_c=temperature,
                    integrity_ok=integrity_ok,
                    integrity_detail=integrity_detail,
                ),
            )
        return local

    def _reconcile(self, local: dict[str, _Local]) -> None:
        """After a restart: report the true state of every BMS whose install was in flight."""
        for job in list(self.state.jobs.values()):
            if job.state not in _IN_FLIGHT or job.serial not in local:
                continue
            session = local[job.serial].session
            try:
                status = session.read_boot_status()
                # The decisions are the update core's (bmsfw.update.core), as in run_update.
                meaning = interpret_boot(BootReading(job.version, "", status))
                if meaning is BootMeaning.NEW_CONFIRMED:
                    self._report(
                        job,
                        S.SUCCEEDED,
                        detail=f"after restart: runs {job.version}",
                        firmware_version=job.version,
                    )
                elif meaning is BootMeaning.NEW_IN_TEST:
                    verdict = judge_self_test(session.read_self_test(), job.version)
                    if decide_after_boot(meaning, verdict).action is Action.CONFIRM:
                        session.confirm()
                        after = session.read_boot_status()
                        if judge_confirm(after, job.version) is ConfirmVerdict.CONFIRMED:
                            self._report(
                                job,
                                S.SUCCEEDED,
                                detail="after restart: self-test passed, confirmed",
                                firmware_version=job.version,
                            )
                            continue
                    session.rollback()
                    after = session.wait_boot(self.config.profile.boot.revert_timeout_s)
                    self._report(
                        job,
                        S.ROLLED_BACK,
                        SelfTestFailedRolledBackError.code,
                        f"after restart: test image not confirmable; runs {after.running_version}",
                    )
                elif not same_release(job.version, status.running_version) and (
                    status.image_state == "reverted" or status.last_revert_reason
                ):
                    self._report(
                        job,
                        S.ROLLED_BACK,
                        NotConfirmedRolledBackError.code,
                        f"after restart: the bootloader reverted "
                        f"({status.last_revert_reason or 'not confirmed'}); "
                        f"runs {status.running_version}",
                    )
                else:
                    log.info(
                        "%s: install of %s was interrupted before activation; it resumes",
                        job.serial,
                        job.version,
                    )
            except BmsfwError as exc:
                log.warning("%s: cannot re-read after restart: %s", job.serial, exc)

    # ------------------------------------------------------------------ offers

    def _adopt_server_states(self, offers: Sequence[Offer]) -> None:
        """With the outbox empty, the server's view of each offered device is the truth."""
        if self.state.outbox:
            return
        changed = False
        for offer in offers:
            job = self.state.job(offer.campaign_id, offer.device_serial)
            if job is not None and job.state != offer.state.value:
                log.info(
                    "%s: server has %s, agent had %s",
                    offer.device_serial,
                    offer.state.value,
                    job.state,
                )
                job.state = offer.state.value
                changed = True
        if changed:
            self.state.save()

    def _job_for(self, offer: Offer, device: _Local) -> Job:
        job = self.state.job(offer.campaign_id, offer.device_serial)
        if job is None:
            job = Job(
                campaign_id=offer.campaign_id,
                serial=offer.device_serial,
                release_id=offer.release_id,
                version=offer.version,
                release_sha256=offer.sha256,
                state=offer.state.value,
                from_version=device.identity.app_version,
            )
            self.state.jobs[job.key] = job
            self.state.save()
        return job

    def _process_release(self, offers: list[Offer], local: dict[str, _Local]) -> None:
        work: list[tuple[Offer, Job, _Local]] = []
        for offer in offers:
            device = local.get(offer.device_serial)
            if device is None:
                log.warning("offer for %s, which did not answer this poll", offer.device_serial)
                continue
            job = self._job_for(offer, device)
            if job.state not in _TERMINAL:
                work.append((offer, job, device))
        if not work:
            return
        first = work[0][0]
        jobs = [job for _, job, _ in work]
        if self.tuf is not None:
            try:
                self.tuf.check_offer(first)
            except TufOfferNotSignedError as exc:
                log.error("release %d refused: %s", first.release_id, exc.message)
                for job in jobs:
                    self._report(job, S.REJECTED, exc.code, exc.message)
                return
        data = self._fetch_verified(first, jobs)
        if data is None:
            return
        for offer, job, device in work:
            if job.state in (S.OFFERED.value, S.DOWNLOADING.value):
                self._report(job, S.DOWNLOADED, detail=f"{offer.size_bytes} bytes, signature valid")
            # A report of this poll may have paused the campaign (error threshold): then
            # no further BMS of this gateway is touched for it.
            if self._campaign_status.get(offer.campaign_id, "running") != "running":
                log.info("campaign %d is %s: not installing on %s", offer.campaign_id,
                         self._campaign_status[offer.campaign_id], job.serial)  # fmt: skip
                continue
            if not self._device_accepts(data, job, device):
                continue
            if not self._window_open(offer):
                if job.state != S.WAITING.value or job.error_code:
                    self._report(job, S.WAITING, detail="outside the site's maintenance window")
                continue
            self._install(offer, job, device, data)

    def _window_open(self, offer: Offer) -> bool:
        policy = offer.policy
        # The server judged at check-in; the agent checks again with its own clock,
        # as the install may start minutes later (after other devices).
        return policy.install_allowed_now and window_open(
            policy.maintenance_windows, policy.maintenance_timezone, self.clock.now()
        )

    def _artifact_path(self, sha256: str) -> Path:
        # The offer's digest was validated (64 hex digits) when the answer was decoded;
        # checked again here since it becomes a file name.
        if not is_sha256(sha256):
            raise MalformedAnswerError(f"artifact digest {sha256[:80]!r} is not 64 hex digits")
        return self.artifacts_dir / f"{sha256}.bmsfw"

    def _fetch_verified(self, offer: Offer, jobs: list[Job]) -> bytes | None:
        """Download (or resume) and verify the release; None when not (yet) usable."""
        path = self._artifact_path(offer.sha256)
        if offer.sha256 in self.state.verified_artifacts and path.is_file():
            return path.read_bytes()
        if not path.is_file() and not self._download(offer, jobs, path):
            return None
        data = path.read_bytes()
        try:
            # End to end, against the agent's own trust root: signature, certificate
            # chain, revocation and every component hash. The server is not trusted.
            verified = verify_release(data, self.trust, None, now=self.clock.now())
            manifest = verified.manifest
            if (manifest.version, manifest.security_counter) != (
                offer.version,
                offer.security_counter,
            ):
                raise OfferMismatchError(
                    f"the package is {manifest.product} {manifest.version} (counter "
                    f"{manifest.security_counter}); the offer named {offer.version} "
                    f"(counter {offer.security_counter})"
                )
        except (PackageError, OfferMismatchError) as exc:
            path.unlink(missing_ok=True)
            log.error("release %d refused: %s", offer.release_id, exc)
            for job in jobs:
                self._report(job, S.REJECTED, exc.code, f"package refused: {exc.message}")
            return None
        self.state.verified_artifacts[offer.sha256] = path.name
        self.state.save()
        return data

    def _download(self, offer: Offer, jobs: list[Job], path: Path) -> bool:
        if offer.size_bytes > self.config.max_artifact_bytes:
            for job in jobs:
                self._report(
                    job,
                    S.REJECTED,
                    DownloadTooLargeError.code,
                    f"offered artifact of {offer.size_bytes} bytes exceeds the agent's limit "
                    f"of {self.config.max_artifact_bytes}",
                )
            return False
        for job in jobs:
            if job.state != S.DOWNLOADING.value:
                self._report(job, S.DOWNLOADING, detail=f"{offer.size_bytes} bytes")
        floor = max(self.config.bandwidth_floor_bps, offer.policy.bandwidth_floor_bps)
        part = path.with_name(path.name + ".part")
        resumed_from = part.stat().st_size if part.exists() else 0
        started = time.monotonic()
        probe, probe_s = self.config.bandwidth_probe_bytes, self.config.bandwidth_probe_s

        def measure(have: int, _total: int) -> None:
            received = have - resumed_from
            elapsed = time.monotonic() - started
            if floor and (received >= probe or elapsed >= probe_s) and elapsed > 0:
                rate = received * 8 / elapsed
                if rate < floor:
                    raise BandwidthBelowFloorError(
                        f"{rate / 1e6:.2f} Mbit/s measured over {received} bytes, floor "
                        f"{floor / 1e6:.2f} Mbit/s; stopped at byte {have} of {offer.size_bytes} "
                        "(kept for resume)"
                    )

        try:
            result = self.client.download(offer, path, progress=measure)
        except (BandwidthBelowFloorError, AnswerTooSlowError) as exc:
            log.warning("release %d: %s", offer.release_id, exc.message)
            for job in jobs:
                self._report(job, S.WAITING, exc.code, exc.message)
            return False
        except MalformedAnswerError as exc:
            # Not the documented artifact answer, or a host the agent may not use: the
            # server decides again on the next poll; this offer is refused.
            log.error("release %d: %s", offer.release_id, exc.message)
            for job in jobs:
                self._report(job, S.REJECTED, exc.code, exc.message)
            return False
        except DownloadTooLargeError as exc:
            for job in jobs:
                self._report(job, S.REJECTED, exc.code, exc.message)
            return False
        except DownloadDigestMismatchError as exc:
            for job in jobs:
                job.download_failures += 1
                if job.download_failures >= self.config.max_download_failures:
                    self._report(job, S.REJECTED, exc.code, exc.message)
                else:
                    self._report(job, S.DOWNLOADING, exc.code, exc.message)
            return False
        except (FleetUnreachableError, FleetTimeoutError) as exc:
            log.warning("release %d: download interrupted: %s", offer.release_id, exc)
            return False
        except FleetError as exc:
            # The server refused its own artifact (404, 403, 500...): tried again next poll.
            log.warning("release %d: download refused: %s", offer.release_id, exc)
            for job in jobs:
                self._report(job, S.DOWNLOADING, exc.code, exc.message)
            return False
        self.downloads.append(result)
        log.info(
            "release %d: %d bytes (resumed from %d) at %.2f Mbit/s",
            offer.release_id,
            result.size_bytes,
            result.resumed_from,
            result.throughput_bps / 1e6,
        )
        return True

    def _device_accepts(self, data: bytes, job: Job, device: _Local) -> bool:
        """This BMS's own facts: compatibility, anti-rollback, OTA policy (safety class), and
        the image keys it reports fused (a release signed by another image key is rejected
        here, before the download is used, instead of failing at install)."""
        ident = device.identity
        facts = DeviceFacts(
            ident.model,
            ident.hw_revision,
            ident.bootloader_version,
            ident.security_counter,
            "ota",
            image_key_hashes=tuple(bytes.fromhex(h) for h in ident.image_key_hashes),
        )
        try:
            verify_release(data, self.trust, facts, now=self.clock.now())
        except PackageError as exc:
            self._report(job, S.REJECTED, exc.code, f"refused for this BMS: {exc.message}")
            return False
        return True

    # ------------------------------------------------------------------ install

    def _downgrade_reason(self, offer: Offer) -> str:
        """The reason the update core gets for a downgrade (recorded in the report and the
        audit log; the staging request then says a person authorised it): only for an
        offer of a downgrade campaign, and only on a gateway that accepts them. Whether
        the release IS a downgrade is the update core's decision, not this one."""
        approved = offer.downgrade
        if approved is None or not self.config.accept_approved_downgrades:
            return ""
        return (
            f"downgrade campaign {offer.campaign_id} approved on the fleet server "
            f"(requested by {approved.requested_by}): {approved.reason}"
        )

    def _install(self, offer: Offer, job: Job, device: _Local, data: bytes) -> None:
        job.install_attempts += 1
        self.state.save()
        backup_dir = self.config.state_dir / "backups" / _SAFE_NAME.sub("_", job.serial)
        before = set(backup_dir.glob("*.json")) if backup_dir.is_dir() else set()

        def sink(event: Event) -> None:
            if not isinstance(event, StepStarted):
                return
            if event.step == "authenticate":  # the backup is written and read back
                self._upload_backup(job, backup_dir, before)
                self._report(
                    job,
                    S.INSTALLING,
                    detail=f"installing {job.version} (attempt {job.install_attempts})",
                )
            elif event.step == "self-test":
                self._report(job, S.VERIFYING, detail="booting the new image, self-test")

        options = UpdateOptions(
            backup_dir=backup_dir,
            credentials=self.config.credentials,
            confirmed=self.config.confirmed,
            channel="ota",
            audit_log=self.config.state_dir / "audit.jsonl",
            report_dir=self.config.state_dir / "reports",
            operator=f"agent campaign {offer.campaign_id}",
            now=self.clock.now(),
            downgrade_reason=self._downgrade_reason(offer),
        )
        collector = EvidenceCollector([device.session]) if self.config.evidence else None
        try:
            report = run_update(
                device.session,
                data,
                self.trust,
                options,
                profile=self.config.profile,
                sink=sink,
                sleep=self.clock.sleep,
                clock=self.clock.monotonic,
            )
        finally:
            if collector is not None:
                collector.close()
        unaccepted = offer.downgrade is not None and not options.downgrade_reason
        self._conclude(job, report, downgrade_not_accepted=unaccepted)
        if collector is not None:
            self._file_evidence(job, report, collector, options.audit_log, self._notice(data))

    def _notice(self, data: bytes) -> UpdateNotice | None:
        """What will happen and how long the pack is out of service (UN R156), for the
        bundle; known for BMS on a CAN or serial link (one pack at a time)."""
        if not isinstance(self.provider, LinkProvider) or not self.provider.links:
            return None
        return notice_for_links(data, self.provider.links[:1], self.config.profile)

    def _file_evidence(
        self,
        job: Job,
        report: UpdateReport,
        collector: EvidenceCollector,
        audit_log: Path | None,
        notice: UpdateNotice | None = None,
    ) -> None:
        """Write this update's evidence bundle and queue it for the server.

        Every run that touched the BMS, or ended the device's part in the campaign,
        leaves one; a preflight refusal the next poll tries again does not (its state
        report says why it waits).
        """
        waiting = report.outcome == "refused" and report.failed_step == "preflight"
        if waiting and job.state not in _TERMINAL:
            return
        try:
            data = collector.bundle(0, report, audit_log=audit_log, notice=notice)
        except (BmsfwError, OSError) as exc:
            log.error("%s: no evidence bundle for this update: %s", job.serial, exc)
            return
        directory = self.config.state_dir / "evidence"
        directory.mkdir(exist_ok=True)
        path = directory / bundle_name(report)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self._send({"kind": "evidence", "file": path.name, "campaign_id": job.campaign_id})

    def _conclude(
        self, job: Job, report: UpdateReport, *, downgrade_not_accepted: bool = False
    ) -> None:
        code = report.error.code if report.error else ""
        message = report.error.message if report.error else ""
        detail = f"{report.failed_step}: {message}" if message else ""
        detail = f"{detail}; runs {report.running_version}".lstrip("; ")
        if downgrade_not_accepted and code == VersionDowngradeError.code:
            detail += (
                "; the server approved this downgrade, but this gateway does not accept "
                "approved downgrades (bmsfw agent --accept-approved-downgrades)"
            )
        outcome = report.outcome
        # What the server keeps of the report (its JSON form: the stable format).
        summary = UpdateSummary.from_report_json(report.to_dict())
        report_state = functools.partial(self._report, update=summary)
        if outcome in ("updated", "already-installed"):
            self._ensure_installing(job)
            report_state(
                job,
                S.SUCCEEDED,
                detail=f"{outcome}; runs {report.running_version}",
                firmware_version=report.running_version or None,
            )
        elif outcome == "rolled-back":
            self._ensure_installing(job)
            report_state(
                job, S.ROLLED_BACK, code, detail, firmware_version=report.running_version or None
            )
        elif outcome == "refused" and report.failed_step == "verify-package":
            report_state(job, S.REJECTED, code, detail)
        elif outcome == "refused" and report.failed_step == "preflight":
            if code in _PERMANENT_PREFLIGHT:
                report_state(job, S.REJECTED, code, detail)
                return
            job.preflight_attempts += 1
            if job.preflight_attempts >= self.config.max_preflight_attempts:
                report_state(job, S.FAILED, code, f"preflight failed {job.preflight_attempts}x; "
                             f"{detail}")  # fmt: skip
            elif job.state in _IN_FLIGHT:
                report_state(job, S(job.state), code, f"waiting for preflight: {detail}")
            else:
                report_state(job, S.WAITING, code, f"waiting for preflight: {detail}")
        elif (outcome == "paused" or retry_helps_for(code)) and (
            job.install_attempts < self.config.max_install_attempts
        ):
            # The transfer stopped between blocks (link or power lost, pack left the
            # window): the BMS keeps what it has and the next poll resumes.
            state = S(job.state) if job.state in _IN_FLIGHT else S.WAITING
            report_state(job, state, code, f"interrupted, resumes next poll: {detail}")
        else:
            report_state(job, S.FAILED, code, detail or f"update {outcome}")

    def _ensure_installing(self, job: Job) -> None:
        if job.state not in _IN_FLIGHT:
            self._report(job, S.INSTALLING, detail=f"installing {job.version}")

    def _upload_backup(self, job: Job, backup_dir: Path, before: set[Path]) -> None:
        new = sorted(set(backup_dir.glob("*.json")) - before)
        if not new:
            log.warning("%s: the pipeline wrote no backup file", job.serial)
            return
        backup = load_backup(new[-1])
        snapshot = backup.snapshot
        body = BackupUpload(
            device_serial=job.serial,
            reason=f"before {job.version} (campaign {job.campaign_id})",
            config={
                "schema_version": snapshot.schema_version,
                "config": dict(snapshot.config),
                "calibration": dict(snapshot.calibration),
                "checksum": snapshot.checksum,
                "firmware_version": backup.identity.app_version,
                "taken_at": backup.created,
            },
        )
        self._send({"kind": "backup", "body": body.model_dump(mode="json")})

    # ------------------------------------------------------------------ reporting

    def _report(
        self,
        job: Job,
        state: DeviceState,
        code: str = "",
        detail: str = "",
        *,
        firmware_version: str | None = None,
        update: UpdateSummary | None = None,
    ) -> None:
        job.state, job.error_code, job.detail = state.value, code, detail[:4000]
        change = StateChange(job.serial, job.campaign_id, state.value, code, job.detail)
        self.history.append(change)
        self._changes.append(change)
        log.info("%s campaign %d: %s %s %s", job.serial, job.campaign_id, state.value, code,
                 job.detail)  # fmt: skip
        body = StateReport(
            device_serial=job.serial,
            campaign_id=job.campaign_id,
            state=state,
            error_code=code,
            detail=job.detail,
            firmware_version=firmware_version,
            update=update,
        )
        self._send({"kind": "report", "body": body.model_dump(mode="json")})

    def _send(self, message: dict[str, object]) -> None:
        """Queue, persist, then deliver in order; a failure leaves it queued."""
        self.state.outbox.append(message)
        self.state.save()
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        index = 0  # messages before it are evidence uploads left for a later poll
        while index < len(self.state.outbox):
            message = self.state.outbox[index]
            if message["kind"] == "evidence" and str(message.get("file")) in self._evidence_later:
                index += 1
                continue
            try:
                if message["kind"] == "report":
                    report = StateReport.model_validate(message["body"])
                    answer = self.client.report_state(report)
                    self._campaign_status[answer.campaign_id] = answer.campaign_status
                elif message["kind"] == "evidence":
                    self._upload_evidence(message)
                else:
                    self.client.upload_backup(BackupUpload.model_validate(message["body"]))
            except (
                FleetUnreachableError,
                FleetTimeoutError,
                FleetServerError,
                MalformedAnswerError,
            ) as exc:
                # The server may or may not have the message: it stays queued and is sent
                # again (the server takes a repeated report as a no-op).
                log.warning("server not reachable (%s); %d message(s) queued", exc,
                            len(self.state.outbox))  # fmt: skip
                if isinstance(exc, MalformedAnswerError):
                    self.note_problem(exc)
                verdict = self._evidence_verdict(message, exc)
                if verdict == "later":
                    index += 1
                    continue
                if verdict != "drop":
                    return
            except InvalidStateTransitionError as exc:
                # The server moved on (e.g. a restart replayed an old state); its view wins
                # and the next check-in brings it.
                log.warning("server refused a report: %s", exc)
            except FleetError as exc:
                log.error("server refused %s: %s", message["kind"], exc)
            self.state.outbox.pop(index)
            self.state.save()

    def _evidence_verdict(self, message: dict[str, object], exc: FleetError) -> str:
        """For an evidence upload the server answered without taking: ``later`` (stays
        queued, the messages behind it go on) or ``drop``; ``""`` for anything else.

        A server that answers but does not take the bundle (one from before the evidence
        store answers 404 without a code, E622; a broken proxy, E675) must not hold up
        the reports queued behind it: they are sent, the bundle is tried again on the next
        poll, and after :data:`_EVIDENCE_ATTEMPTS` such answers it leaves the outbox (the
        file stays in ``evidence/``) and the problem goes to the server with the next
        check-in. An unreachable server is waited for, as for every message.
        """
        if message.get("kind") != "evidence" or isinstance(
            exc, FleetUnreachableError | FleetTimeoutError
        ):
            return ""
        attempts = int(str(message.get("attempts", 0))) + 1
        message["attempts"] = attempts
        if attempts < _EVIDENCE_ATTEMPTS:
            self._evidence_later.add(str(message.get("file")))
            self.state.save()
            return "later"
        log.error("evidence %s not taken by the server %d times; kept in evidence/ (%s)",
                  message.get("file"), attempts, exc)  # fmt: skip
        if not isinstance(exc, MalformedAnswerError):  # that one is noted already
            self.note_problem(exc)
        return "drop"

    def _upload_evidence(self, message: dict[str, object]) -> None:
        """Send one queued bundle; the server has it once this returns (the file goes)."""
        name = _SAFE_NAME.sub("_", str(message.get("file", "")))
        path = self.config.state_dir / "evidence" / name
        if not name or not path.is_file():
            log.error("evidence bundle %s is gone; not uploaded", name)
            return
        campaign = message.get("campaign_id")
        info = self.client.upload_evidence(
            path.read_bytes(), campaign if isinstance(campaign, int) else None
        )
        log.info("evidence %s stored by the server as %d", name, info.id)
        path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ housekeeping

    def _prune_artifacts(self, offered: set[str]) -> None:
        """Delete downloads not offered for ``artifact_keep_s`` (later phases reuse them)."""
        now = time.monotonic()
        for sha in offered:
            self._last_offered[sha] = now
        dropped = [
            sha
            for sha in self.state.verified_artifacts
            if now - self._last_offered.setdefault(sha, now) > self.config.artifact_keep_s
        ]
        for sha in dropped:
            self._artifact_path(sha).unlink(missing_ok=True)
            del self.state.verified_artifacts[sha]
        if dropped:
            self.state.save()


_IDENTITY_TEXT = ("vendor", "model", "hw_revision", "serial", "bootloader_version", "app_version")


def _control_characters(identity: DeviceIdentity) -> str:
    """The identity fields holding a control character, escaped ("" when none do)."""
    return "; ".join(
        f"{name} {getattr(identity, name)!r}"
        for name in _IDENTITY_TEXT
        if any(unicodedata.category(c) == "Cc" for c in getattr(identity, name))
    )


def _artifact_identity(offer: Offer) -> tuple[object, ...]:
    return (
        offer.release_id,
        offer.sha256,
        offer.size_bytes,
        offer.product,
        offer.version,
        offer.security_counter,
        offer.artifact_url,
    )
