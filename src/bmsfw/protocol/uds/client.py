"""``UdsSession``: the :class:`~bmsfw.protocol.session.BmsSession` over UDS on ISO-TP.

udsoncan is configured the way flashing tools learned the hard way:

* the server's P2/P2* are not adopted blindly: P2 is clamped into
  ``[p2_min_s, p2_max_s]`` (a 50 ms P2 is the server's processing budget; the
  tester must add bus and scheduling latency), P2* into ``[p2_star_s, p2_star_max_s]``;
* a ``0x78`` responsePending re-arms the wait with P2* (udsoncan does this);
* each request has an overall budget (``step_timeout_s``, erase/verify longer) that
  fires even while ``0x78`` keeps coming (E361), and at most ``max_response_pending``
  ``0x78`` answers (counted with udsoncan's ``nrc78_callback``; E367);
* every step (identify, authentication, release header, erase, verify, activate,
  reset, self-test, confirm, rollback, configuration, status reads) runs under a
  :class:`~bmsfw.protocol.deadline.StepClock` deadline from
  :class:`~bmsfw.protocol.deadline.StepBudgets`: repeats included, each request waits
  at most until the step's deadline (E366);
* TesterPresent (suppressed response) keeps a non-default session alive between steps;
* a TransferData block that times out is sent once more with the *same* block
  sequence counter (the server accepts a repeated block), then the transfer stops
  with :class:`~bmsfw.protocol.errors.UdsTransferInterruptedError`; running the
  update again resumes from what the device holds.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from isotp.errors import BlockingSendFailure
from udsoncan.BaseService import BaseService
from udsoncan.client import Client
from udsoncan.exceptions import (
    InvalidResponseException,
    NegativeResponseException,
    TimeoutException,
    UnexpectedResponseException,
)
from udsoncan.Request import Request

from bmsfw.errors import BmsfwError
from bmsfw.package import Component, Manifest, decode_header
from bmsfw.protocol.boot_wait import wait_for_application
from bmsfw.protocol.bounds import counter_value, decoded, device_text
from bmsfw.protocol.deadline import StepBudgets, StepClock, session_step
from bmsfw.protocol.errors import (
    DeviceActivateFailedError,
    DeviceHeaderRejectedError,
    DeviceVerifyFailedError,
    StepDeadlineError,
    UdsAuthenticationRequiredError,
    UdsInvalidResponseError,
    UdsRequestOutOfRangeError,
    UdsResponsePendingLimitError,
    UdsSecurityAccessDeniedError,
    UdsServiceNotSupportedInSessionError,
    UdsStepTimeoutError,
    UdsTimeoutError,
    UdsTransferInterruptedError,
    uds_error_for_nrc,
)
from bmsfw.protocol.session import (
    BootStatus,
    Channel,
    ConfigSnapshot,
    DeviceIdentity,
    FlashLayout,
    LinkQuality,
    SelfTestResult,
    Telemetry,
    TesterCredentials,
    TransferState,
    staging_flags,
)
from bmsfw.protocol.uds._auth import (
    AuthenticationResponseError,
    chain_pem_to_der,
    challenge_from_verify_response,
    check_proof_response,
    sign_challenge,
)
from bmsfw.protocol.uds._codec import (
    DID,
    HARD_RESET,
    ROUTINE,
    ROUTINE_OK,
    SECURITY_LEVEL_PROGRAMMING,
    TELEMETRY_DIDS,
    Session,
    SessionTiming,
    decode_boot_status,
    decode_config,
    decode_flash_layout,
    decode_image_key_hashes,
    decode_self_test,
    decode_telemetry_parts,
    decode_transfer_state,
    encode_config,
    is_encoded,
    seed_key,
    transfer_dfi,
)

__all__ = ["RoutineResult", "UdsClientConfig", "UdsSession", "make_udsoncan_client"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_IDEMPOTENT = frozenset({0x10, 0x22, 0x34, 0x37, 0x3E})
# What a BMS answers when the session or the access it granted is gone: it rebooted on
# its own (a watchdog revert, a power cut: it starts again in the default session,
# locked) or its S3 timer ran out.
_ACCESS_LOST = (
    UdsServiceNotSupportedInSessionError,
    UdsSecurityAccessDeniedError,
    UdsAuthenticationRequiredError,
)


@dataclass(frozen=True)
class UdsClientConfig:
    """Tester-side timing; every limit in seconds."""

    p2_min_s: float = 0.25  # floor for the server's P2 (ISO-TP + OS latency on top of 50 ms)
    p2_max_s: float = 2.0
    p2_star_s: float = 5.0
    p2_star_max_s: float = 30.0
    tester_present_interval_s: float = 2.0  # < S3 (5 s)
    step_timeout_s: float = 30.0  # any single step (request until final response)
    erase_timeout_s: float = 120.0
    verify_timeout_s: float = 120.0
    block_retries: int = 1  # resend a timed-out TransferData block once with the same counter
    request_retries: int = 2  # repeat idempotent short requests (reads, session, download)
    min_block_data: int = 62  # adaptive block size never goes below this many data bytes
    # a BMS's maxNumberOfBlockLength is capped here: one block (one ISO-TP message) is
    # what a slow BMS can stretch before the pipeline's rate floor is judged again
    max_block_length: int = 4095
    boot_poll_interval_s: float = 0.2
    # 0x78 answers to one request before it is cut off (E367); a real erase answers
    # one every ~2 s (P2* is 5 s), so 100 covers minutes of honest work
    max_response_pending: int = 100
    budgets: StepBudgets = field(default_factory=StepBudgets)  # per-step deadlines (E366)

    def __post_init__(self) -> None:
        if self.max_response_pending < 1:
            raise ValueError("need max_response_pending >= 1")
        if not 0 < self.p2_min_s <= self.p2_max_s:
            raise ValueError("need 0 < p2_min_s <= p2_max_s")
        if not 0 < self.p2_star_s <= self.p2_star_max_s:
            raise ValueError("need 0 < p2_star_s <= p2_star_max_s")


class _PendingLimitError(Exception):
    """Raised inside udsoncan's wait loop to end it (see ``_on_response_pending``)."""


@dataclass(frozen=True)
class RoutineResult:
    ok: bool
    code: str
    message: str
    record: bytes


class _AnswersToTheRequest:
    """A udsoncan connection that hands the client only answers to the request in flight.

    A BMS that answers after the tester gave up on a request (P2 ran out on a slow
    or loaded link) puts that late answer on the bus while the next request waits:
    a ReadDataByIdentifier answer (0x62) arriving while a session change (0x10)
    waits. udsoncan would take it as the answer and refuse it as unexpected (E363)
    although the right answer is still on its way. An answer names its service
    (request SID + 0x40, or 0x7F and the SID), so one that names another service
    is dropped here and the wait goes on within the same time limit. An answer to
    the same service is left to the session (a late read of another DID, a late
    echo of the block before: ``read_did``, ``_send_block``).
    """

    def __init__(self, connection: Any) -> None:
        self._conn = connection
        self._sid: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __enter__(self) -> _AnswersToTheRequest:
        self._conn.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.__exit__(*exc)

    def send(self, payload: bytes) -> None:
        self._sid = payload[0] if payload else None
        self._conn.send(payload)

    def wait_frame(self, timeout: float | None = None, exception: bool = False) -> bytes | None:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if end is None else max(end - time.monotonic(), 0.0)
            frame: bytes | None = self._conn.wait_frame(timeout=left, exception=exception)
            sid = self._sid
            if frame is None or sid is None or not frame:
                return frame
            if frame[0] == sid + 0x40 or (frame[0] == 0x7F and frame[1:2] == bytes([sid])):
                return frame
            log.debug("dropped a late answer (0x%02X) while waiting for 0x%02X", frame[0], sid)
            if end is not None and time.monotonic() >= end:
                if exception:
                    raise TimeoutException(  # type: ignore[no-untyped-call]
                        f"no answer to 0x{sid:02X} within {timeout} s"
                    )
                return None


def make_udsoncan_client(connection: Any, config: UdsClientConfig) -> Client:
    """A udsoncan ``Client`` with the timing policy above (no overall request timeout)."""
    client = Client(_AnswersToTheRequest(connection))  # type: ignore[arg-type]
    client.set_configs(
        {
            "request_timeout": None,  # type: ignore[typeddict-item]  # None: no overall limit
            "p2_timeout": config.p2_min_s,
            "p2_star_timeout": config.p2_star_s,
            "use_server_timing": False,  # we clamp the server's values ourselves
            "exception_on_negative_response": True,
            "exception_on_invalid_response": True,
            "exception_on_unexpected_response": True,
        }
    )
    return client


def _app_component(header: bytes) -> Component | None:
    """The app component the header names (the device verified it; here only read)."""
    try:
        return Manifest.from_json_bytes(decode_header(header).manifest).component("app")
    except (BmsfwError, KeyError, ValueError):
        return None


def _parse_status(record: bytes) -> RoutineResult:
    """A routine's status record: status byte (00 done, else refused), then str8 texts.

    The status is part of the result: a routine that answers without one is an
    invalid response, never a success.
    """
    if not record:
        raise UdsInvalidResponseError("routine answered without its status byte")
    ok = record[0] == ROUTINE_OK
    texts: list[str] = []
    pos = 1
    if not ok:
        while pos < len(record):
            n = record[pos]
            texts.append(record[pos + 1 : pos + 1 + n].decode("utf-8", errors="replace"))
            pos += 1 + n
    code = texts[0] if len(texts) > 1 else ""
    message = texts[-1] if texts else ""
    return RoutineResult(ok, code, message, record[1:])


class UdsSession:
    """One tester's connection to one BMS node. Methods raise ``BmsfwError`` only.

    ``connection`` is a udsoncan connection (normally ``PythonIsoTpConnection`` over
    a can-isotp stack); ``on_close`` releases whatever the factory opened (bus,
    notifier) after the connection is closed.
    """

    #: ``write`` takes a component's stored bytes (compressed, delta, encrypted) as
    #: well as decoded images: the BMS decodes them (docs/uds.md, encoded transfers).
    accepts_stored = True

    def __init__(
        self,
        connection: Any,
        *,
        address: str = "",
        rate: str = "",
        config: UdsClientConfig | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.config = config or UdsClientConfig()
        self.address = address
        self.rate = rate
        self._on_close = on_close
        self._conn = connection
        self._client = make_udsoncan_client(connection, self.config)
        self._client.open()
        self._lock = threading.RLock()
        self._last_request = time.monotonic()
        self._session = Session.DEFAULT
        self._authenticated = False
        self._credentials: TesterCredentials | None = None
        self._p2_s = self.config.p2_min_s
        self._p2_star_s = self.config.p2_star_s
        self._stop = threading.Event()
        self._keepalive = threading.Thread(target=self._tester_present_loop, daemon=True)
        self._keepalive.start()
        self.blocks_resent = 0
        self._chunk_limit: int | None = None
        self._staged: Component | None = None  # app component of the last staged header
        self.last_dfi = 0x00  # dataFormatIdentifier of the last RequestDownload
        self.bus: Any = None  # the WireBus when opened by open_uds_session (stats, faults)
        self.steps = StepClock()
        self._pending = 0  # 0x78 answers to the request in flight
        self._client.set_config("nrc78_callback", self._on_response_pending)

    # ------------------------------------------------------------------ plumbing

    @property
    def step_budgets(self) -> StepBudgets:
        return self.config.budgets

    def _apply_timing(self, p2_s: float, p2_star_s: float) -> None:
        c = self.config
        self._p2_s = min(max(p2_s, c.p2_min_s), c.p2_max_s)
        self._p2_star_s = min(max(p2_star_s, c.p2_star_s), c.p2_star_max_s)
        self._client.set_configs({"p2_timeout": self._p2_s, "p2_star_timeout": self._p2_star_s})

    def request(
        self,
        sid: int,
        data: bytes = b"",
        *,
        what: str,
        step_timeout_s: float | None = None,
        retries: int | None = None,
    ) -> bytes:
        """Send one request; return the positive response's data (after the SID byte).

        Idempotent services (reads, session control, TesterPresent, RequestDownload,
        RequestTransferExit) are repeated up to ``request_retries`` times on a timeout.
        """
        if retries is None:
            retries = self.config.request_retries if sid in _IDEMPOTENT else 0
        for attempt in range(retries + 1):
            try:
                return self._request_once(sid, data, what=what, step_timeout_s=step_timeout_s)
            except UdsStepTimeoutError:
                raise
            except UdsTimeoutError:
                if attempt == retries:
                    raise
                self.steps.check(what)
                log.info("%s timed out; repeating (%d of %d)", what, attempt + 1, retries)
        raise AssertionError("unreachable")

    def _request_once(
        self, sid: int, data: bytes, *, what: str, step_timeout_s: float | None
    ) -> bytes:
        service = BaseService.from_request_id(sid)
        if service is None:
            raise ValueError(f"no udsoncan service for SID 0x{sid:02X}")
        if service.use_subfunction():
            if not data:
                raise ValueError(f"service 0x{sid:02X} needs a sub-function byte")
            req = Request(
                service=service,
                subfunction=data[0] & 0x7F,
                suppress_positive_response=bool(data[0] & 0x80),
                data=data[1:] or None,
            )
        else:
            req = Request(service=service, data=data or None)
        timeout = step_timeout_s if step_timeout_s is not None else self.config.step_timeout_s
        left = self.steps.remaining_s()
        if left is not None and left <= 0:
            raise self.steps.expired(what)
        # the step's deadline comes first when it is nearer than this request's budget
        clipped = left is not None and left < timeout
        if left is not None:
            timeout = min(timeout, left)
        with self._lock:
            # the overall limit is the request's own budget, generous against P2*: it
            # bounds a device that keeps answering 0x78 forever
            self._client.set_config("request_timeout", timeout)
            self._pending = 0
            try:
                response = self._client.send_request(req)
            except _PendingLimitError:
                raise UdsResponsePendingLimitError(
                    f"{what}: BMS {self.address} answered 'response pending' "
                    f"{self._pending} times without a final answer"
                ) from None
            except NegativeResponseException as exc:
                raise uds_error_for_nrc(sid, exc.response.code or 0, what) from None
            except TimeoutException as exc:
                text = str(exc)
                if "Global request timeout" in text and clipped:
                    raise self.steps.expired(what) from None
                if "Global request timeout" in text:
                    raise UdsStepTimeoutError(
                        f"{what}: no final answer within {timeout:.0f} s "
                        f"(BMS {self.address} kept answering 'response pending')"
                    ) from None
                raise UdsTimeoutError(
                    f"{what}: no answer from BMS {self.address} ({text})"
                ) from None
            except (InvalidResponseException, UnexpectedResponseException) as exc:
                raise UdsInvalidResponseError(f"{what}: {exc}") from None
            except BlockingSendFailure as exc:
                # ISO-TP could not deliver the request (no flow control: link down)
                raise UdsTimeoutError(
                    f"{what}: request to BMS {self.address} not delivered ({exc})"
                ) from None
            finally:
                self._last_request = time.monotonic()
        if response is None:
            return b""
        payload = response.original_payload or b""
        return bytes(payload[1:])

    def _on_response_pending(self) -> None:
        """udsoncan's ``nrc78_callback``: count 0x78 answers; past the limit, stop waiting."""
        self._pending += 1
        if self._pending > self.config.max_response_pending:
            raise _PendingLimitError

    def _tester_present_loop(self) -> None:
        interval = self.config.tester_present_interval_s
        while not self._stop.wait(min(0.25, interval / 4)):
            if self._session == Session.DEFAULT:
                continue
            if time.monotonic() - self._last_request < interval:
                continue
            if not self._lock.acquire(timeout=0.05):
                continue  # a request is running: it keeps the session alive itself
            try:
                self._conn.send(b"\x3e\x80")  # suppressPosRsp: nothing to wait for
                self._last_request = time.monotonic()
            except Exception as exc:  # keep-alive must never kill the session
                log.debug("TesterPresent failed: %s", exc)
            finally:
                self._lock.release()

    def read_did(self, did: int) -> bytes:
        """Read one data identifier.

        An answer that names another DID is most often a late answer to an earlier read
        that timed out (a loaded gateway, a slow bus): reading is idempotent, so the read
        is repeated, at most ``request_retries`` times, before the answer is refused.
        """
        what = f"read DID 0x{did:04X}"
        for attempt in range(self.config.request_retries + 1):
            data = self.request(0x22, struct.pack(">H", did), what=what)
            if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == did:
                return data[2:]
            if attempt < self.config.request_retries:
                log.info("%s: answer names another DID (a late answer?); reading again", what)
        raise UdsInvalidResponseError(f"{what}: response names another DID")

    def _read_text(self, did: int) -> str:
        raw = self.read_did(did)
        return self._decode(f"DID 0x{did:04X}", lambda: device_text(raw, f"DID 0x{did:04X}"))

    def routine(
        self, rid: int, option: bytes = b"", *, what: str, step_timeout_s: float | None = None
    ) -> RoutineResult:
        data = self.request(
            0x31,
            b"\x01" + struct.pack(">H", rid) + option,
            what=what,
            step_timeout_s=step_timeout_s,
        )
        if len(data) < 3 or struct.unpack(">H", data[1:3])[0] != rid:
            raise UdsInvalidResponseError(f"{what}: response names another routine")
        return _parse_status(data[3:])

    def change_session(self, session: Session) -> SessionTiming:
        data = self.request(0x10, bytes([session]), what=f"enter {session.name.lower()} session")
        timing = SessionTiming.decode(data[1:]) if len(data) >= 5 else SessionTiming()
        self._apply_timing(timing.p2_s, timing.p2_star_s)
        if session != self._session:
            self._authenticated = False
        self._session = session
        return timing

    # ------------------------------------------------------------------ identity & status

    @session_step("identify", "identify_s")
    def identify(self) -> DeviceIdentity:
        return DeviceIdentity(
            vendor=self._read_text(DID.SUPPLIER_ID),
            model=self._read_text(DID.SPARE_PART_NUMBER),
            hw_revision=self._read_text(DID.HARDWARE_VERSION),
            serial=self._read_text(DID.SERIAL_NUMBER),
            bootloader_version=self._read_text(DID.SUPPLIER_SOFTWARE_VERSION),
            app_version=self._read_text(DID.SOFTWARE_VERSION),
            security_counter=self._read_counter(),
            active_bank=self._read_text(DID.ACTIVE_BANK),
            address=self.address,
            image_key_hashes=self._read_image_keys(),
            flash_layout=self._read_flash_layout(),
        )

    def _read_image_keys(self) -> tuple[str, ...]:
        """DID 0x0103; a BMS without it (NRC 0x31) reports none: its bootloader alone checks."""
        try:
            raw = self.read_did(DID.IMAGE_KEY_HASHES)
        except UdsRequestOutOfRangeError:
            return ()
        return self._decode("image keys", lambda: decode_image_key_hashes(raw))

    def _read_flash_layout(self) -> FlashLayout | None:
        """DID 0x0104; a BMS without it (NRC 0x31) reports none: it judges the fit itself."""
        try:
            raw = self.read_did(DID.FLASH_LAYOUT)
        except UdsRequestOutOfRangeError:
            return None
        return self._decode("flash layout", lambda: decode_flash_layout(raw))

    def _read_counter(self) -> int:
        """DID 0x0100: exactly a big-endian uint32."""
        raw = self.read_did(DID.SECURITY_COUNTER)
        if len(raw) != 4:
            raise UdsInvalidResponseError(f"security counter DID 0x0100: {len(raw)} bytes, not 4")
        return counter_value(int.from_bytes(raw, "big"))

    @session_step("read telemetry", "read_s")
    def read_telemetry(self) -> Telemetry:
        parts: dict[int, bytes] = {did: self.read_did(did) for did in TELEMETRY_DIDS}
        return self._decode("telemetry", lambda: decode_telemetry_parts(parts))

    @session_step("read boot status", "read_s")
    def read_boot_status(self) -> BootStatus:
        raw = self.read_did(DID.BOOT_STATUS)
        return self._decode("boot status", lambda: decode_boot_status(raw))

    @session_step("read image digest", "read_s")
    def read_image_digest(self) -> bytes:
        """SHA-256 of the image in the active bank (DID 0x0102)."""
        raw = self.read_did(DID.ACTIVE_IMAGE_SHA256)
        if len(raw) != 32:
            raise UdsInvalidResponseError(f"image digest: {len(raw)} bytes, not 32")
        return raw

    @session_step("read transfer state", "read_s")
    def read_transfer_state(self) -> TransferState:
        raw = self.read_did(DID.TRANSFER_STATE)
        return self._decode("transfer state", lambda: decode_transfer_state(raw))

    @session_step("read self-test", "read_s")
    def read_self_test(self) -> SelfTestResult:
        raw = self.read_did(DID.SELF_TEST_RESULT)
        return self._decode("self-test", lambda: decode_self_test(raw))

    def _decode(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run a decoder: a value outside physics is E365, any other refusal E363."""
        return decoded(f"BMS {self.address}: {what}", fn, UdsInvalidResponseError)

    @session_step("link check", "read_s")
    def link_check(self, round_trips: int = 5) -> LinkQuality:
        times: list[float] = []
        errors = 0
        for _ in range(round_trips):
            start = time.monotonic()
            try:
                data = self.request(0x3E, b"\x00", what="TesterPresent")
                if data[:1] != b"\x00":
                    errors += 1
                    continue
            except StepDeadlineError:
                raise
            except BmsfwError:
                errors += 1
                continue
            times.append(time.monotonic() - start)
        return LinkQuality(
            echo_ok=errors == 0,
            round_trips=round_trips,
            errors=errors,
            rate=self.rate,
            # CAN has no in-band bitrate echo: a wrong bitrate shows up as no answer at all
            rate_matches=bool(times),
            round_trip_ms=1000 * sum(times) / len(times) if times else 0.0,
        )

    @session_step("read DTCs", "read_s")
    def read_dtcs(self, status_mask: int = 0xFF) -> list[tuple[int, int]]:
        data = self.request(0x19, bytes([0x02, status_mask]), what="read DTCs")
        return [
            (int.from_bytes(data[i : i + 3], "big"), data[i + 3])
            for i in range(2, len(data) - 3, 4)
        ]

    @session_step("clear DTCs", "read_s")
    def clear_dtcs(self) -> None:
        self.request(0x14, b"\xff\xff\xff", what="clear DTCs")

    # ------------------------------------------------------------------ config

    @session_step("read configuration", "config_s")
    def read_config(self) -> ConfigSnapshot:
        raw = self.read_did(DID.CONFIGURATION)
        return self._decode("configuration", lambda: decode_config(raw))

    @session_step("write configuration", "config_s")
    def write_config(self, snapshot: ConfigSnapshot) -> None:
        data = struct.pack(">H", DID.CONFIGURATION) + encode_config(snapshot)
        self._with_access(
            Session.EXTENDED, lambda: self.request(0x2E, data, what="write configuration")
        )

    # ------------------------------------------------------------------ security

    @session_step("authenticate", "authenticate_s")
    def authenticate(self, credentials: TesterCredentials) -> None:
        """Programming session, then 0x29 certificate exchange and proof of possession."""
        self._credentials = credentials
        if self._session != Session.PROGRAMMING:
            self.change_session(Session.PROGRAMMING)
        self._authenticate_now(credentials)

    def _authenticate_now(self, credentials: TesterCredentials) -> None:
        try:
            cert = chain_pem_to_der(credentials.certificate_chain_pem)
        except ValueError as exc:
            from bmsfw.errors import UsageError

            raise UsageError(f"tester certificate chain is not PEM: {exc}") from None
        data = self.request(
            0x29,
            b"\x01\x00" + struct.pack(">H", len(cert)) + cert + b"\x00\x00",
            what="authentication: verify certificate",
        )
        try:
            challenge = challenge_from_verify_response(data)
        except AuthenticationResponseError as exc:
            raise UdsInvalidResponseError(f"authentication: {exc}") from None
        try:
            proof = sign_challenge(credentials.private_key_pem, challenge, credentials.passphrase)
        except (ValueError, TypeError) as exc:
            from bmsfw.errors import UsageError

            raise UsageError(f"tester private key unusable: {exc}") from None
        answer = self.request(
            0x29,
            b"\x03" + struct.pack(">H", len(proof)) + proof + b"\x00\x00",
            what="authentication: proof of ownership",
        )
        try:
            check_proof_response(answer)
        except AuthenticationResponseError as exc:
            raise UdsInvalidResponseError(f"authentication: {exc}") from None
        self._authenticated = True

    @session_step("security access", "authenticate_s")
    def security_access(self, secret: bytes) -> None:
        """Unlock with 0x27 seed/key (HMAC-SHA256 of the seed, see docs/uds.md)."""
        if self._session == Session.DEFAULT:
            self.change_session(Session.PROGRAMMING)
        level = SECURITY_LEVEL_PROGRAMMING
        seed = self.request(0x27, bytes([level]), what="security access: request seed")[1:]
        if any(seed):
            self.request(
                0x27, bytes([level + 1]) + seed_key(seed, secret), what="security access: send key"
            )
        self._authenticated = True

    def _ensure_access(self, session: Session) -> None:
        """Enter a non-default session and re-authenticate if a reset dropped it."""
        if self._session == Session.DEFAULT:
            self.change_session(session)
        if not self._authenticated:
            if self._credentials is None:
                raise UdsSecurityAccessDeniedError(
                    "call authenticate() with tester credentials first"
                )
            self._authenticate_now(self._credentials)

    def _forget_access(self, why: str) -> None:
        """The BMS is back in its default session, locked: the next step starts again."""
        if self._session != Session.DEFAULT or self._authenticated:
            log.info("BMS %s: %s; entering the session and authenticating again", self.address, why)
        self._session = Session.DEFAULT
        self._authenticated = False

    def _with_access(self, session: Session, step: Callable[[], _T]) -> _T:
        """Run ``step`` in ``session``, authenticated. When the BMS answers that the session
        or the access is gone (it rebooted on its own, or S3 ran out), enter the session,
        authenticate again with the credentials given before and repeat ``step`` once: a
        refused request changed nothing on the BMS."""
        self._ensure_access(session)
        try:
            return step()
        except _ACCESS_LOST as exc:
            if self._credentials is None:
                raise
            self._forget_access(f"it no longer grants the session ({exc.code})")
        self._ensure_access(session)
        return step()

    # ------------------------------------------------------------------ update steps

    @property
    def staged_component(self) -> Component | None:
        """The app component of the header last staged with :meth:`prepare`."""
        return self._staged

    @session_step("stage release header", "prepare_s")
    def prepare(
        self, header: bytes, *, channel: Channel = "wired", downgrade_authorised: bool = False
    ) -> TransferState:
        flags = staging_flags(channel, downgrade_authorised=downgrade_authorised)
        result = self._with_access(
            Session.PROGRAMMING,
            lambda: self.routine(
                ROUTINE.STAGE_RELEASE_HEADER,
                bytes([flags]) + header,
                what="stage release header",
                step_timeout_s=self.config.verify_timeout_s,
            ),
        )
        if not result.ok:
            raise DeviceHeaderRejectedError(
                f"BMS {self.address} refused the release: {result.code} {result.message}"
            )
        self._staged = _app_component(header)
        return self._decode("transfer state", lambda: decode_transfer_state(result.record))

    @session_step("erase", "erase_s")
    def erase(self) -> None:
        result = self._with_access(
            Session.PROGRAMMING,
            lambda: self.routine(
                ROUTINE.ERASE_MEMORY,
                what="erase inactive bank",
                step_timeout_s=self.config.erase_timeout_s,
            ),
        )
        if not result.ok:
            from bmsfw.protocol.errors import UdsGeneralProgrammingFailureError

            raise UdsGeneralProgrammingFailureError(f"erase failed: {result.code} {result.message}")

    def write(
        self, image: bytes, *, start_offset: int = 0, encoded: bool | None = None
    ) -> Iterator[int]:
        """Transfer ``image[start_offset:]``; yields the offset reached after each block.

        ``image`` is what goes on the wire: the decoded image (DFI 0x00, resumable
        at any byte), or the staged component's *stored* bytes as the package holds
        them (compressed, delta patch, ciphertext), announced in RequestDownload's
        dataFormatIdentifier (:func:`transfer_dfi`); an encoded stream always starts
        at 0 on an erased bank. ``encoded=None`` decides from the staged manifest: a
        component stored encoded and ``len(image) == stored_size`` means stored bytes.
        """
        total = len(image)
        if not 0 <= start_offset < total:
            raise ValueError(f"start_offset {start_offset} outside image of {total} bytes")
        component = self._staged
        if encoded is None:
            encoded = (
                component is not None and is_encoded(component) and total == component.stored_size
            )
        if encoded:
            if component is None or not is_encoded(component):
                raise ValueError("encoded=True needs a staged release stored encoded (prepare)")
            if start_offset != 0:
                raise ValueError("an encoded transfer cannot resume: it starts at byte 0")
            dfi = transfer_dfi(component)
        else:
            dfi = 0x00
        size = total - start_offset
        # ALFID 0x44: 4-byte size, 4-byte address
        request = bytes([dfi, 0x44]) + struct.pack(">II", start_offset, size)
        data = self._with_access(
            Session.PROGRAMMING,
            lambda: self.request(0x34, request, what=f"request download (DFI 0x{dfi:02X})"),
        )
        self.last_dfi = dfi
        if len(data) < 2:
            raise UdsInvalidResponseError("request download: short response")
        n = data[0] >> 4
        max_block = int.from_bytes(data[1 : 1 + n], "big")
        if max_block < 3:
            raise UdsInvalidResponseError(f"request download: maxNumberOfBlockLength {max_block}")
        # SID and counter count too; after an interruption blocks get smaller, since a
        # lossy link loses long ISO-TP messages far more often than short ones
        chunk = min(max_block, self.config.max_block_length) - 2
        if self._chunk_limit is not None:
            chunk = min(chunk, self._chunk_limit)
        offset = start_offset
        counter = 1
        while offset < total:
            block = image[offset : offset + chunk]
            self._send_block(counter, block, offset, total)
            offset += len(block)
            counter = (counter + 1) & 0xFF
            yield offset
        self.request(0x37, what="request transfer exit")

    def _send_block(self, counter: int, block: bytes, offset: int, total: int) -> None:
        payload = bytes([counter]) + block
        what = f"transfer block 0x{counter:02X} at {offset}"
        for attempt in range(self.config.block_retries + 1):
            try:
                echo = self.request(0x36, payload, what=what)
                if echo[:1] == bytes([(counter - 1) & 0xFF]):
                    # the previous block timed out, was sent again, and the BMS answered
                    # both copies: this is the second answer to it; ours comes next
                    log.info("%s: late answer to block 0x%02X; reading on", what, echo[0])
                    echo = self._next_answer(0x36, what)
            except UdsTimeoutError:
                if attempt < self.config.block_retries:
                    self.blocks_resent += 1
                    log.info("block 0x%02X at %d timed out; sending it again", counter, offset)
                    continue
                self._chunk_limit = max(self.config.min_block_data, len(block) // 2)
                raise UdsTransferInterruptedError(
                    f"transfer to BMS {self.address} stopped at byte {offset} of {total}: "
                    f"block 0x{counter:02X} got no answer after {attempt + 1} tries",
                    offset=offset,
                    total=total,
                ) from None
            if echo[:1] != bytes([counter]):
                raise UdsInvalidResponseError(
                    f"block counter echo {echo[:1].hex()} != {counter:02x}"
                )
            return

    def _next_answer(self, sid: int, what: str) -> bytes:
        """The next answer to ``sid`` without sending anything (after a late one).

        Reads through the client's connection, which drops answers to other services;
        waits P2 (P2* after each 'response pending', at most ``max_response_pending``).
        Nothing in time is a timeout, which the caller retries like any lost answer.
        """
        timeout = self._p2_s
        with self._lock:
            for _ in range(self.config.max_response_pending + 1):
                frame = bytes(self._client.conn.wait_frame(timeout=timeout) or b"")
                if not frame:
                    raise UdsTimeoutError(f"{what}: no answer from BMS {self.address}")
                if frame[:1] == bytes([sid + 0x40]):
                    return frame[1:]
                if len(frame) < 3 or frame[2] != 0x78:
                    raise uds_error_for_nrc(sid, frame[2] if len(frame) > 2 else 0, what)
                timeout = self._p2_star_s
        raise UdsResponsePendingLimitError(
            f"{what}: BMS {self.address} answered 'response pending' "
            f"{self.config.max_response_pending} times without a final answer"
        )

    @session_step("verify", "verify_s")
    def verify(self) -> None:
        result = self._with_access(
            Session.PROGRAMMING,
            lambda: self.routine(
                ROUTINE.CHECK_PROGRAMMING_DEPENDENCIES,
                what="check programming dependencies",
                step_timeout_s=self.config.verify_timeout_s,
            ),
        )
        if not result.ok:
            raise DeviceVerifyFailedError(f"BMS {self.address}: {result.code} {result.message}")

    @session_step("activate", "activate_s")
    def activate(self) -> None:
        result = self._with_access(
            Session.PROGRAMMING, lambda: self.routine(ROUTINE.ACTIVATE, what="activate")
        )
        if not result.ok:
            raise DeviceActivateFailedError(f"BMS {self.address}: {result.code} {result.message}")

    @session_step("reset", "reset_s")
    def reset(self) -> None:
        self.request(0x11, bytes([HARD_RESET]), what="ECU reset")
        # the node reboots into the default session with security locked
        self._forget_access("ECU reset")

    def wait_boot(self, timeout_s: float) -> BootStatus:
        """Poll the boot status until the application runs (self-test finished)."""
        with self.steps.step("wait for boot", timeout_s):
            return wait_for_application(
                self.read_boot_status,
                timeout_s=timeout_s,
                poll_s=self.config.boot_poll_interval_s,
                silent=(BmsfwError,),  # no answer while it reboots, as real hardware
                stop=(StepDeadlineError,),  # each poll waits at most until the boot deadline
                who=f"BMS {self.address}",
            )

    @session_step("self-test", "self_test_s")
    def run_self_test(self) -> SelfTestResult:
        data = self.request(
            0x31,
            b"\x01" + struct.pack(">H", ROUTINE.SELF_TEST),
            what="self-test",
            step_timeout_s=self.config.verify_timeout_s,
        )
        # this routine's status record is the self-test record itself (DID 0x0130 layout)
        return self._decode("self-test", lambda: decode_self_test(data[3:]))

    @session_step("confirm", "confirm_s")
    def confirm(self) -> None:
        """Make the running test image permanent; a refusal (status != 00) raises E210."""
        result = self._with_access(
            Session.EXTENDED, lambda: self.routine(ROUTINE.CONFIRM, what="confirm image")
        )
        if not result.ok:
            from bmsfw.protocol.device_errors import NotConfirmableError

            raise NotConfirmableError(
                f"BMS {self.address} refused the confirm: {result.code} {result.message}".strip()
            )

    @session_step("rollback", "rollback_s")
    def rollback(self) -> None:
        """Return to the confirmed image; a refusal (status != 00) raises E211."""
        result = self._with_access(
            Session.EXTENDED, lambda: self.routine(ROUTINE.ROLLBACK, what="rollback")
        )
        if not result.ok:
            from bmsfw.protocol.device_errors import RollbackBlockedError

            raise RollbackBlockedError(
                f"BMS {self.address} refused the rollback: {result.code} {result.message}".strip()
            )
        # the BMS reboots into the confirmed image: default session, locked
        self._forget_access("rollback (the BMS reboots)")

    @session_step("check preconditions", "read_s")
    def check_preconditions(self) -> RoutineResult:
        return self.routine(ROUTINE.CHECK_PRECONDITIONS, what="check preconditions")

    def close(self) -> None:
        self._stop.set()
        self._keepalive.join(timeout=1)
        try:
            self._client.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> UdsSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
