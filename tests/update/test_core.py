"""The decision core, table-driven: (image state x self-test result x command) -> decision."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmsfw.package import Component
from bmsfw.protocol.session import (
    BootStatus,
    FlashLayout,
    SelfTestCheck,
    SelfTestResult,
    TransferState,
)
from bmsfw.update.core import (
    Action,
    BootMeaning,
    BootReading,
    ConfirmVerdict,
    PayloadKind,
    RollbackAction,
    SelfTestVerdict,
    StartFacts,
    StartVerdict,
    active_digest_of,
    choose_payload,
    compare_versions,
    decide_after_boot,
    decide_start,
    interpret_boot,
    judge_confirm,
    judge_installed,
    judge_self_test,
    layout_refusal,
    plan_rollback,
    plan_transfer,
    same_release,
)

OLD, NEW = "1.5.1", "1.6.0"
DIGEST = hashlib.sha256(b"release 1.6.0").digest()
OTHER = hashlib.sha256(b"something else").digest()


def boot(
    version: str = OLD,
    image: str = "confirmed",
    run: str = "application",
    reason: str = "",
) -> BootStatus:
    return BootStatus(run, "A", version, image, 1, 1, reason)  # type: ignore[arg-type]


def self_test(passed: bool, version: str = NEW) -> SelfTestResult:
    return SelfTestResult(passed, (SelfTestCheck("cells", passed),), version)


# --- versions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("1.5.0", "1.5.0+0", 0),  # a real MCUboot device reports the build number
        ("1.5.0+3", "1.5.0+3", 0),
        ("1.5.0+3", "1.5.0+4", 0),  # build metadata has no precedence (semver 10)
        ("1.10.0", "1.9.9", 1),  # numbers, not strings
        ("2.0.0-rc.1", "2.0.0", -1),
        ("1.1.1+3900000001", "1.1.1", -1),  # MCUboot form of 1.1.1-rc1
        ("", "0.0.1", -1),  # no application (bootloader) sorts below every version
    ],
)
def test_compare_versions(a: str, b: str, order: int) -> None:
    assert compare_versions(a, b) == order
    assert compare_versions(b, a) == -order


def test_same_release_never_matches_an_empty_version() -> None:
    assert same_release("1.5.0", "1.5.0+0")
    assert same_release("1.1.1-rc1", "1.1.1+3900000001")
    assert not same_release("1.5.0", "1.5.0+7")  # another build of the image
    assert not same_release("", "")
    assert not same_release("1.5.0", "")


versions = st.builds(
    lambda a, b, c, build: f"{a}.{b}.{c}" + (f"+{build}" if build is not None else ""),
    st.integers(0, 30),
    st.integers(0, 30),
    st.integers(0, 30),
    st.none() | st.integers(0, 9),
)


@given(versions, versions, versions)
def test_version_order_is_a_total_order(a: str, b: str, c: str) -> None:
    assert compare_versions(a, a) == 0
    assert compare_versions(a, b) == -compare_versions(b, a)
    if compare_versions(a, b) <= 0 and compare_versions(b, c) <= 0:
        assert compare_versions(a, c) <= 0


# --- may we start ---------------------------------------------------------------------


def facts(status: BootStatus, digest: bytes | None = DIGEST, **kw: object) -> StartFacts:
    return replace(StartFacts(NEW, DIGEST, status, digest), **kw)  # type: ignore[arg-type]


START_CASES = [
    # (boot status, digest, options, verdict)
    (boot(OLD), OTHER, {}, StartVerdict.START),
    (boot(NEW), DIGEST, {}, StartVerdict.ALREADY_INSTALLED),
    (boot(f"{NEW}+0"), DIGEST, {}, StartVerdict.ALREADY_INSTALLED),
    (boot(NEW), None, {}, StartVerdict.START),  # never "installed" on the version alone
    (boot(NEW), OTHER, {}, StartVerdict.START),  # same version, another image: not ours
    (boot(NEW), DIGEST, {"reinstall": True}, StartVerdict.START),
    (boot(NEW, "test"), DIGEST, {}, StartVerdict.CONTINUE_TEST_IMAGE),
    (boot(NEW, "test"), None, {}, StartVerdict.CONTINUE_TEST_IMAGE),
    (boot(NEW, "test"), OTHER, {}, StartVerdict.START),  # preflight refuses the pending image
    (boot("1.7.0"), OTHER, {}, StartVerdict.REFUSE_DOWNGRADE),
    (boot("1.7.0"), OTHER, {"downgrade_reason": "   "}, StartVerdict.REFUSE_DOWNGRADE),
    (boot("1.7.0"), OTHER, {"downgrade_reason": "field recall"}, StartVerdict.START),
    (boot("", "none", "bootloader"), None, {}, StartVerdict.START),
]


@pytest.mark.parametrize(("status", "digest", "options", "verdict"), START_CASES)
def test_decide_start(
    status: BootStatus, digest: bytes | None, options: dict[str, object], verdict: StartVerdict
) -> None:
    decision = decide_start(facts(status, digest, **options))
    assert decision.verdict is verdict, decision


def test_already_installed_rests_on_the_digest_not_the_version() -> None:
    decision = decide_start(facts(boot(NEW), None))
    assert decision.verdict is StartVerdict.START
    assert "not readable" in decision.reason and "not readable" in decision.warning
    assert not decide_start(facts(boot(NEW), DIGEST)).warning


def _component(encryption: str = "none", decrypted: bytes = b"") -> Component:
    cipher = hashlib.sha256(b"ciphertext image").digest()
    return Component(
        "app",
        4096,
        DIGEST if encryption == "none" else cipher,
        "raw",
        4096,
        DIGEST if encryption == "none" else cipher,
        encryption=encryption,
        enc_key=b"k" if encryption != "none" else b"",
        decrypted_sha256=decrypted,
    )


def test_the_digest_a_bms_reports_for_an_encrypted_image_is_the_decrypted_ones() -> None:
    """An encrypted image is decrypted into the bank: the ciphertext digest is never what
    the BMS reports, the signed decrypted digest is; without it nothing is compared."""
    assert active_digest_of(_component()) == DIGEST
    assert active_digest_of(_component("ecies-x25519", DIGEST)) == DIGEST
    assert active_digest_of(_component("ecies-x25519")) is None

    def installed(release: bytes | None, running: bytes) -> str:
        return judge_installed(
            release_image_sha256=release,
            running_digest=running,
            release_counter=2,
            counter_before=1,
            counter_after=2,
        ).verdict.value

    encrypted = active_digest_of(_component("ecies-x25519", DIGEST))
    assert installed(encrypted, DIGEST) == "installed"
    assert installed(encrypted, OTHER) == "digest mismatch"
    # already installed: an encrypted release without the decrypted digest is sent again
    unnamed = StartFacts(NEW, None, boot(NEW), DIGEST)
    decision = decide_start(unnamed)
    assert decision.verdict is StartVerdict.START and "encrypted" in decision.warning
    assert decide_start(replace(unnamed, release_image_sha256=encrypted)).verdict is (
        StartVerdict.ALREADY_INSTALLED
    )


@pytest.mark.parametrize(
    ("size", "layout", "refused"),
    [
        (4096, None, ""),  # not reported: the BMS judges the fit itself
        (4096, FlashLayout(4096, 1024, 2), ""),  # exactly one bank
        (4097, FlashLayout(4096, 1024, 2), "does not fit"),
        (100, FlashLayout(4096, 1024, 1), "needs two"),
        (100, FlashLayout(4096, 1000, 2), "not a whole number of sectors"),
    ],
)
def test_layout_refusal(size: int, layout: FlashLayout | None, refused: str) -> None:
    reason = layout_refusal(size, layout)
    assert (refused in reason) if refused else reason == ""
    decision = decide_start(facts(boot(OLD), OTHER, release_image_size=size, flash_layout=layout))
    expected = StartVerdict.REFUSE_BANK_LAYOUT if refused else StartVerdict.START
    assert decision.verdict is expected
    # nothing to send, nothing to fit: an installed release is not refused for its size
    installed = facts(boot(NEW), DIGEST, release_image_size=size, flash_layout=layout)
    assert decide_start(installed).verdict is StartVerdict.ALREADY_INSTALLED


def test_allowed_downgrade_is_flagged_with_its_reason() -> None:
    decision = decide_start(facts(boot("1.7.0"), OTHER, downgrade_reason="field recall"))
    assert decision.downgrade and "field recall" in decision.reason


VENDOR_KEY = hashlib.sha256(b"vendor image key").digest()
FOREIGN_KEY = hashlib.sha256(b"another image key").digest()
SECOND_KEY = hashlib.sha256(b"second fused key").digest()

KEY_CASES = [
    # (image key per component, keys the BMS reports, options, verdict, key check begins)
    ({"app": VENDOR_KEY}, (VENDOR_KEY,), {}, StartVerdict.START, "signed by key"),
    ({"app": VENDOR_KEY}, (SECOND_KEY, VENDOR_KEY), {}, StartVerdict.START, "signed by key"),
    ({"app": FOREIGN_KEY}, (VENDOR_KEY,), {}, StartVerdict.REFUSE_IMAGE_KEY, ""),
    (
        {"app": VENDOR_KEY, "bms-fw2": FOREIGN_KEY},
        (VENDOR_KEY,),
        {},
        StartVerdict.REFUSE_IMAGE_KEY,
        "",
    ),
    ({"app": FOREIGN_KEY}, (), {}, StartVerdict.START, "left to the BMS"),  # not reported
    ({}, (VENDOR_KEY,), {}, StartVerdict.START, "left to the BMS"),  # no image key known
    # an allowed downgrade still may not send an image the BMS cannot boot
    (
        {"app": FOREIGN_KEY},
        (VENDOR_KEY,),
        {"downgrade_reason": "recall"},
        StartVerdict.REFUSE_IMAGE_KEY,
        "",
    ),
]


@pytest.mark.req("SEED-SECURE-BOOT")
@pytest.mark.parametrize(("images", "fused", "options", "verdict", "check"), KEY_CASES)
def test_image_key_decides_before_the_transfer(
    images: dict[str, bytes],
    fused: tuple[bytes, ...],
    options: dict[str, object],
    verdict: StartVerdict,
    check: str,
) -> None:
    status = boot("1.7.0") if options else boot(OLD)
    decision = decide_start(
        facts(
            status,
            OTHER,
            image_key_hashes=tuple(images.items()),
            device_key_hashes=fused,
            **options,
        )
    )
    assert decision.verdict is verdict, decision
    assert decision.key_check.startswith(check)
    assert decision.key_left_to_device is (check == "left to the BMS")
    if verdict is StartVerdict.REFUSE_IMAGE_KEY:
        assert (
            FOREIGN_KEY.hex()[:16] in decision.reason and VENDOR_KEY.hex()[:16] in decision.reason
        )


def test_image_key_is_not_judged_when_nothing_is_sent() -> None:
    """Already installed, or our test image pending: no transfer, nothing to refuse."""
    keys = {"image_key_hashes": (("app", FOREIGN_KEY),), "device_key_hashes": (VENDOR_KEY,)}
    assert decide_start(facts(boot(NEW), DIGEST, **keys)).verdict is StartVerdict.ALREADY_INSTALLED
    test_image = decide_start(facts(boot(NEW, "test"), DIGEST, **keys))
    assert test_image.verdict is StartVerdict.CONTINUE_TEST_IMAGE


# --- what to send, what a resume skips -------------------------------------------------


def test_choose_payload() -> None:
    base = OTHER
    assert choose_payload(delta_base=None, running_digest=base, running_version=OLD).kind is (
        PayloadKind.FULL
    )
    assert choose_payload(delta_base=base, running_digest=base, running_version=OLD).sends_delta
    wrong = choose_payload(delta_base=base, running_digest=DIGEST, running_version=OLD)
    assert wrong.kind is PayloadKind.FALLBACK_FULL and "fell back" in wrong.reason
    unreadable = choose_payload(
        delta_base=base, running_digest=None, running_version=OLD, digest_problem="E300"
    )
    assert unreadable.kind is PayloadKind.FALLBACK_FULL and "E300" in unreadable.reason


@pytest.mark.parametrize(
    ("state", "encoded", "force", "start", "erase"),
    [
        (TransferState(1000, 0, False), False, False, 0, True),  # nothing staged
        (TransferState(1000, 400, True), False, False, 400, False),  # partly written
        (TransferState(1000, 1000, True), False, False, 1000, False),  # all held: send nothing
        (TransferState(900, 400, True), False, False, 0, True),  # another stream
        (TransferState(1000, 400, True), False, True, 0, True),  # resumed image did not verify
        (TransferState(1000, 400, True), True, False, 0, True),  # encoded: never mid-way
    ],
)
def test_plan_transfer(
    state: TransferState, encoded: bool, force: bool, start: int, erase: bool
) -> None:
    plan = plan_transfer(state, 1000, encoded=encoded, force_full=force)
    assert (plan.start_offset, plan.erase) == (start, erase)


# --- after the reset: (image state x self-test) -> action ------------------------------

BOOT_CASES = [
    # (status after reset or None, answered, meaning)
    (boot(NEW, "test"), True, BootMeaning.NEW_IN_TEST),
    (boot(f"{NEW}+0", "test"), True, BootMeaning.NEW_IN_TEST),
    (boot(NEW, "confirmed"), True, BootMeaning.NEW_CONFIRMED),
    (boot(OLD, "reverted", reason="self-test failed: cells"), True, BootMeaning.REVERTED),
    (boot(OLD, "confirmed", reason="watchdog"), True, BootMeaning.REVERTED),
    (boot(OLD, "reverted", reason="boot loop: 3 starts"), True, BootMeaning.BOOT_LOOP),
    (boot("", "none", "booting"), True, BootMeaning.STILL_BOOTING),
    (boot("", "none", "bootloader"), True, BootMeaning.IN_BOOTLOADER),
    (None, False, BootMeaning.NO_ANSWER),  # power loss or lost link: not a boot loop
    (None, True, BootMeaning.STILL_BOOTING),
    (boot("9.9.9"), True, BootMeaning.OTHER_IMAGE),
]


@pytest.mark.parametrize(("status", "answered", "meaning"), BOOT_CASES)
def test_interpret_boot(status: BootStatus | None, answered: bool, meaning: BootMeaning) -> None:
    assert interpret_boot(BootReading(NEW, OLD, status, answered)) is meaning


def test_a_resumed_run_takes_any_other_image_for_the_revert() -> None:
    assert interpret_boot(BootReading(NEW, "", boot("1.2.3"))) is BootMeaning.REVERTED


@pytest.mark.parametrize(
    ("result", "verdict"),
    [
        (self_test(True), SelfTestVerdict.PASSED),
        (self_test(True, f"{NEW}+0"), SelfTestVerdict.PASSED),
        (self_test(False), SelfTestVerdict.FAILED),
        (self_test(True, OLD), SelfTestVerdict.STALE),  # the old firmware's pass
        (None, SelfTestVerdict.NO_RECORD),
    ],
)
def test_judge_self_test(result: SelfTestResult | None, verdict: SelfTestVerdict) -> None:
    assert judge_self_test(result, NEW) is verdict


ALL_VERDICTS = [*SelfTestVerdict, None]
EXPECTED_ACTION = {
    BootMeaning.NEW_CONFIRMED: Action.REPORT_CONFIRMED,
    BootMeaning.REVERTED: Action.REPORT_REVERTED,
    BootMeaning.BOOT_LOOP: Action.REPORT_REVERTED,
    BootMeaning.STILL_BOOTING: Action.AWAIT_REVERT,
    BootMeaning.IN_BOOTLOADER: Action.REPORT_STUCK,
    BootMeaning.NO_ANSWER: Action.REPORT_NO_ANSWER,
    BootMeaning.OTHER_IMAGE: Action.REPORT_STUCK,
}


@pytest.mark.parametrize("meaning", list(BootMeaning))
@pytest.mark.parametrize("verdict", ALL_VERDICTS)
def test_after_boot_table(meaning: BootMeaning, verdict: SelfTestVerdict | None) -> None:
    """Every (boot meaning x self-test verdict): confirm only a new test image that passed."""
    action = decide_after_boot(meaning, verdict).action
    if meaning is BootMeaning.NEW_IN_TEST:
        expected = Action.CONFIRM if verdict is SelfTestVerdict.PASSED else Action.REVERT
    else:
        expected = EXPECTED_ACTION[meaning]
    assert action is expected


@given(
    st.sampled_from(list(BootMeaning)),
    st.sampled_from(ALL_VERDICTS),
)
def test_confirm_needs_a_new_test_image_and_a_pass(
    meaning: BootMeaning, verdict: SelfTestVerdict | None
) -> None:
    if decide_after_boot(meaning, verdict).action is Action.CONFIRM:
        assert meaning is BootMeaning.NEW_IN_TEST and verdict is SelfTestVerdict.PASSED


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (boot(NEW, "confirmed"), ConfirmVerdict.CONFIRMED),
        (boot(NEW, "test"), ConfirmVerdict.STILL_TEST),
        (boot(OLD, "reverted"), ConfirmVerdict.LOST),
        (boot(NEW, "confirmed", "booting"), ConfirmVerdict.LOST),
    ],
)
def test_judge_confirm(status: BootStatus, verdict: ConfirmVerdict) -> None:
    assert judge_confirm(status, NEW) is verdict


# --- rollback: (image state x self-test x command "rollback") -------------------------

ROLLBACK_CASES = [
    # a test image (passed, failed or not yet self-tested): back to the confirmed image
    (boot(NEW, "test"), RollbackAction.REVERT_TEST_IMAGE),
    # reverted this boot (failed self-test, watchdog, boot loop): the other bank is rejected
    (boot(OLD, "reverted", reason="self-test failed: cells"), RollbackAction.NOTHING_TO_ROLL_BACK),
    (boot(OLD, "reverted", reason="boot loop"), RollbackAction.NOTHING_TO_ROLL_BACK),
    # confirmed (after a revert in an earlier boot, or after a good update): nothing
    (boot(OLD, "confirmed", reason="self-test failed"), RollbackAction.NOTHING_TO_ROLL_BACK),
    (boot(NEW, "confirmed"), RollbackAction.NOTHING_TO_ROLL_BACK),
    (boot("", "none", "bootloader"), RollbackAction.NOT_RUNNING),
    (boot(NEW, "test", "self-test"), RollbackAction.NOT_RUNNING),
]


@pytest.mark.parametrize(("status", "action"), ROLLBACK_CASES)
def test_plan_rollback(status: BootStatus, action: RollbackAction) -> None:
    plan = plan_rollback(status)
    assert plan.action is action
    assert plan.changes_device is (action is RollbackAction.REVERT_TEST_IMAGE)
    assert plan.reason


@given(
    st.sampled_from(["application", "booting", "self-test", "bootloader", "off"]),
    st.sampled_from(["confirmed", "test", "reverted", "none"]),
    st.text(max_size=20),
)
def test_rollback_changes_the_device_only_from_a_running_test_image(
    run: str, image: str, reason: str
) -> None:
    plan = plan_rollback(boot(NEW, image, run, reason))
    assert plan.changes_device == (run == "application" and image == "test")
