"""Negative responses, security rules and timing, against the real server on a `virtual` bus."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmsfw.package import VendorPki, create_pki
from bmsfw.protocol import errors as err
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds import (
    UdsClientConfig,
    UdsSession,
    issue_tester_certificate,
    open_uds_session,
)
from bmsfw.protocol.uds import (
    tester_credentials as make_credentials,
)
from bmsfw.protocol.uds._codec import DID, ROUTINE, Session
from bmsfw.sim.sim_can import CanSimConfig, CanSimulator
from bmsfw.sim.uds_server import DEV_SEED_KEY_SECRET, UdsServerConfig

from .conftest import Release

_bus_names = itertools.count()


@pytest.fixture
def sim(state_dir: Path) -> Iterator[CanSimulator]:
    server = UdsServerConfig(lockout_s=0.5, s3_s=0.4)
    link = f"virtual:neg{next(_bus_names)}"
    with CanSimulator(CanSimConfig(link, (1,), str(state_dir), time_scale=20, server=server)) as s:
        yield s


@pytest.fixture
def session(sim: CanSimulator) -> Iterator[UdsSession]:
    with open_uds_session(str(sim.spec), 1) as s:
        yield s


def programming(session: UdsSession, tester: Credentials) -> None:
    session.authenticate(tester)


@pytest.mark.req("SEED-TESTER-AUTH")
def test_programming_services_need_session_and_authentication(
    session: UdsSession, tester: Credentials
) -> None:
    with pytest.raises(err.UdsServiceNotSupportedInSessionError) as info:
        session.request(0x34, b"\x00\x44" + bytes(8), what="download in default session")
    assert info.value.nrc == 0x7F and info.value.code == "BMSFW-E356"
    session.change_session(Session.PROGRAMMING)
    with pytest.raises(err.UdsSecurityAccessDeniedError):
        session.request(0x34, b"\x00\x44" + bytes(4) + b"\x00\x00\x01\x00", what="download")
    with pytest.raises(err.UdsSecurityAccessDeniedError):
        session.routine(ROUTINE.ERASE_MEMORY, what="erase")


def test_sequence_errors_and_block_counter(
    session: UdsSession, tester: Credentials, release_v2: Release
) -> None:
    programming(session, tester)
    with pytest.raises(err.UdsRequestSequenceError):
        session.request(0x36, b"\x01" + bytes(16), what="data without download")
    with pytest.raises(err.UdsUploadDownloadNotAcceptedError):
        session.request(0x34, b"\x00\x44" + bytes(4) + b"\x00\x00\x01\x00", what="no header")
    session.prepare(release_v2.header)
    with pytest.raises(err.UdsRequestSequenceError):
        session.activate()  # not verified
    session.erase()
    size = len(release_v2.image)
    with pytest.raises(err.UdsRequestOutOfRangeError):  # compression nibble reserved
        session.request(
            0x34, b"\x10\x44" + (0).to_bytes(4, "big") + size.to_bytes(4, "big"), what="dfi"
        )
    with pytest.raises(err.UdsRequestOutOfRangeError):
        session.request(
            0x34,
            b"\x00\x44" + (0).to_bytes(4, "big") + (size + 1).to_bytes(4, "big"),
            what="too big",
        )
    session.request(0x34, b"\x00\x44" + (0).to_bytes(4, "big") + size.to_bytes(4, "big"), what="dl")
    image = release_v2.image
    assert session.request(0x36, b"\x01" + image[:100], what="block 1") == b"\x01"
    # a repeated block (lost response) is accepted again with the same counter
    assert session.request(0x36, b"\x01" + image[:100], what="block 1 again") == b"\x01"
    with pytest.raises(err.UdsWrongBlockSequenceCounterError) as info:
        session.request(0x36, b"\x03" + image[100:200], what="skipped counter")
    assert info.value.nrc == 0x73
    with pytest.raises(err.UdsRequestSequenceError):
        session.request(0x37, what="exit before the end")
    assert session.read_transfer_state().contiguous_bytes == 100
    with pytest.raises(err.UdsRequestOutOfRangeError):
        session.read_did(0x0999)


def test_block_counter_wraps_past_0xff(
    state_dir: Path, tester: Credentials, release_v2: Release
) -> None:
    # 64-byte blocks: a 32 KiB image takes > 512 blocks, so the counter wraps twice
    server = UdsServerConfig(max_block_length=64)
    with (
        CanSimulator(CanSimConfig("virtual:wrap", (1,), str(state_dir), 20, server)),
        open_uds_session("virtual:wrap", 1) as session,
    ):
        session.authenticate(tester)
        session.prepare(release_v2.header)
        session.erase()
        offsets = list(session.write(release_v2.image))
        assert len(offsets) > 512
        session.verify()  # the bytes landed in order across both wraps


@pytest.mark.req("IEC62443-CR1.11")
def test_seed_key_attempts_lockout_and_unlock(session: UdsSession) -> None:
    with pytest.raises(err.UdsServiceNotSupportedInSessionError):
        session.request(0x27, b"\x11", what="seed in default session")
    session.change_session(Session.PROGRAMMING)
    for expected in (
        err.UdsInvalidKeyError,
        err.UdsInvalidKeyError,
        err.UdsExceededNumberOfAttemptsError,
    ):
        with pytest.raises(expected):
            session.security_access(b"wrong secret")
    with pytest.raises(err.UdsRequiredTimeDelayNotExpiredError):
        session.security_access(DEV_SEED_KEY_SECRET)
    time.sleep(0.6)  # lock-out of this simulator: 0.5 s (S3 0.4 s drops the session too)
    session.change_session(Session.PROGRAMMING)
    with pytest.raises(err.UdsRequestSequenceError):
        session.request(0x27, b"\x12" + bytes(16), what="key without seed")
    session.security_access(DEV_SEED_KEY_SECRET)
    assert session.read_transfer_state().total_size == 0  # unlocked: reads still fine


@pytest.mark.req("SEED-TESTER-AUTH", "IEC62443-CR1.2")
def test_tester_certificates_checked(
    session: UdsSession, pki: VendorPki, tester: Credentials
) -> None:
    # a release-signing certificate is not a tester certificate
    signer = make_credentials(
        pki.signer_key, pki.signer_certificate, [pki.intermediate_certificate]
    )
    with pytest.raises(err.UdsCertificateRejectedError) as info:
        session.authenticate(signer)
    assert info.value.nrc == 0x56  # ISO 14229-1:2020 invalidScope
    # a tester certificate from another vendor's PKI does not chain to the fused root
    other = create_pki("ed25519")
    key, cert = issue_tester_certificate(other.intermediate_key, other.intermediate_certificate)
    with pytest.raises(err.UdsCertificateRejectedError) as info:
        session.authenticate(
            make_credentials(key, cert, [other.intermediate_certificate, other.root_certificate])
        )
    assert info.value.nrc == 0x52  # invalidChainOfTrust
    # an expired tester certificate: invalidTimePeriod
    old_key, old_cert = issue_tester_certificate(
        pki.intermediate_key,
        pki.intermediate_certificate,
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=30),
        validity_days=1,
    )
    expired = make_credentials(
        old_key, old_cert, [pki.intermediate_certificate, pki.root_certificate]
    )
    with pytest.raises(err.UdsCertificateRejectedError) as info:
        session.authenticate(expired)
    assert info.value.nrc == 0x50
    # the right certificate with someone else's key fails proof of possession
    stolen = dataclasses.replace(
        tester, private_key_pem=make_credentials(key, cert, []).private_key_pem
    )
    with pytest.raises(err.UdsOwnershipVerificationFailedError) as info:
        session.authenticate(stolen)
    assert info.value.nrc == 0x58  # ownershipVerificationFailed (0x57 is a revoked certificate)
    session.authenticate(tester)  # and the real tester gets in


def test_s3_drops_session_and_tester_present_keeps_it(
    sim: CanSimulator, tester: Credentials
) -> None:
    link = str(sim.spec)
    quiet = UdsClientConfig(tester_present_interval_s=60.0)
    with open_uds_session(link, 1, config=quiet) as session:
        session.authenticate(tester)
        time.sleep(0.8)  # S3 of this simulator: 0.4 s
        assert session.read_did(DID.ACTIVE_SESSION) == b"\x01"
    chatty = UdsClientConfig(tester_present_interval_s=0.1)
    with open_uds_session(link, 1, config=chatty) as session:
        session.authenticate(tester)
        time.sleep(0.8)
        assert session.read_did(DID.ACTIVE_SESSION) == b"\x02"


def test_p2_is_clamped_and_long_steps_get_response_pending(
    state_dir: Path, tester: Credentials, release_v2: Release
) -> None:
    # wall-clock device: verify hashes 32 KiB and checks a signature (> 50 ms)
    with (
        CanSimulator(CanSimConfig("virtual:pending", (1,), str(state_dir), time_scale=1.0)),
        open_uds_session("virtual:pending", 1) as session,
    ):
        timing = session.change_session(Session.PROGRAMMING)
        assert (timing.p2_s, timing.p2_star_s) == (0.05, 5.0)
        assert session._p2_s == session.config.p2_min_s  # not the server's 50 ms
        pending: list[float] = []
        session._client.set_config("nrc78_callback", lambda: pending.append(time.monotonic()))
        session.authenticate(tester)
        session.prepare(release_v2.header)
        session.erase()
        for _ in session.write(release_v2.image):
            pass
        pending.clear()
        session.verify()
        assert pending, "verify took > P2 but no 0x78 came"
