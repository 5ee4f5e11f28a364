"""The UDS server of the virtual BMS (ISO 14229-1 over ISO-TP), on its device interface.

One :class:`UdsServer` per BMS node, calling the BMS through
:class:`~bmsfw.sim.interface.BmsDevice` only. :meth:`UdsServer.handle` is the protocol core:
request bytes in, response bytes out (or ``None`` when the positive response is
suppressed), all session/security/transfer state in the server object.
:class:`UdsNodeRunner` puts it on ISO-TP: it reads requests from a physical and a
functional stack, runs each on a worker thread and, when the device takes longer
than ``pending_after_s`` (erase, verify with RealClock flash timing), sends
``0x7F SID 0x78`` (responsePending) before P2 runs out and again before P2* runs
out, until the final response is ready.

docs/uds.md documents every identifier, routine and negative response used here.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from bmsfw.errors import BmsfwError, PackageError
from bmsfw.link import NodeAddress
from bmsfw.package import Component
from bmsfw.protocol.device_errors import (
    ConfigChecksumError,
    ConfigSchemaError,
    ConfigValueError,
    EraseNeededError,
    FlashProgramError,
    NoStagedUpdateError,
    NotVerifiedError,
    PowerCutError,
    VerifyFailedError,
    WriteOutOfRangeError,
)
from bmsfw.protocol.session import DeviceIdentity, TransferState, decode_staging_flags
from bmsfw.protocol.uds._auth import (
    TesterCertificateRejected,
    verify_proof,
    verify_tester_chain,
)
from bmsfw.protocol.uds._codec import (
    AUTH_CERT_VERIFIED_OWNERSHIP_NEEDED,
    AUTH_CONFIGURATION_APCE,
    AUTH_DEAUTHENTICATED,
    AUTH_OWNERSHIP_VERIFIED,
    DID,
    DTC_STATUS_MASK,
    NRC,
    ROUTINE,
    ROUTINE_FAILED,
    ROUTINE_OK,
    SECURITY_LEVEL_PROGRAMMING,
    SID,
    TELEMETRY_DIDS,
    Session,
    SessionTiming,
    decode_config,
    encode_boot_status,
    encode_config,
    encode_flash_layout,
    encode_image_key_hashes,
    encode_self_test,
    encode_telemetry_did,
    encode_transfer_state,
    is_encoded,
    seed_key,
    transfer_dfi,
)
from bmsfw.sim._stream_decode import EncodedTransfer
from bmsfw.sim.interface import BmsDevice
from bmsfw.sim.records import DtcRecord

__all__ = [
    "DEV_SEED_KEY_SECRET",
    "UdsNodeRunner",
    "UdsServer",
    "UdsServerConfig",
    "dtc_number",
    "nrc_for",
]

log = logging.getLogger(__name__)

#: The development seed/key secret of virtual BMS nodes (documented; products set their own).
DEV_SEED_KEY_SECRET = b"bmsfw-virtual-bms-seed-key"

_SPR = 0x80  # suppressPosRspMsgIndicationBit


class _Negative(Exception):  # noqa: N818 - internal control flow, becomes a 0x7F response
    def __init__(self, nrc: NRC, reason: str = "") -> None:
        self.nrc = nrc
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class UdsServerConfig:
    """Timing and security policy of one node's UDS server."""

    timing: SessionTiming = field(default_factory=SessionTiming)  # P2 50 ms, P2* 5 s
    s3_s: float = 5.0  # non-default session falls back after this much silence
    pending_after_s: float = 0.020  # first 0x78 well before P2 (50 ms) runs out
    pending_interval_s: float = 2.0  # then again well before P2* (5 s) runs out
    max_block_length: int = 4095  # maxNumberOfBlockLength: the whole 0x36 request
    seed_key_secret: bytes = DEV_SEED_KEY_SECRET
    max_key_attempts: int = 3
    lockout_s: float = 10.0
    functional_id: int = 0x7DF

    def __post_init__(self) -> None:
        if not 3 <= self.max_block_length <= 0xFFFF:
            raise ValueError(f"max_block_length must be 3..65535, got {self.max_block_length}")
        if self.pending_after_s >= self.timing.p2_s:
            raise ValueError("pending_after_s must be shorter than P2")


@dataclass
class _Download:
    start: int
    end: int
    next_offset: int
    expected_counter: int = 1
    last_block: tuple[int, int, int] | None = None  # (counter, offset, length)


class UdsServer:
    """The UDS protocol core of one node: session, security, transfer state; no I/O."""

    def __init__(
        self,
        device: BmsDevice,
        address: NodeAddress,
        config: UdsServerConfig | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.address = address
        self.config = config or UdsServerConfig()
        self._now = monotonic
        self.session = Session.DEFAULT
        self.security_unlocked = False
        self.authenticated = False
        self._seed: bytes | None = None
        self._failed_keys = 0
        self._locked_until = 0.0
        self._challenge: bytes | None = None
        self._tester_key: Any = None
        self._download: _Download | None = None
        self._encoded: EncodedTransfer | None = None  # the decoder of an encoded download
        self._exited = False
        self._last_request = self._now()
        self._boot_epoch: object = None
        self.after_response: Callable[[], None] | None = None  # e.g. ECUReset

    # ------------------------------------------------------------------ state

    @property
    def access_granted(self) -> bool:
        return self.security_unlocked or self.authenticated

    def _drop_to_default(self, why: str) -> None:
        if self.session != Session.DEFAULT or self.access_granted:
            log.info("node %s: back to default session (%s)", self.address.node, why)
        self.session = Session.DEFAULT
        self.security_unlocked = False
        self.authenticated = False
        self._seed = None
        self._challenge = None
        self._end_download()

    def _end_download(self) -> None:
        # an encoded stream cannot be resumed mid-way (decoder state): a new
        # RequestDownload of it starts again at byte 0 of an erased bank
        self._download = None
        self._encoded = None

    def check_s3(self) -> None:
        """Fall back to the default session after S3 without requests, or after a reboot."""
        if self.session != Session.DEFAULT and self._now() - self._last_request > self.config.s3_s:
            self._drop_to_default("S3 timeout")
        epoch = None if self.device.dead else self.device.boot_epoch
        if epoch != self._boot_epoch:
            # the MCU reset (ECUReset, rollback, a revert, a power cycle): a rebooted
            # ECU starts in the default session, locked
            if self._boot_epoch is not None:
                self._drop_to_default("the BMS rebooted")
            self._boot_epoch = epoch

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: bytes, *, functional: bool = False) -> bytes | None:
        """The response to one request; ``None`` when no response is to be sent."""
        self.check_s3()
        self._last_request = self._now()
        if not request:
            return None
        sid = request[0]
        handler = _HANDLERS.get(sid)
        try:
            if handler is None:
                raise _Negative(NRC.SERVICE_NOT_SUPPORTED, f"service 0x{sid:02X}")
            response = handler(self, request)
        except PowerCutError:
            log.warning("node %s lost power: silent from now on", self.address.node)
            return None
        except _Negative as neg:
            log.info(
                "node %s: NRC 0x%02X for 0x%02X: %s", self.address.node, neg.nrc, sid, neg.reason
            )
            if functional and neg.nrc in (0x11, 0x12, 0x31, 0x7E, 0x7F):
                return None  # ISO 14229-1 7.5: no such NRC on functional requests
            return bytes([SID.NEGATIVE_RESPONSE, sid, neg.nrc])
        self._last_request = self._now()
        return response

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _subfunction(request: bytes, min_len: int = 2) -> tuple[int, bool]:
        if len(request) < min_len:
            raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT, "request too short")
        return request[1] & 0x7F, bool(request[1] & _SPR)

    def _require_programming(self, what: str) -> None:
        if self.session != Session.PROGRAMMING:
            raise _Negative(
                NRC.SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION, f"{what} needs programming session"
            )

    def _require_access(self, what: str) -> None:
        if not self.access_granted:
            raise _Negative(NRC.SECURITY_ACCESS_DENIED, f"{what} needs an authenticated tester")

    def _device_call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run a device API call, translating its refusals into NRCs."""
        try:
            return fn()
        except PowerCutError:
            raise
        except BmsfwError as exc:
            raise _Negative(nrc_for(exc), f"{what}: {exc}") from None

    # ------------------------------------------------------------------ 0x10 / 0x3E / 0x11

    def _session_control(self, request: bytes) -> bytes | None:
        sub, spr = self._subfunction(request)
        if len(request) != 2:
            raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT)
        try:
            target = Session(sub)
        except ValueError:
            raise _Negative(NRC.SUBFUNCTION_NOT_SUPPORTED, f"session 0x{sub:02X}") from None
        if target == Session.PROGRAMMING and not self.device.responsive():
            raise _Negative(NRC.CONDITIONS_NOT_CORRECT, "device not running")
        if target != self.session:
            # ISO 14229-1 9.2: any session change re-locks security
            self._drop_to_default("session change")
        self.session = target
        if spr:
            return None
        return bytes([0x50, sub]) + self.config.timing.encode()

    def _tester_present(self, request: bytes) -> bytes | None:
        sub, spr = self._subfunction(request)
        if sub != 0 or len(request) != 2:
            raise _Negative(
                NRC.SUBFUNCTION_NOT_SUPPORTED if sub else NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT
            )
        return None if spr else b"\x7e\x00"

    def _ecu_reset(self, request: bytes) -> bytes | None:
        sub, spr = self._subfunction(request)
        if sub not in (0x01, 0x03):  # hardReset, softReset: both reboot the application
            raise _Negative(NRC.SUBFUNCTION_NOT_SUPPORTED)
        if self._download is not None:
            raise _Negative(NRC.CONDITIONS_NOT_CORRECT, "download in progress")
        self._drop_to_default("ECU reset")
        self.after_response = self.device.reset
        return None if spr else bytes([0x51, sub])

    # ------------------------------------------------------------------ 0x27

    def _security_access(self, request: bytes) -> bytes | None:
        sub, spr = self._subfunction(request)
        if self.session == Session.DEFAULT:
            raise _Negative(NRC.SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION)
        if sub == SECURITY_LEVEL_PROGRAMMING:
            if self._now() < self._locked_until:
                raise _Negative(NRC.REQUIRED_TIME_DELAY_NOT_EXPIRED, "lock-out running")
            if self.security_unlocked:
                self._seed = None
                return None if spr else bytes([0x67, sub]) + bytes(16)  # zero seed: unlocked
            self._seed = os.urandom(16)
            return None if spr else bytes([0x67, sub]) + self._seed
        if sub == SECURITY_LEVEL_PROGRAMMING + 1:
            if self._seed is None:
                raise _Negative(NRC.REQUEST_SEQUENCE_ERROR, "sendKey without requestSeed")
            key = request[2:]
            expected = seed_key(self._seed, self.config.seed_key_secret)
            self._seed = None
            if key != expected:
                self._failed_keys += 1
                if self._failed_keys >= self.config.max_key_attempts:
                    self._failed_keys = 0
                    self._locked_until = self._now() + self.config.lockout_s
                    raise _Negative(NRC.EXCEEDED_NUMBER_OF_ATTEMPTS, "lock-out started")
                raise _Negative(NRC.INVALID_KEY)
            self._failed_keys = 0
            self.security_unlocked = True
            return None if spr else bytes([0x67, sub])
        raise _Negative(NRC.SUBFUNCTION_NOT_SUPPORTED, f"security level 0x{sub:02X}")

    # ------------------------------------------------------------------ 0x29

    def _authentication(self, request: bytes) -> bytes | None:
        sub, spr = self._subfunction(request)
        body = request[2:]
        if sub == 0x00:  # deAuthenticate
            self.authenticated = False
            self._challenge = None
            return None if spr else bytes([0x69, 0x00, AUTH_DEAUTHENTICATED])
        if sub == 0x08:  # authenticationConfiguration: APCE
            return None if spr else bytes([0x69, 0x08, AUTH_CONFIGURATION_APCE])
        if sub == 0x01:  # verifyCertificateUnidirectional
            if len(body) < 5:
                raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT)
            cert_len = struct.unpack(">H", body[1:3])[0]
            cert = body[3 : 3 + cert_len]
            if len(cert) != cert_len or len(body) < 5 + cert_len:
                raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT, "certificate length")
            try:
                tester = verify_tester_chain(
                    cert,
                    root_key_hash=self.device.root_key_hash(),
                    now=self.device.now(),
                    revocation_lists_der=(),  # tester revocation comes with release trust data
                )
            except TesterCertificateRejected as exc:
                raise _Negative(exc.nrc, exc.reason) from None
            self.authenticated = False
            self._tester_key = tester.public_key
            self._challenge = os.urandom(32)
            log.info("node %s: tester certificate %s accepted", self.address.node, tester.subject)
            return bytes([0x69, 0x01, AUTH_CERT_VERIFIED_OWNERSHIP_NEEDED]) + (
                struct.pack(">H", 32) + self._challenge + struct.pack(">H", 0)
            )
        if sub == 0x03:  # proofOfOwnership
            if self._challenge is None:
                raise _Negative(NRC.REQUEST_SEQUENCE_ERROR, "no certificate verified")
            if len(body) < 2:
                raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT)
            proof_len = struct.unpack(">H", body[:2])[0]
            proof = body[2 : 2 + proof_len]
            challenge, self._challenge = self._challenge, None
            if len(proof) != proof_len or not verify_proof(self._tester_key, challenge, proof):
                raise _Negative(NRC.OWNERSHIP_VERIFICATION_FAILED, "proof does not verify")
            self.authenticated = True
            return None if spr else bytes([0x69, 0x03, AUTH_OWNERSHIP_VERIFIED, 0x00, 0x00])
        raise _Negative(NRC.SUBFUNCTION_NOT_SUPPORTED, f"authentication task 0x{sub:02X}")

    # ------------------------------------------------------------------ 0x22 / 0x2E

    def _read_did(self, did: int) -> bytes:
        dev = self.device
        if did == DID.ACTIVE_SESSION:
            return bytes([self.session])
        if did in _IDENTITY_DIDS:
            if not dev.responsive():
                # booting / self-testing: no application runs whose identity could be read
                raise _Negative(NRC.CONDITIONS_NOT_CORRECT, f"DID 0x{did:04X} while booting")
            ident = self._device_call("identity", dev.identity)
            text = _identity_string(ident, did)
            return text.encode()
        if did == DID.SECURITY_COUNTER:
            ident = self._device_call("counter", dev.identity)
            return struct.pack(">I", ident.security_counter)
        if did == DID.ACTIVE_BANK:
            return str(self._device_call("bank", dev.identity).active_bank).encode()
        if did == DID.ACTIVE_IMAGE_SHA256:
            return bytes(self._device_call("image digest", dev.image_digest))
        if did == DID.IMAGE_KEY_HASHES:
            keys = self._device_call("image keys", dev.identity).image_key_hashes
            return encode_image_key_hashes(keys)
        if did == DID.FLASH_LAYOUT:
            layout = self._device_call("flash layout", dev.identity).flash_layout
            if layout is None:
                raise _Negative(NRC.REQUEST_OUT_OF_RANGE, "flash layout not reported")
            return encode_flash_layout(layout)
        if did in TELEMETRY_DIDS:
            telemetry = self._device_call("telemetry", dev.telemetry)
            return encode_telemetry_did(did, telemetry)
        if did == DID.BOOT_STATUS:
            return encode_boot_status(self._device_call("boot status", dev.boot_status))
        if did == DID.SELF_TEST_RESULT:
            return encode_self_test(self._device_call("self-test", dev.self_test))
        if did == DID.TRANSFER_STATE:
            state = self._device_call("transfer state", lambda: _reported_state(dev))
            return encode_transfer_state(state)
        if did == DID.CONFIGURATION:
            return encode_config(self._device_call("config", dev.config_snapshot))
        if did == DID.NODE_ADDRESS:
            address = self.address
            return struct.pack(">BII", address.node, address.request_id, address.response_id)
        raise _Negative(NRC.REQUEST_OUT_OF_RANGE, f"DID 0x{did:04X}")

    def _read_data(self, request: bytes) -> bytes:
        ids = request[1:]
        if not ids or len(ids) % 2:
            raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT)
        out = bytearray([0x62])
        for (did,) in struct.iter_unpack(">H", ids):
            out += struct.pack(">H", did) + self._read_did(did)
        return bytes(out)

    def _write_data(self, request: bytes) -> bytes:
        if len(request) < 4:
            raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT)
        did = struct.unpack(">H", request[1:3])[0]
        if did != DID.CONFIGURATION:
            raise _Negative(NRC.REQUEST_OUT_OF_RANGE, f"DID 0x{did:04X} is not writable")
        if self.session == Session.DEFAULT:
            raise _Negative(
                NRC.REQUEST_OUT_OF_RANGE, "configuration is writable in extended/programming"
            )
        self._require_access("write configuration")
        try:
            snapshot = decode_config(request[3:])
        except ValueError as exc:
            raise _Negative(NRC.REQUEST_OUT_OF_RANGE, str(exc)) from None
        self._device_call("write config", lambda: self.device.restore_snapshot(snapshot))
        return bytes([0x6E]) + request[1:3]

    # ------------------------------------------------------------------ 0x31

    def _routine(self, request: bytes) -> bytes | None:
        sub, spr = self._subfunction(request, 4)
        rid = struct.unpack(">H", request[2:4])[0]
        option = request[4:]
        if sub != 0x01:
            raise _Negative(NRC.SUBFUNCTION_NOT_SUPPORTED, "only startRoutine")
        try:
            routine = ROUTINE(rid)
        except ValueError:
            raise _Negative(NRC.REQUEST_OUT_OF_RANGE, f"routine 0x{rid:04X}") from None
        dev = self.device
        if routine == ROUTINE.CHECK_PRECONDITIONS:
            problems = self._device_call("preconditions", lambda: _precondition_problems(dev))
            status = _status_record(ROUTINE_FAILED if problems else ROUTINE_OK, "; ".join(problems))
        elif routine == ROUTINE.SELF_TEST:
            # the self-test runs at every boot; the routine reports that record
            status = encode_self_test(self._device_call("self-test", dev.self_test))
        else:
            if self.session == Session.DEFAULT:
                raise _Negative(NRC.SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION, routine.name)
            self._require_access(routine.name)
            status = self._programming_routine(routine, option)
        response = bytes([0x71, 0x01]) + request[2:4] + status
        return None if spr else response

    def _programming_routine(self, routine: ROUTINE, option: bytes) -> bytes:
        dev = self.device
        if routine in (ROUTINE.CONFIRM, ROUTINE.ROLLBACK):
            fn = dev.confirm if routine == ROUTINE.CONFIRM else dev.rollback
            self._device_call(routine.name.lower(), fn)
            return bytes([ROUTINE_OK])
        if self.session != Session.PROGRAMMING:
            raise _Negative(
                NRC.SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION, f"{routine.name} needs programming"
            )
        self._end_download()
        if routine == ROUTINE.STAGE_RELEASE_HEADER:
            if len(option) < 2:
                raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT, "flags byte + header")
            try:
                channel, downgrade_authorised = decode_staging_flags(option[0])
            except ValueError as exc:
                raise _Negative(NRC.REQUEST_OUT_OF_RANGE, str(exc)) from None
            try:
                # a delta for another base, or an image for a key this BMS lacks, is
                # refused here: before the erase, before any byte is written
                dev.check_release(option[1:])
                dev.begin_update(
                    option[1:], channel=channel, downgrade_authorised=downgrade_authorised
                )
                state = _reported_state(dev)
            except PackageError as exc:  # content refused: report it, the routine ran
                return _status_record(ROUTINE_FAILED, exc.code, exc.message)
            except PowerCutError:
                raise  # a BMS without power answers nothing
            except BmsfwError as exc:
                raise _Negative(nrc_for(exc), str(exc)) from None
            return bytes([ROUTINE_OK]) + encode_transfer_state(state)
        if routine == ROUTINE.ERASE_MEMORY:
            self._device_call("erase", dev.erase_inactive)
            return bytes([ROUTINE_OK])
        if routine == ROUTINE.CHECK_PROGRAMMING_DEPENDENCIES:
            try:
                dev.verify_inactive()
            except PackageError as exc:
                return _status_record(ROUTINE_FAILED, exc.code, exc.message)
            except PowerCutError:
                raise
            except BmsfwError as exc:
                if isinstance(exc, VerifyFailedError):
                    return _status_record(ROUTINE_FAILED, exc.code, exc.message)
                raise _Negative(nrc_for(exc), str(exc)) from None
            return bytes([ROUTINE_OK])
        if routine == ROUTINE.ACTIVATE:
            self._device_call("activate", dev.activate)
            return bytes([ROUTINE_OK])
        raise _Negative(NRC.REQUEST_OUT_OF_RANGE, routine.name)

    # ------------------------------------------------------------------ 0x34 / 0x36 / 0x37

    def _request_download(self, request: bytes) -> bytes:
        self._require_programming("RequestDownload")
        self._require_access("RequestDownload")
        if len(request) < 3:
            raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT)
        dfi, alfid = request[1], request[2]
        size_len, addr_len = alfid >> 4, alfid & 0x0F
        if (
            not (1 <= size_len <= 4 and 1 <= addr_len <= 4)
            or len(request) != 3 + size_len + addr_len
        ):
            raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT, f"ALFID 0x{alfid:02X}")
        address = int.from_bytes(request[3 : 3 + addr_len], "big")
        size = int.from_bytes(request[3 + addr_len :], "big")
        component = self._device_call("staged release", self.device.staged_component)
        if component is None:
            raise _Negative(NRC.UPLOAD_DOWNLOAD_NOT_ACCEPTED, "no release header staged")
        if dfi != 0x00:
            self._start_encoded_download(component, dfi, address, size)
            return b"\x74\x20" + struct.pack(">H", self.config.max_block_length)
        if component.encryption != "none":
            raise _Negative(
                NRC.REQUEST_OUT_OF_RANGE,
                f"the staged image is encrypted: send its stored bytes with "
                f"dataFormatIdentifier 0x{transfer_dfi(component):02X}",
            )
        # DFI 0x00: the decoded image (raw releases, or the image a compressed/delta
        # release decodes to), written where it belongs; resumable to the byte
        state = self._device_call(
            "transfer state", lambda: self.device.transfer_status().to_session()
        )
        if size == 0 or address + size > state.total_size:
            raise _Negative(
                NRC.REQUEST_OUT_OF_RANGE, f"{address}+{size} exceeds image size {state.total_size}"
            )
        if not state.erased and state.contiguous_bytes == 0:
            raise _Negative(NRC.UPLOAD_DOWNLOAD_NOT_ACCEPTED, "inactive bank not erased")
        if address > state.contiguous_bytes:
            raise _Negative(
                NRC.UPLOAD_DOWNLOAD_NOT_ACCEPTED,
                f"resume at {address} leaves a gap: device holds {state.contiguous_bytes}",
            )
        self._end_download()
        self._download = _Download(start=address, end=address + size, next_offset=address)
        self._exited = False
        return b"\x74\x20" + struct.pack(">H", self.config.max_block_length)

    def _start_encoded_download(
        self, component: Component, dfi: int, address: int, size: int
    ) -> None:
        expected = transfer_dfi(component) if is_encoded(component) else 0x00
        if dfi != expected:
            raise _Negative(
                NRC.REQUEST_OUT_OF_RANGE,
                f"dataFormatIdentifier 0x{dfi:02X} does not match the staged release "
                f"(0x{expected:02X}: encoding {component.encoding}, "
                f"delta {component.is_delta}, encryption {component.encryption})",
            )
        if address != 0 or size != component.stored_size:
            raise _Negative(
                NRC.REQUEST_OUT_OF_RANGE,
                f"an encoded transfer is the whole stored component: address 0, size "
                f"{component.stored_size} (got {address}+{size}); it restarts from 0",
            )
        if not self._device_call("bank state", self.device.bank_blank):
            raise _Negative(
                NRC.UPLOAD_DOWNLOAD_NOT_ACCEPTED,
                "an encoded transfer starts on an erased bank: erase it first (0xFF00)",
            )
        self._end_download()
        self._encoded = self._device_call("encoded transfer", self.device.begin_encoded)
        self._download = _Download(start=0, end=size, next_offset=0)
        self._exited = False

    def _transfer_data(self, request: bytes) -> bytes:
        self._require_programming("TransferData")
        dl = self._download
        if dl is None:
            raise _Negative(NRC.REQUEST_SEQUENCE_ERROR, "no RequestDownload active")
        if len(request) < 3 or len(request) > self.config.max_block_length:
            raise _Negative(
                NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT, f"block of {len(request)} bytes"
            )
        counter, data = request[1], request[2:]
        if counter == dl.expected_counter:
            offset = dl.next_offset
            if offset + len(data) > dl.end:
                raise _Negative(NRC.TRANSFER_DATA_SUSPENDED, "block runs past the announced size")
            if self._encoded is not None:
                self._feed_encoded(data)
            else:
                self._device_call("write", lambda: self.device.write_inactive(offset, data))
            dl.last_block = (counter, offset, len(data))
            dl.next_offset = offset + len(data)
            dl.expected_counter = (counter + 1) & 0xFF  # wraps 0xFF -> 0x00
        elif dl.last_block is not None and counter == dl.last_block[0]:
            # the tester did not get our response and repeats the block: accept it again
            _, offset, length = dl.last_block
            if len(data) != length:
                raise _Negative(
                    NRC.WRONG_BLOCK_SEQUENCE_COUNTER, "repeated block differs in length"
                )
            if self._encoded is None:
                self._device_call("write", lambda: self.device.write_inactive(offset, data))
            # an encoded block was already fed to the decoder: feeding it twice would
            # corrupt the stream, so the repeat is only acknowledged
        else:
            raise _Negative(
                NRC.WRONG_BLOCK_SEQUENCE_COUNTER,
                f"got 0x{counter:02X}, expected 0x{dl.expected_counter:02X}",
            )
        return bytes([0x76, counter])

    def _feed_encoded(self, data: bytes) -> None:
        encoded = self._encoded
        assert encoded is not None
        try:
            encoded.feed(data)
        except PowerCutError:
            raise
        except PackageError as exc:
            # the stream is broken (corrupt, too long): the decoder cannot go on
            self._end_download()
            raise _Negative(NRC.GENERAL_PROGRAMMING_FAILURE, f"{exc.code}: {exc.message}") from None
        except BmsfwError as exc:
            self._end_download()
            raise _Negative(nrc_for(exc), f"encoded write: {exc}") from None

    def _transfer_exit(self, request: bytes) -> bytes:
        self._require_programming("RequestTransferExit")
        dl = self._download
        if dl is None:
            if self._exited:
                return b"\x77"  # repeated exit: the tester missed our first answer
            raise _Negative(NRC.REQUEST_SEQUENCE_ERROR, "no transfer active")
        if dl.next_offset != dl.end:
            raise _Negative(NRC.REQUEST_SEQUENCE_ERROR, f"only {dl.next_offset} of {dl.end} bytes")
        encoded = self._encoded
        self._end_download()
        if encoded is not None:
            # sizes, digests, and a delta applied active -> inactive; refused before
            # anything can be verified or activated (the tester starts again from 0)
            try:
                encoded.finish()
            except PowerCutError:
                raise
            except PackageError as exc:
                raise _Negative(
                    NRC.GENERAL_PROGRAMMING_FAILURE, f"{exc.code}: {exc.message}"
                ) from None
            except BmsfwError as exc:
                raise _Negative(nrc_for(exc), f"finish: {exc}") from None
        self._exited = True
        return b"\x77"

    # ------------------------------------------------------------------ 0x19 / 0x14

    def _read_dtc(self, request: bytes) -> bytes:
        sub, _ = self._subfunction(request)
        if sub not in (0x01, 0x02) or len(request) != 3:
            raise _Negative(
                NRC.SUBFUNCTION_NOT_SUPPORTED
                if sub not in (1, 2)
                else NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT
            )
        mask = request[2]
        dtcs = [
            (code, status)
            for code, status in self._device_call("dtc", lambda: _uds_dtcs(self.device.dtcs()))
            if status & mask
        ]
        if sub == 0x01:
            return bytes([0x59, 0x01, DTC_STATUS_MASK, 0x01]) + struct.pack(">H", len(dtcs))
        out = bytearray([0x59, 0x02, DTC_STATUS_MASK])
        for code, status in dtcs:
            out += code.to_bytes(3, "big") + bytes([status])
        return bytes(out)

    def _clear_dtc(self, request: bytes) -> bytes:
        if len(request) != 4:
            raise _Negative(NRC.INCORRECT_MESSAGE_LENGTH_OR_FORMAT)
        group = int.from_bytes(request[1:4], "big")
        if group != 0xFFFFFF:
            raise _Negative(NRC.REQUEST_OUT_OF_RANGE, "only group 0xFFFFFF (all)")
        self._device_call("clear dtc", self.device.clear_dtcs)
        return b"\x54"


def _status_record(status: int, *texts: str) -> bytes:
    out = bytearray([status])
    for text in texts:
        raw = text.encode()[:255]
        out += bytes([len(raw)]) + raw
    return bytes(out)


_IDENTITY_DIDS = frozenset(
    {
        DID.BOOT_SOFTWARE_ID,
        DID.SPARE_PART_NUMBER,
        DID.ECU_SOFTWARE_NUMBER,
        DID.SOFTWARE_VERSION,
        DID.SUPPLIER_ID,
        DID.SERIAL_NUMBER,
        DID.HARDWARE_NUMBER,
        DID.HARDWARE_VERSION,
        DID.SUPPLIER_SOFTWARE_VERSION,
        DID.SYSTEM_NAME,
    }
)

_HANDLERS: dict[int, Callable[[UdsServer, bytes], bytes | None]] = {
    SID.DIAGNOSTIC_SESSION_CONTROL: UdsServer._session_control,
    SID.TESTER_PRESENT: UdsServer._tester_present,
    SID.ECU_RESET: UdsServer._ecu_reset,
    SID.SECURITY_ACCESS: UdsServer._security_access,
    SID.AUTHENTICATION: UdsServer._authentication,
    SID.READ_DATA_BY_IDENTIFIER: UdsServer._read_data,
    SID.WRITE_DATA_BY_IDENTIFIER: UdsServer._write_data,
    SID.ROUTINE_CONTROL: UdsServer._routine,
    SID.REQUEST_DOWNLOAD: UdsServer._request_download,
    SID.TRANSFER_DATA: UdsServer._transfer_data,
    SID.REQUEST_TRANSFER_EXIT: UdsServer._transfer_exit,
    SID.READ_DTC_INFORMATION: UdsServer._read_dtc,
    SID.CLEAR_DIAGNOSTIC_INFORMATION: UdsServer._clear_dtc,
}


def dtc_number(code: str) -> int:
    """The 3-byte UDS DTC of an SAE J2012 code like ``"B1001"`` (failure type byte 0x00)."""
    letters = "PCBU"
    if len(code) != 5 or code[0] not in letters:
        raise ValueError(f"not an SAE J2012 DTC: {code!r}")
    first = (letters.index(code[0]) << 2) | int(code[1], 16)
    return ((first << 12) | int(code[2:], 16)) << 8


def _identity_string(ident: DeviceIdentity, did: int) -> str:
    """The text of a standard identification DID (docs/uds.md)."""
    return {
        DID.BOOT_SOFTWARE_ID: f"MCUboot-compatible {ident.bootloader_version}",
        DID.SPARE_PART_NUMBER: ident.model,
        DID.ECU_SOFTWARE_NUMBER: ident.app_version,
        DID.SOFTWARE_VERSION: ident.app_version,
        DID.SUPPLIER_ID: ident.vendor,
        DID.SERIAL_NUMBER: ident.serial,
        DID.HARDWARE_NUMBER: ident.model,
        DID.HARDWARE_VERSION: ident.hw_revision,
        DID.SUPPLIER_SOFTWARE_VERSION: ident.bootloader_version,
        DID.SYSTEM_NAME: f"{ident.vendor} {ident.model} BMS",
    }[DID(did)]


def _reported_state(device: BmsDevice) -> TransferState:
    """The transfer state a tester sees (DID 0x0140, stage routine).

    In image bytes, except for a delta or encrypted release, which can only be
    sent as its stored stream (the host has no base image / no key): then it
    counts that stream, which cannot resume mid-way: total = stored size, 0 bytes
    held, ``erased`` only while the bank is blank, so a tester erases and starts
    at 0. (A compressed release may be sent either way; a tester sending its
    stored bytes sees ``total_size`` differ from their length.)
    """
    raw = device.transfer_status().to_session()
    component = device.staged_component()
    if component is None or raw.total_size == 0:
        return raw
    if not component.is_delta and component.encryption == "none":
        return raw
    return TransferState(
        total_size=component.stored_size,
        contiguous_bytes=0,
        erased=raw.erased and device.bank_blank(),
        missing_ranges=((0, component.stored_size),),
    )


def _uds_dtcs(records: Iterable[DtcRecord]) -> list[tuple[int, int]]:
    out = []
    for record in records:
        try:
            number = dtc_number(record.code)
        except ValueError:
            continue
        # testFailed | confirmedDTC while active, confirmedDTC once it went away
        out.append((number, 0x09 if record.active else 0x08))
    return out


def _precondition_problems(device: BmsDevice) -> list[str]:
    if not device.responsive():
        return [f"BMS is {device.run_state}"]
    problems: list[str] = []
    if device.boot_status().image_state == "test":
        problems.append("a test image runs unconfirmed")
    problems.extend(f"protection fault {f}" for f in device.telemetry().faults)
    return problems


def nrc_for(exc: BmsfwError) -> NRC:
    """The negative response code for a device refusal (docs/uds.md, "Negative responses")."""
    if isinstance(exc, NoStagedUpdateError | NotVerifiedError | EraseNeededError):
        return NRC.REQUEST_SEQUENCE_ERROR
    if isinstance(exc, WriteOutOfRangeError | ConfigSchemaError | ConfigValueError):
        return NRC.REQUEST_OUT_OF_RANGE
    if isinstance(exc, ConfigChecksumError):
        return NRC.REQUEST_OUT_OF_RANGE
    if isinstance(exc, FlashProgramError | VerifyFailedError):
        return NRC.GENERAL_PROGRAMMING_FAILURE
    if isinstance(exc, PackageError):
        return NRC.REQUEST_OUT_OF_RANGE
    return NRC.CONDITIONS_NOT_CORRECT


class UdsNodeRunner:
    """Serves one node's :class:`UdsServer` on a physical and an optional functional stack."""

    def __init__(self, server: UdsServer, physical: Any, functional: Any | None = None) -> None:
        self.server = server
        self.physical = physical
        self.functional = functional
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one request at a time per node, like an ECU
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"uds-node{server.address.node}")
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for stack, functional in ((self.physical, False), (self.functional, True)):
            if stack is None:
                continue
            thread = threading.Thread(
                target=self._loop,
                args=(stack, functional),
                name=f"uds-node{self.server.address.node}-{'func' if functional else 'phys'}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _loop(self, stack: Any, functional: bool) -> None:
        while not self._stop.is_set():
            request = stack.recv(block=True, timeout=0.1)
            if request is None:
                with self._lock:
                    self.server.check_s3()
                    if not functional:
                        # the firmware runs on its clock: boots and self-tests proceed
                        self._poll_device()
                continue
            with self._lock:
                self._serve_one(bytes(request), functional)

    def _poll_device(self) -> None:
        try:
            if not self.server.device.dead:
                self.server.device.poll()
        except BmsfwError as exc:
            log.debug("node %s poll: %s", self.server.address.node, exc)

    def _serve_one(self, request: bytes, functional: bool) -> None:
        log.log(5, "node %s rx %s", self.server.address.node, request[:16].hex())
        future: Future[bytes | None] = self._worker.submit(
            self.server.handle, request, functional=functional
        )
        # The reply of a functional request goes out on the node's physical response id.
        wait_s = self.server.config.pending_after_s
        while True:
            try:
                response = future.result(timeout=wait_s)
                break
            except FutureTimeout:
                self.physical.send(bytes([SID.NEGATIVE_RESPONSE, request[0], NRC.RESPONSE_PENDING]))
                wait_s = self.server.config.pending_interval_s
            except Exception:
                log.exception(
                    "node %s: internal error serving 0x%02X", self.server.address.node, request[0]
                )
                response = bytes([SID.NEGATIVE_RESPONSE, request[0], NRC.GENERAL_REJECT])
                break
        if response is not None:
            self.physical.send(response)
        after, self.server.after_response = self.server.after_response, None
        if after is not None:
            # let the positive response leave before the node goes silent for its reboot
            time.sleep(0.01)
            self._worker.submit(after)
