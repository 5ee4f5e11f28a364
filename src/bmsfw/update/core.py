"""The decision core of an update: every safety decision, and nothing else.

Pure and I/O-free (in the style of python-tuf's ``trusted_metadata_set.py``
beside its ``updater.py``): each function takes frozen records the I/O shell
read from the BMS (:class:`~bmsfw.protocol.session.BootStatus`,
:class:`~bmsfw.protocol.session.SelfTestResult`, ...) and returns a frozen
decision with the reason a report can quote. The shell
(:mod:`bmsfw.update.pipeline` for ``bmsfw update``, ``bmsfw rollback``, the
RS485 string and the fleet agent) does what the decision says and nothing it
does not say. A second copy of any rule below elsewhere is a defect.

Decisions, in the order of an update:

* :func:`decide_start` - may we start, is the release already installed, is a
  test image on the BMS ours (then the run continues with its self-test instead
  of sending again), is it a downgrade, is its image signed by a key the BMS
  reports fused (the package layer's one rule, :func:`bmsfw.package.image_key_refusal`);
* :func:`choose_payload` - full package, delta, or fall back to full;
* :func:`plan_transfer` - what a resumed transfer may skip;
* :func:`interpret_boot` - what the boot status after the reset means (new image
  in test, reverted, boot loop, no answer = power loss or lost link);
* :func:`judge_self_test` - pass or fail of the new image's self-test;
* :func:`decide_after_boot` - confirm, revert, or report;
* :func:`judge_confirm` - did the confirm make the image permanent (also after
  a confirm the BMS refused: E210);
* :func:`rollback_took_effect` - does the new image no longer run after a rollback
  the BMS acknowledged (only then is the outcome "rolled-back");
* :func:`identity_drift` - is the BMS still the one identified first (serial, model,
  vendor, hardware revision; the active bank until the reset);
* :func:`judge_installed` - may the outcome be "updated": the BMS's digest of its
  active image equals the release image's and its security counter reached the
  release's.
* :func:`plan_rollback` - what ``bmsfw rollback`` may do from each state.
* :func:`channel_for_link` - a radio link (SMP over Bluetooth LE) is an over-the-air
  channel: the package's OTA policy applies (a safety-critical release is refused);
* :func:`judge_ble_link` - the Bluetooth link's ATT MTU, connection interval and RSSI
  against the product profile, and the throughput they allow;
* :func:`judge_ota_bandwidth` - the field guide's rule that an over-the-air update needs
  more than 5 Mbit/s, applied to a radio link (BLE carries far less): allowed only when
  the product profile declares Bluetooth the product's service link, or by an explicit
  operator override with a reason (a non-safety preflight check: the report and the
  audit log keep the reason).

Every version comparison goes through :func:`compare_versions` /
:func:`same_release`, which apply the package layer's one rule
(:mod:`bmsfw.package.version`: the manifest's semver against the MCUboot
``major.minor.revision+build`` the BMS reports; ``1.5.0`` is ``1.5.0+0``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bmsfw.errors import PackageError
from bmsfw.package import Component, image_key_refusal
from bmsfw.package.version import Version, as_version, device_runs
from bmsfw.protocol.session import (
    BleLinkFacts,
    BootStatus,
    Channel,
    DeviceIdentity,
    FlashLayout,
    SelfTestResult,
    TransferState,
)
from bmsfw.update.profile import OTA_MIN_BANDWIDTH_BPS, PreflightLimits

__all__ = [
    "OTA_MIN_BANDWIDTH_BPS",
    "Action",
    "AfterBoot",
    "BleLinkJudgement",
    "BootMeaning",
    "BootReading",
    "ConfirmVerdict",
    "InstalledCheck",
    "InstalledVerdict",
    "OtaBandwidthJudgement",
    "PayloadChoice",
    "PayloadKind",
    "RollbackAction",
    "RollbackPlan",
    "SelfTestVerdict",
    "StartDecision",
    "StartFacts",
    "StartVerdict",
    "TransferPlan",
    "active_digest_of",
    "channel_for_link",
    "choose_payload",
    "compare_versions",
    "decide_after_boot",
    "decide_start",
    "estimate_ble_throughput_bps",
    "identity_drift",
    "interpret_boot",
    "is_downgrade",
    "judge_ble_link",
    "judge_confirm",
    "judge_installed",
    "judge_ota_bandwidth",
    "judge_self_test",
    "layout_refusal",
    "plan_rollback",
    "plan_transfer",
    "rollback_took_effect",
    "same_release",
]

# --- versions -----------------------------------------------------------------------


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is lower than, equal to or higher than ``b``.

    The one version comparison of the update procedure, by the package layer's rule
    (:mod:`bmsfw.package.version`: semver precedence, an MCUboot ``1.5.0+0`` is the
    release ``1.5.0``). Text that is no version (an empty string from a BMS in its
    bootloader) sorts below every version.
    """
    va, vb = _version_or_none(a), _version_or_none(b)
    if va is None or vb is None:
        return (va is not None) - (vb is not None)
    return (va > vb) - (va < vb)


def is_downgrade(release_version: str, running: str) -> bool:
    """The version rule: installing ``release_version`` on a BMS that runs ``running``
    lowers its version (only with an explicit reason; the fleet server's campaigns ask
    the same question of the version a device reported)."""
    return bool(running) and compare_versions(release_version, running) < 0


def _version_or_none(text: str) -> Version | None:
    try:
        return as_version(text)
    except PackageError:
        return None


def same_release(release_version: str, reported_version: str) -> bool:
    """Whether a BMS reporting ``reported_version`` runs the release ``release_version``."""
    try:
        return device_runs(release_version, reported_version)
    except PackageError:  # not a release version (e.g. "" or another reported string)
        va, vb = _version_or_none(release_version), _version_or_none(reported_version)
        return va is not None and va == vb


# --- may we start ---------------------------------------------------------------------


class StartVerdict(enum.StrEnum):
    START = "start"  # send the release
    ALREADY_INSTALLED = "already-installed"  # nothing to do
    CONTINUE_TEST_IMAGE = "continue-test-image"  # our release runs as a test image: self-test
    REFUSE_DOWNGRADE = "refuse-downgrade"  # lower than what runs, not explicitly allowed
    REFUSE_IMAGE_KEY = "refuse-image-key"  # signed by a key the BMS reports it does not hold
    REFUSE_BANK_LAYOUT = "refuse-bank-layout"  # the image does not fit the banks it reports


@dataclass(frozen=True)
class StartFacts:
    """What the shell read before anything is written."""

    release_version: str
    # what the BMS reports as its active image digest once the release runs
    # (active_digest_of); None: the release does not name it
    release_image_sha256: bytes | None
    boot: BootStatus
    running_digest: bytes | None  # SHA-256 of the running image; None when unreadable
    reinstall: bool = False
    downgrade_reason: str = ""  # "" unless the operator explicitly allowed a downgrade
    # (component, key hash its image names) for each release image known before the transfer
    image_key_hashes: tuple[tuple[str, bytes], ...] = ()
    # the image-verification key hashes the BMS reports fused; empty: it does not report them
    device_key_hashes: tuple[bytes, ...] = ()
    # the size of the image that lands in the bank, and the banks the BMS reports (None:
    # not reported, the BMS judges the fit itself at the release header)
    release_image_size: int = 0
    flash_layout: FlashLayout | None = None


@dataclass(frozen=True)
class StartDecision:
    verdict: StartVerdict
    reason: str
    downgrade: bool = False  # the release is lower than what runs (allowed: reason given)
    warning: str = ""  # something the report must say (e.g. the digest was not readable)
    # for a START: how the image's signing key was checked, or that only the BMS checks it
    key_check: str = ""
    # for a START: how the image was fitted to the BMS's banks, or that the BMS does it
    layout_check: str = ""

    @property
    def key_left_to_device(self) -> bool:
        return self.key_check.startswith(_LEFT_TO_DEVICE)


#: how ``StartDecision.key_check`` begins when bmsfw could not check the image's key
_LEFT_TO_DEVICE = "left to the BMS"


def _ours(facts: StartFacts) -> tuple[bool, str]:
    """Whether the BMS runs exactly this release: version and, where readable, digest."""
    boot = facts.boot
    if not same_release(facts.release_version, boot.running_version):
        return False, ""
    if facts.release_image_sha256 is None:
        return False, (
            f"the BMS reports {boot.running_version}, but the release does not name the "
            "digest of its decrypted image (encrypted by another tool): sending it again"
        )
    if facts.running_digest is None:
        return True, (
            f"the BMS reports {boot.running_version}; its image digest is not readable, "
            "so this rests on the version it reports"
        )
    if facts.running_digest != facts.release_image_sha256:
        return False, (
            f"the BMS reports {boot.running_version} but its image digest "
            f"{facts.running_digest.hex()[:16]}… is not this release's "
            f"{facts.release_image_sha256.hex()[:16]}…"
        )
    return True, ""


def layout_refusal(image_size: int, layout: FlashLayout | None) -> str:
    """Why an image of ``image_size`` bytes cannot go into the banks a BMS reports.

    "" when it fits, or when the BMS does not report its layout (then only the BMS
    judges, at the release header). Refused: fewer than two banks (an A/B update keeps
    the old image bootable in the other), a bank that is not a whole number of sectors
    (no flash is built so: the report is wrong), an image larger than one bank.
    """
    if layout is None:
        return ""
    bank, sector = layout.bank_size_bytes, layout.sector_size_bytes
    if layout.banks < 2:
        return (
            f"the BMS reports {layout.banks} image bank; an A/B update needs two, so the "
            "old image stays bootable"
        )
    if bank % sector:
        return (
            f"the BMS reports {bank}-byte banks of {sector}-byte sectors, not a whole number "
            "of sectors: an impossible layout"
        )
    if image_size > bank:
        return f"the {image_size}-byte image does not fit the BMS's {bank}-byte bank"
    return ""


def decide_start(facts: StartFacts) -> StartDecision:
    """May the update start, and from where.

    A release that would be sent is refused (``REFUSE_IMAGE_KEY``) when the BMS reports
    the keys its secure boot holds and an image is signed by none of them: the BMS would
    refuse it only after the whole transfer. A BMS that does not report them leaves the
    check to its bootloader, and ``key_check`` says so.
    """
    decision = _decide_start(facts)
    if decision.verdict is not StartVerdict.START:
        return decision
    layout = facts.flash_layout
    refusal = layout_refusal(facts.release_image_size, layout)
    if refusal:
        return StartDecision(StartVerdict.REFUSE_BANK_LAYOUT, refusal, downgrade=decision.downgrade)
    decision = replace(
        decision,
        layout_check=(
            f"the {facts.release_image_size}-byte image fits a {layout.bank_size_bytes}-byte "
            f"bank ({layout.banks} banks)"
            if layout is not None
            else f"{_LEFT_TO_DEVICE}: it does not report its bank layout"
        ),
    )
    images = dict(facts.image_key_hashes)
    if not facts.device_key_hashes:
        return replace(
            decision,
            key_check=f"{_LEFT_TO_DEVICE}: it does not report its image keys, so its "
            "secure boot checks the image's signing key after the transfer",
        )
    if not images:
        return replace(
            decision,
            key_check=f"{_LEFT_TO_DEVICE}: no release image's key is known before the transfer",
        )
    refusal = image_key_refusal(images, facts.device_key_hashes)
    if refusal:
        return StartDecision(StartVerdict.REFUSE_IMAGE_KEY, refusal, downgrade=decision.downgrade)
    keys = ", ".join(sorted({k.hex()[:16] + "…" for k in images.values()}))
    return replace(decision, key_check=f"signed by key {keys}, which the BMS reports fused")


def _decide_start(facts: StartFacts) -> StartDecision:
    boot = facts.boot
    running = boot.running_version
    ours, note = _ours(facts)
    if ours and boot.run_state == "application" and boot.image_state == "test":
        return StartDecision(
            StartVerdict.CONTINUE_TEST_IMAGE,
            f"{running} runs as a test image from an earlier, interrupted run of this "
            "update: its self-test decides confirm or revert (nothing is sent again)",
            warning=note,
        )
    if ours and not facts.reinstall and boot.image_state == "confirmed":
        if facts.running_digest is None:
            # "already installed" rests on the BMS's digest of its active image, never
            # on the version it reports: without the digest the release is sent again.
            return StartDecision(
                StartVerdict.START,
                f"the BMS reports {running} but its image digest is not readable: "
                "installing the release again",
                warning=note,
            )
        return StartDecision(
            StartVerdict.ALREADY_INSTALLED,
            f"{running} already runs confirmed; nothing to do",
            warning=note,
        )
    if is_downgrade(facts.release_version, running):
        if not facts.downgrade_reason.strip():
            return StartDecision(
                StartVerdict.REFUSE_DOWNGRADE,
                f"{facts.release_version} is lower than {running}, which the BMS runs",
                downgrade=True,
            )
        return StartDecision(
            StartVerdict.START,
            f"downgrade {running} -> {facts.release_version} allowed: "
            f"{facts.downgrade_reason.strip()}",
            downgrade=True,
            warning=note,
        )
    why = "reinstall asked" if ours else f"{running or 'no application'} -> {facts.release_version}"
    if boot.image_state == "reverted":
        # MCUboot reverts a test image reset before its confirm (a power cut too): the
        # retry of an interrupted update sends the image again, and says why
        cause = boot.last_revert_reason or "no reason reported"
        why += f" (sent again: the BMS reverted its last test image: {cause})"
    return StartDecision(StartVerdict.START, why, warning=note)


# --- what to send ---------------------------------------------------------------------


class PayloadKind(enum.StrEnum):
    FULL = "full"  # no delta given
    DELTA = "delta"  # the BMS runs the delta's base exactly
    FALLBACK_FULL = "fallback-full"  # a delta was given but does not fit this BMS


@dataclass(frozen=True)
class PayloadChoice:
    kind: PayloadKind
    reason: str

    @property
    def sends_delta(self) -> bool:
        return self.kind is PayloadKind.DELTA


def choose_payload(
    *,
    delta_base: bytes | None,
    running_digest: bytes | None,
    running_version: str,
    digest_problem: str = "",
    delta_size: int = 0,
) -> PayloadChoice:
    """The delta only when the BMS runs exactly its base image; otherwise the full package.

    ``delta_base``: the base digest the delta names (None: no delta given);
    ``running_digest``: what the BMS computes over its running image (None: unreadable,
    ``digest_problem`` says why).
    """
    if delta_base is None:
        return PayloadChoice(PayloadKind.FULL, "full image (no delta package given)")
    if running_digest is None:
        why = f"could not read the BMS's image digest ({digest_problem or 'no answer'})"
    elif running_digest != delta_base:
        why = (
            f"device runs {running_version} with digest {running_digest.hex()[:16]}…, "
            f"delta base is {delta_base.hex()[:16]}…"
        )
    else:
        return PayloadChoice(
            PayloadKind.DELTA,
            f"delta {delta_size} B against base {delta_base.hex()[:16]}…: device runs that base",
        )
    return PayloadChoice(PayloadKind.FALLBACK_FULL, f"fell back to full image: {why}")


# --- what a resume may skip -----------------------------------------------------------


@dataclass(frozen=True)
class TransferPlan:
    start_offset: int  # first byte to send (== total: the BMS holds every byte)
    erase: bool  # erase the inactive bank first
    reason: str


def plan_transfer(
    state: TransferState, total: int, *, encoded: bool, force_full: bool = False
) -> TransferPlan:
    """What the BMS already holds of this transfer, and so what is not sent again.

    A raw image resumes to the byte the BMS holds without a gap. An encoded stream
    runs through the BMS's decoder, whose state a reset loses: it starts again at
    byte 0 on an erased bank. ``force_full``: a resumed image failed verification
    (a block half-programmed when the power went): send it whole once.
    """
    held = state.contiguous_bytes if state.erased and state.total_size == total else 0
    if force_full:
        return TransferPlan(0, True, f"sending all {total} bytes again from byte 0")
    if encoded:
        # the BMS counts what it decoded, in image bytes: any progress means a restart
        if state.erased and state.contiguous_bytes > 0:
            return TransferPlan(
                0,
                True,
                f"an encoded transfer cannot resume: sending all {total} stored bytes "
                "again from byte 0",
            )
        return TransferPlan(0, True, "")
    if 0 < held <= total:
        if held == total:
            return TransferPlan(total, False, f"the BMS holds all {total} bytes already")
        return TransferPlan(held, False, f"resuming the transfer at byte {held} of {total}")
    return TransferPlan(0, True, "")


# --- after the reset ------------------------------------------------------------------


class BootMeaning(enum.StrEnum):
    NEW_IN_TEST = "new image runs in test mode"
    NEW_CONFIRMED = "new image runs confirmed"
    REVERTED = "the bootloader reverted to the previous image"
    BOOT_LOOP = "boot loop: the bootloader reverted after repeated failed starts"
    STILL_BOOTING = "the BMS answers but its application did not start"
    IN_BOOTLOADER = "no application runs (bootloader)"
    NO_ANSWER = "no answer: power loss or lost link"
    OTHER_IMAGE = "an image that is neither the new nor the previous one runs"


@dataclass(frozen=True)
class BootReading:
    """What the shell saw after the reset; ``status`` None when the BMS never answered."""

    new_version: str
    previous_version: str
    status: BootStatus | None
    answered: bool = True  # False: not a single answer (power loss, cable, adapter)


def interpret_boot(reading: BootReading) -> BootMeaning:
    """What a boot status after the reset means. Tells a power loss from a boot loop."""
    status = reading.status
    if status is None:
        return BootMeaning.NO_ANSWER if not reading.answered else BootMeaning.STILL_BOOTING
    if status.run_state == "bootloader":
        return BootMeaning.IN_BOOTLOADER
    if status.run_state != "application":
        return BootMeaning.STILL_BOOTING
    if same_release(reading.new_version, status.running_version):
        if status.image_state == "test":
            return BootMeaning.NEW_IN_TEST
        if status.image_state == "confirmed":
            return BootMeaning.NEW_CONFIRMED
        return BootMeaning.OTHER_IMAGE
    # previous "" (a resumed run does not know it): any other image is the one reverted to
    if not reading.previous_version or same_release(
        reading.previous_version, status.running_version
    ):
        if "boot loop" in status.last_revert_reason.lower():
            return BootMeaning.BOOT_LOOP
        return BootMeaning.REVERTED
    return BootMeaning.OTHER_IMAGE


class SelfTestVerdict(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NO_RECORD = "no record"  # unreadable: never a pass
    STALE = "record of another image"  # e.g. the previous firmware's, after a revert


def judge_self_test(result: SelfTestResult | None, new_version: str) -> SelfTestVerdict:
    """Pass only for a passed record of the new image (read in this boot)."""
    if result is None:
        return SelfTestVerdict.NO_RECORD
    if result.version and not same_release(new_version, result.version):
        return SelfTestVerdict.STALE
    return SelfTestVerdict.PASSED if result.passed else SelfTestVerdict.FAILED


class Action(enum.StrEnum):
    CONFIRM = "confirm"  # the new image passed its self-test in this boot
    REVERT = "revert"  # ask the BMS to return to the confirmed image now
    AWAIT_REVERT = "await-revert"  # the bootloader will revert by itself: wait and read
    REPORT_REVERTED = "report-reverted"  # already back on the previous image: say so
    REPORT_NO_ANSWER = "report-no-answer"  # nothing known: the same command again finishes
    REPORT_CONFIRMED = "report-confirmed"  # already confirmed (a confirm whose answer was lost)
    REPORT_STUCK = "report-stuck"  # neither new nor previous runs, or the bootloader: no rollback


@dataclass(frozen=True)
class AfterBoot:
    action: Action
    meaning: BootMeaning
    self_test: SelfTestVerdict | None
    reason: str


def decide_after_boot(meaning: BootMeaning, self_test: SelfTestVerdict | None) -> AfterBoot:
    """Confirm only a new test image that passed its self-test in this boot."""
    if meaning is BootMeaning.NEW_IN_TEST:
        if self_test is SelfTestVerdict.PASSED:
            return AfterBoot(Action.CONFIRM, meaning, self_test, "self-test passed")
        return AfterBoot(
            Action.REVERT,
            meaning,
            self_test,
            f"self-test {self_test.value if self_test else 'not read'}: never confirmed",
        )
    if meaning is BootMeaning.NEW_CONFIRMED:
        return AfterBoot(Action.REPORT_CONFIRMED, meaning, self_test, "already confirmed")
    if meaning in (BootMeaning.REVERTED, BootMeaning.BOOT_LOOP):
        return AfterBoot(Action.REPORT_REVERTED, meaning, self_test, meaning.value)
    if meaning is BootMeaning.STILL_BOOTING:
        return AfterBoot(Action.AWAIT_REVERT, meaning, self_test, meaning.value)
    if meaning is BootMeaning.NO_ANSWER:
        return AfterBoot(Action.REPORT_NO_ANSWER, meaning, self_test, meaning.value)
    return AfterBoot(Action.REPORT_STUCK, meaning, self_test, meaning.value)


class ConfirmVerdict(enum.StrEnum):
    CONFIRMED = "confirmed"
    STILL_TEST = "acknowledged but still a test image"  # revert now, not at the watchdog
    LOST = "the new image no longer runs"  # wait for the bootloader and report


def judge_confirm(status: BootStatus, new_version: str) -> ConfirmVerdict:
    if same_release(new_version, status.running_version) and status.run_state == "application":
        if status.image_state == "confirmed":
            return ConfirmVerdict.CONFIRMED
        if status.image_state == "test":
            return ConfirmVerdict.STILL_TEST
    return ConfirmVerdict.LOST


def rollback_took_effect(status: BootStatus, new_version: str) -> bool:
    """Whether the BMS, after acknowledging a rollback, no longer runs the new image.

    An acknowledged rollback proves nothing: only a boot status read afterwards that
    shows the application running another image makes the outcome "rolled-back". A
    BMS still running ``new_version`` (in test or confirmed) was not rolled back.
    """
    return status.run_state == "application" and not same_release(
        new_version, status.running_version
    )


# --- is it still the same BMS, and did the release arrive -----------------------------

#: identity fields that never change on one BMS, whatever runs on it
IDENTITY_FIELDS = ("vendor", "model", "hw_revision", "serial", "flash_layout")


def identity_drift(first: DeviceIdentity, now: DeviceIdentity, *, after_reset: bool) -> str:
    """What changed between the first identify and a later one ("" when nothing did).

    A different vendor, model, hardware revision, serial or bank layout is another BMS
    (a second node answering, a swapped cable, a lying BMS). Before the reset the active bank
    must not change either (the bank layout the transfer was planned for); after it
    the new image runs from the other bank, which the boot status judges.
    """
    fields = IDENTITY_FIELDS if after_reset else (*IDENTITY_FIELDS, "active_bank")
    return "; ".join(
        f"{name} {getattr(first, name)!r} is now {getattr(now, name)!r}"
        for name in fields
        if getattr(first, name) != getattr(now, name)
    )


class InstalledVerdict(enum.StrEnum):
    INSTALLED = "installed"
    DIGEST_UNREADABLE = "digest unreadable"
    DIGEST_MISMATCH = "digest mismatch"
    COUNTER_NOT_RAISED = "security counter not raised"


@dataclass(frozen=True)
class InstalledCheck:
    verdict: InstalledVerdict
    reason: str

    @property
    def ok(self) -> bool:
        return self.verdict is InstalledVerdict.INSTALLED


def active_digest_of(component: Component) -> bytes | None:
    """The SHA-256 a BMS reports for its active image (DID 0x0102) once ``component`` runs.

    A clear image lands in the bank as it is: its own ``image_sha256``. An encrypted one
    is decrypted into the bank, so the BMS's digest covers the plaintext: the manifest's
    signed ``decrypted_sha256``, computed by the builder that encrypted it; None when the
    release does not carry it (an image encrypted by another tool, e.g. imgtool).
    """
    if component.encryption == "none":
        return component.image_sha256
    return component.decrypted_sha256 or None


def judge_installed(
    *,
    release_image_sha256: bytes | None,
    running_digest: bytes | None,
    release_counter: int,
    counter_before: int,
    counter_after: int,
) -> InstalledCheck:
    """Whether a confirmed update may be reported "updated".

    Only when the BMS's own digest of its active image equals the release image's,
    and its security counter, read after the confirm, reached the release's (the BMS
    raises it at the confirm) and did not go down. ``release_image_sha256`` is
    :func:`active_digest_of` the release's component; None: the release names no digest
    the BMS can report (an image encrypted by another tool: the BMS's digest covers the
    plaintext nobody but the BMS has); the counter still counts and the reason says
    the digest was not compared.
    """
    unchecked = ""
    if release_image_sha256 is None:
        unchecked = (
            " (digest not compared: the image was encrypted without the digest of its"
            " decrypted form in the manifest)"
        )
    elif running_digest is None:
        return InstalledCheck(
            InstalledVerdict.DIGEST_UNREADABLE,
            "the BMS did not report the digest of its active image after the confirm",
        )
    elif running_digest != release_image_sha256:
        return InstalledCheck(
            InstalledVerdict.DIGEST_MISMATCH,
            f"the BMS's active image has digest {running_digest.hex()[:16]}…, the release "
            f"image {release_image_sha256.hex()[:16]}…",
        )
    if counter_after < max(release_counter, counter_before):
        return InstalledCheck(
            InstalledVerdict.COUNTER_NOT_RAISED,
            f"security counter {counter_before} before, {counter_after} after the confirm; "
            f"the release carries {release_counter}",
        )
    return InstalledCheck(
        InstalledVerdict.INSTALLED,
        f"active image digest matches; security counter {counter_before} -> {counter_after}"
        if not unchecked
        else f"security counter {counter_before} -> {counter_after}{unchecked}",
    )


# --- rollback -------------------------------------------------------------------------


class RollbackAction(enum.StrEnum):
    REVERT_TEST_IMAGE = "revert-test-image"  # return to the confirmed image
    NOTHING_TO_ROLL_BACK = "nothing-to-roll-back"  # say so, change nothing
    NOT_RUNNING = "not-running"  # bootloader or booting: nothing to ask the application


@dataclass(frozen=True)
class RollbackPlan:
    action: RollbackAction
    reason: str

    @property
    def changes_device(self) -> bool:
        return self.action is RollbackAction.REVERT_TEST_IMAGE


def plan_rollback(status: BootStatus) -> RollbackPlan:
    """What ``bmsfw rollback`` may do from this boot status.

    Only a test image is rolled back (to the confirmed image it came from). From a
    confirmed image the other bank holds either a rejected image (failed its
    self-test, reverted, never confirmed) or an older release that would boot as
    confirmed without a self-test in this boot: neither may become the running,
    confirmed image. Going back to an older release is an update to it
    (``--allow-downgrade``), which self-tests before it confirms.
    """
    running = status.running_version
    if status.run_state == "bootloader":
        return RollbackPlan(
            RollbackAction.NOT_RUNNING,
            "no application runs (bootloader): re-flash with `bmsfw update --recovery`",
        )
    if status.run_state != "application":
        return RollbackPlan(
            RollbackAction.NOT_RUNNING,
            f"the BMS is {status.run_state}: wait until it runs its application, then retry",
        )
    if status.image_state == "test":
        return RollbackPlan(
            RollbackAction.REVERT_TEST_IMAGE,
            f"{running} runs as an unconfirmed test image: returning to the confirmed image",
        )
    if status.image_state == "reverted":
        why = status.last_revert_reason or "the new image was not confirmed"
        return RollbackPlan(
            RollbackAction.NOTHING_TO_ROLL_BACK,
            f"the BMS already returned to {running} ({why}); the other bank holds the "
            "rejected image, which is never made the running image again",
        )
    return RollbackPlan(
        RollbackAction.NOTHING_TO_ROLL_BACK,
        f"{running} runs confirmed and no test image is pending; to go back to an older "
        "release, install it with `bmsfw update OLD.bmsfw --allow-downgrade REASON` "
        "(it is self-tested before it is confirmed)",
    )


# --- radio links (SMP over Bluetooth LE) ----------------------------------------------


def channel_for_link(wireless: bool, requested: Channel) -> Channel:
    """A radio link is an over-the-air channel whatever was asked: the package's OTA
    policy (never a safety-critical release) applies to Bluetooth as to the fleet."""
    return "ota" if wireless else requested


# The fastest Bluetooth LE radio (the LE 2M PHY) sends 2 Mbit/s on air: no choice of
# MTU, interval and packets per event carries more.
BLE_PHY_MAX_BPS = 2_000_000.0


def estimate_ble_throughput_bps(att_mtu: int, interval_ms: float, packets_per_event: int) -> float:
    """What a BLE link can carry at most: ``packets_per_event`` ATT writes of
    ``att_mtu - 3`` bytes per connection interval (the controller and phone decide the
    real number per event; the product profile names what its BMS achieves), never
    more than the radio's :data:`BLE_PHY_MAX_BPS`."""
    if interval_ms <= 0 or att_mtu <= 3 or packets_per_event <= 0:
        return 0.0
    per_interval = packets_per_event * (att_mtu - 3) * 8 / (interval_ms / 1000.0)
    return min(per_interval, BLE_PHY_MAX_BPS)


@dataclass(frozen=True)
class BleLinkJudgement:
    passed: bool
    measured: str
    limit: str
    expected_bps: float  # the profile's number, or the estimate from MTU and interval
    problems: tuple[str, ...] = ()


def judge_ble_link(facts: BleLinkFacts, limits: PreflightLimits) -> BleLinkJudgement:
    """The Bluetooth link against the profile's ``ble_*`` limits."""
    expected = limits.ble_expected_throughput_bps or estimate_ble_throughput_bps(
        facts.att_mtu, facts.interval_ms, limits.ble_packets_per_event
    )
    problems = []
    if facts.att_mtu < limits.ble_att_mtu_min:
        problems.append(f"ATT MTU {facts.att_mtu} below {limits.ble_att_mtu_min}")
    if facts.interval_ms > limits.ble_interval_max_ms:
        problems.append(
            f"connection interval {facts.interval_ms:g} ms above {limits.ble_interval_max_ms:g} ms"
        )
    if facts.rssi_dbm is not None and facts.rssi_dbm < limits.ble_rssi_min_dbm:
        problems.append(f"RSSI {facts.rssi_dbm} dBm below {limits.ble_rssi_min_dbm:g} dBm")
    rssi = "n/a" if facts.rssi_dbm is None else f"{facts.rssi_dbm} dBm"
    source = "profile" if limits.ble_expected_throughput_bps else "estimated"
    return BleLinkJudgement(
        passed=not problems,
        measured=(
            f"ATT MTU {facts.att_mtu}, interval {facts.interval_ms:g} ms, RSSI {rssi}, "
            f"{expected / 1e6:.2f} Mbit/s ({source})"
        ),
        limit=(
            f"MTU ≥ {limits.ble_att_mtu_min}, interval ≤ {limits.ble_interval_max_ms:g} ms, "
            f"RSSI ≥ {limits.ble_rssi_min_dbm:g} dBm"
        ),
        expected_bps=expected,
        problems=tuple(problems),
    )


@dataclass(frozen=True)
class OtaBandwidthJudgement:
    passed: bool
    measured: str
    limit: str
    reason: str


def judge_ota_bandwidth(expected_bps: float, limits: PreflightLimits) -> OtaBandwidthJudgement:
    """May an update go over a radio link that carries ``expected_bps``?

    The field guide allows an over-the-air update only above 5 Mbit/s (a slow link keeps
    the pack in the update for long, and an interruption is likelier). Bluetooth LE
    carries well under 2 Mbit/s, so it passes only when the product profile declares
    Bluetooth the product's own service link (``ble_service_link``: a pack serviced at
    hand over BLE by design, the technician beside it) - otherwise only by an explicit
    operator override with a reason. A safety-critical release never goes over a radio
    link at all (:func:`channel_for_link`, the package's OTA policy)."""
    floor = limits.ota_min_bandwidth_bps
    measured = f"{expected_bps / 1e6:.2f} Mbit/s (radio link)"
    limit = f"> {floor / 1e6:g} Mbit/s (field guide's OTA rule), or profile ble_service_link"
    if expected_bps > floor:
        return OtaBandwidthJudgement(True, measured, limit, "the link is above the OTA floor")
    if limits.ble_service_link:
        return OtaBandwidthJudgement(
            True,
            measured,
            limit,
            "the product profile declares Bluetooth the product's service link "
            "(ble_service_link): the OTA floor does not apply to a technician at the pack",
        )
    return OtaBandwidthJudgement(
        False,
        measured,
        limit,
        f"{expected_bps / 1e6:.2f} Mbit/s is below the {floor / 1e6:g} Mbit/s an "
        "over-the-air update needs",
    )
