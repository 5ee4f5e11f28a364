"""The virtual BMS as an MCUmgr SMP server (Zephyr + MCUboot behaviour).

:class:`SmpBmsServer` answers one SMP frame at a time (``handle``: request
bytes in, response bytes out, or ``None`` while the BMS reboots: a real device
is silent then). It serves the standard groups the way Zephyr's MCUmgr does on
an MCUboot device in *direct-XIP with revert* mode (bank A is slot 0, bank B
slot 1; the image that runs is ``active``, an upload goes to the slot that does
not run):

- OS (0): echo, reset, MCUmgr params (``buf_size``), bootloader info (MCUboot, mode 5);
- image (1): state read (slots, versions, SHA256 TLV hashes, flags), state write
  (``confirm=false`` + hash: test the uploaded image at the next reset, after
  checking its signature against the fused key, security counter and hardware;
  ``confirm=true``: confirm the running test image, refused until its self-test
  passed), upload (offset-based; the first chunk carries ``len`` and ``sha``; the
  same ``len``/``sha`` again resumes at the device's offset), erase;
- settings (3): the configuration backup document under ``bms/backup``;
- the BMS vendor group (:data:`~bmsfw.protocol.smp.groups.BMS_GROUP`): identity,
  telemetry, boot status, self-test, last error, tester authentication,
  rollback, image digest (docs/smp.md).

Errors: a generic refusal answers ``{"rc": MGMT_ERR}`` (SMP v1 style, as Zephyr
does), a group-specific one ``{"err": {"group", "rc"}}``; the vendor group's
``LAST_ERROR`` then gives the BMSFW-Exxx code and text. With ``require_auth``
every command that changes flash, configuration or the boot state needs a
tester authenticated through the vendor group first (a stock MCUmgr device has
no such check: the option is off by default).

Transports: :func:`serve_udp` (one datagram per frame), :class:`SerialConsole`
(SMP console framing on a pty, optionally paced at a baud rate) and
:mod:`bmsfw.sim.smp_ble` (the SMP GATT service on bumble virtual controllers). ``python -m
bmsfw.sim.smp_server`` runs one BMS with any of them in its own process and
prints ``READY {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import signal
import struct
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import cbor2

from bmsfw.errors import BmsfwError, PackageError
from bmsfw.package.errors import AntiRollbackError, IncompatibleHardwareError
from bmsfw.protocol.device_errors import (
    DeviceNotRunningError,
    NotConfirmableError,
    NotVerifiedError,
    PowerCutError,
    VerifyFailedError,
    WriteOutOfRangeError,
)
from bmsfw.protocol.smp.groups import (
    BMS_GROUP,
    CONFIG_SETTING,
    DEFAULT_BUF_SIZE,
    BmsCommand,
    ImageCommand,
    OsCommand,
    SettingsCommand,
    backup_document,
    snapshot_from_document,
)
from bmsfw.sim._simprocess import SimProcess
from bmsfw.sim._stream_decode import active_image_digest
from bmsfw.sim.bms import VirtualBms
from bmsfw.sim.clock import Clock, RealClock
from bmsfw.sim.sim_can import ScaledClock

__all__ = [
    "SerialConsole",
    "SimSmpProcess",
    "SmpBmsServer",
    "image_version_text",
    "loopback_udp_address",
    "serve_udp",
]

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("!BBHHBB")
OP_READ, OP_READ_RSP, OP_WRITE, OP_WRITE_RSP = 0, 1, 2, 3
GROUP_OS, GROUP_IMAGE, GROUP_SETTINGS = 0, 1, 3
CHALLENGE_BYTES: Final = 32
TLV_SHA256: Final = 0x10

# MGMT_ERR (SMP's generic result codes)
EUNKNOWN, EINVAL, ENOENT, EBADSTATE, EMSGSIZE, ENOTSUP, EACCESSDENIED = 1, 3, 5, 6, 7, 8, 11
# IMG_MGMT_ERR (image group)
IMG_NO_IMAGE, IMG_HASH_NOT_FOUND, IMG_INVALID_OFFSET = 3, 8, 20
IMG_INVALID_HEADER_MAGIC, IMG_INVALID_HASH, IMG_TOO_LARGE = 23, 24, 30
IMG_CURRENT_IS_NEWER, IMG_CONFIRM_DENIED, IMG_TEST_TO_ACTIVE_DENIED = 27, 32, 33
IMG_ALREADY_PENDING = 28
MCUBOOT_MODE_DIRECT_XIP_WITH_REVERT: Final = 5
IMAGE_MAGIC: Final = 0x96F3B83D


class _Refused(Exception):  # noqa: N818 - a verdict turned into an SMP answer
    def __init__(self, rc: int, text: str, *, group: int | None = None, code: str = "") -> None:
        super().__init__(text)
        self.rc = rc
        self.group = group  # set: a group-specific (SMP v2) error
        self.text = text
        self.code = code


@dataclass
class _Upload:
    size: int
    sha: bytes
    offset: int


def image_version_text(major: int, minor: int, revision: int, build: int) -> str:
    """The version string Zephyr's image list shows (``1.2.3``, ``.build`` when not 0)."""
    text = f"{major}.{minor}.{revision}"
    return f"{text}.{build}" if build else text


def _slot(bank: str) -> int:
    return 0 if bank == "A" else 1


class SmpBmsServer:
    """The SMP request handler of one virtual BMS (thread-safe, transport-free)."""

    def __init__(
        self,
        bms: VirtualBms,
        *,
        require_auth: bool = False,
        buf_size: int = DEFAULT_BUF_SIZE,
        vendor_telemetry: bool = True,
    ) -> None:
        self.bms = bms
        self.require_auth = require_auth
        # False: TELEMETRY is not implemented (ENOTSUP), like a BMS whose state is only
        # on its CAN broadcast (docs/smp.md, DBC telemetry)
        self.vendor_telemetry = vendor_telemetry
        self.buf_size = buf_size
        self._lock = threading.Lock()
        self._upload: _Upload | None = None
        self._challenge = b""
        self._authenticated = False
        self.last_error: tuple[str, str] = ("", "")
        self.requests = 0

    # ------------------------------------------------------------------ frames

    def handle(self, frame: bytes) -> bytes | None:
        """One SMP request frame -> its response frame (None: the BMS is not answering)."""
        if len(frame) < _HEADER.size:
            return None
        first, flags, length, group, seq, command = _HEADER.unpack_from(frame)
        op, version = first & 0x07, (first >> 3) & 0x03
        body_bytes = frame[_HEADER.size : _HEADER.size + length]
        if op not in (OP_READ, OP_WRITE) or len(body_bytes) != length:
            return None
        with self._lock:
            self.requests += 1
            try:
                self.bms.poll()
                if self.bms.run_state not in ("application", "bootloader"):
                    return None  # rebooting or self-testing: silent, as on hardware
                body = cbor2.loads(body_bytes) if body_bytes else {}
                if not isinstance(body, dict):
                    raise _Refused(EINVAL, "request body is not a CBOR map")
                answer = self._dispatch(op, group, command, body)
            except _Refused as refused:
                self.last_error = (refused.code, refused.text)
                log.info("SMP %d/%d refused: %s", group, command, refused.text)
                if refused.group is not None and version >= 1:
                    answer = {"err": {"group": refused.group, "rc": refused.rc}}
                else:
                    answer = {"rc": refused.rc}
            except DeviceNotRunningError:
                return None  # rebooting: silent, as on hardware
            except PowerCutError:
                log.error("power cut: the BMS is dead")
                return None
            except (cbor2.CBORDecodeError, ValueError, TypeError, KeyError) as exc:
                self.last_error = ("", f"malformed request: {exc}")
                answer = {"rc": EINVAL}
        payload = cbor2.dumps(answer)
        header = _HEADER.pack(
            ((version & 0x03) << 3) | (op + 1), flags, len(payload), group, seq, command
        )
        return header + payload

    def _dispatch(self, op: int, group: int, command: int, body: dict[Any, Any]) -> dict[str, Any]:
        read = op == OP_READ
        handlers: dict[tuple[int, int, bool], Callable[[dict[Any, Any]], dict[str, Any]]] = {
            (GROUP_OS, OsCommand.ECHO, False): self._echo,
            (GROUP_OS, OsCommand.RESET, False): self._reset,
            (GROUP_OS, OsCommand.MCUMGR_PARAMS, True): self._params,
            (GROUP_OS, OsCommand.BOOTLOADER_INFO, True): self._bootloader_info,
            (GROUP_IMAGE, ImageCommand.STATE, True): lambda _: self._image_list(),
            (GROUP_IMAGE, ImageCommand.STATE, False): self._image_state_write,
            (GROUP_IMAGE, ImageCommand.UPLOAD, False): self._image_upload,
            (GROUP_IMAGE, ImageCommand.ERASE, False): self._image_erase,
            (GROUP_SETTINGS, SettingsCommand.READ_WRITE, True): self._setting_read,
            (GROUP_SETTINGS, SettingsCommand.READ_WRITE, False): self._setting_write,
            (GROUP_SETTINGS, SettingsCommand.COMMIT, False): lambda _: {},
            (GROUP_SETTINGS, SettingsCommand.LOAD_SAVE, True): lambda _: {},
            (GROUP_SETTINGS, SettingsCommand.LOAD_SAVE, False): lambda _: {},
            (BMS_GROUP, BmsCommand.IDENTITY, True): self._identity,
            (BMS_GROUP, BmsCommand.TELEMETRY, True): self._telemetry,
            (BMS_GROUP, BmsCommand.BOOT_STATUS, True): self._boot_status,
            (BMS_GROUP, BmsCommand.SELF_TEST, True): self._self_test,
            (BMS_GROUP, BmsCommand.LAST_ERROR, True): self._last_error,
            (BMS_GROUP, BmsCommand.AUTH, True): self._auth_challenge,
            (BMS_GROUP, BmsCommand.AUTH, False): self._auth_prove,
            (BMS_GROUP, BmsCommand.ROLLBACK, False): self._rollback,
            (BMS_GROUP, BmsCommand.IMAGE_DIGEST, True): self._image_digest,
            (BMS_GROUP, BmsCommand.UPLOAD_STATUS, True): self._upload_status,
        }
        handler = handlers.get((group, command, read))
        if handler is None:
            raise _Refused(ENOTSUP, f"group {group} command {command} is not supported")
        try:
            return handler(body)
        except (DeviceNotRunningError, PowerCutError, _Refused):
            raise
        except BmsfwError as exc:
            raise self._refusal(group, exc) from exc

    @staticmethod
    def _refusal(group: int, exc: BmsfwError) -> _Refused:
        text, code = exc.message, exc.code
        if group == GROUP_IMAGE:
            if isinstance(exc, AntiRollbackError):
                return _Refused(IMG_CURRENT_IS_NEWER, text, group=group, code=code)
            if isinstance(exc, VerifyFailedError | PackageError | IncompatibleHardwareError):
                return _Refused(IMG_INVALID_HASH, text, group=group, code=code)
            if isinstance(exc, WriteOutOfRangeError):
                return _Refused(IMG_TOO_LARGE, text, group=group, code=code)
            if isinstance(exc, NotConfirmableError):
                return _Refused(IMG_CONFIRM_DENIED, text, group=group, code=code)
        return _Refused(EBADSTATE, text, code=code)

    def _need_auth(self, what: str) -> None:
        if self.require_auth and not self._authenticated:
            raise _Refused(
                EACCESSDENIED,
                f"{what} needs an authenticated tester (BMS group AUTH)",
                code="BMSFW-E349",
            )

    # ------------------------------------------------------------------ OS group

    def _echo(self, body: dict[Any, Any]) -> dict[str, Any]:
        return {"r": str(body.get("d", ""))}

    def _reset(self, _: dict[Any, Any]) -> dict[str, Any]:
        self._need_auth("reset")
        self.bms.reset()
        self._upload = None
        self._authenticated = False
        return {}

    def _params(self, _: dict[Any, Any]) -> dict[str, Any]:
        return {"buf_size": self.buf_size, "buf_count": 4}

    def _bootloader_info(self, body: dict[Any, Any]) -> dict[str, Any]:
        if body.get("query") == "mode":
            return {"mode": MCUBOOT_MODE_DIRECT_XIP_WITH_REVERT}
        return {"bootloader": "MCUboot"}

    # ------------------------------------------------------------------ image group

    def _image_list(self) -> dict[str, Any]:
        record = self.bms.boot_record()
        status = self.bms.boot_status()
        images = []
        for bank in ("A", "B"):
            image = self.bms.bank_image(bank)
            if image is None:
                continue
            info = self.bms.bank_info(bank)
            tlv = image.tlv(TLV_SHA256)
            v = image.version
            entry: dict[str, Any] = {
                "image": 0,
                "slot": _slot(bank),
                "version": image_version_text(v.major, v.minor, v.revision, v.build),
                "bootable": info.valid,
                "pending": record.pending == bank and status.active_bank != bank,
                "confirmed": record.active == bank,
                "active": status.active_bank == bank,
                "permanent": False,
            }
            if tlv is not None:
                entry["hash"] = tlv.value
            images.append(entry)
        return {"images": images, "splitStatus": 0}

    def _bank_with_hash(self, digest: bytes) -> str:
        for bank in ("A", "B"):
            image = self.bms.bank_image(bank)
            tlv = image.tlv(TLV_SHA256) if image is not None else None
            if tlv is not None and tlv.value == digest:
                return bank
        raise _Refused(
            IMG_HASH_NOT_FOUND, f"no image with hash {digest.hex()[:16]}…", group=GROUP_IMAGE
        )

    def _image_state_write(self, body: dict[Any, Any]) -> dict[str, Any]:
        self._need_auth("image state write")
        confirm = bool(body.get("confirm", False))
        digest = body.get("hash")
        running = self.bms.boot_status().active_bank
        bank = self._bank_with_hash(bytes(digest)) if digest is not None else running
        if confirm:
            if bank != running:
                raise _Refused(
                    ENOTSUP,
                    "making a slot that does not run permanent is not supported: "
                    "test it, reset, then confirm",
                )
            self.bms.confirm()
            log.info("SMP: running image on bank %s confirmed", bank)
        else:
            if bank == running:
                raise _Refused(
                    IMG_TEST_TO_ACTIVE_DENIED,
                    "the running image cannot be set to test",
                    group=GROUP_IMAGE,
                )
            if self.bms.boot_record().pending == bank:
                return self._image_list()  # already pending: a repeated request is harmless
            status = self.bms.transfer_status()
            if not status.staged or status.bank != bank or status.missing_ranges:
                raise _Refused(
                    IMG_NO_IMAGE,
                    f"slot {_slot(bank)} holds no completely uploaded image",
                    group=GROUP_IMAGE,
                )
            try:
                self.bms.verify_inactive()
            except NotVerifiedError as exc:
                raise _Refused(IMG_NO_IMAGE, exc.message, group=GROUP_IMAGE, code=exc.code) from exc
            self.bms.activate()
            self._upload = None
            log.info("SMP: slot %d pending (test at the next reset)", _slot(bank))
        return self._image_list()

    def _image_upload(self, body: dict[Any, Any]) -> dict[str, Any]:
        self._need_auth("image upload")
        off = int(body["off"])
        data = bytes(body.get("data", b""))
        if off == 0:
            return self._upload_start(body, data)
        upload = self._upload
        if upload is None:
            raise _Refused(
                IMG_INVALID_OFFSET, "no upload in progress: start at offset 0", group=GROUP_IMAGE
            )
        if off != upload.offset:
            # Zephyr answers with the offset it expects; the client continues there.
            return {"off": upload.offset}
        if off + len(data) > upload.size:
            raise _Refused(
                IMG_TOO_LARGE, f"chunk ends at {off + len(data)} > {upload.size}", group=GROUP_IMAGE
            )
        self.bms.write_inactive(off, data)
        upload.offset = off + len(data)
        return {"off": upload.offset}

    def _upload_start(self, body: dict[Any, Any], data: bytes) -> dict[str, Any]:
        size = int(body["len"])
        sha = bytes(body.get("sha") or b"")
        if len(data) < 32:
            raise _Refused(EINVAL, "the first chunk must hold the 32-byte image header")
        magic, *_rest = struct.unpack_from("<IIHHII", data)
        if magic != IMAGE_MAGIC:
            raise _Refused(
                IMG_INVALID_HEADER_MAGIC,
                f"image magic 0x{magic:08x} is not MCUboot's",
                group=GROUP_IMAGE,
            )
        major, minor, revision, build = struct.unpack_from("<BBHI", data, 20)
        version = image_version_text(major, minor, revision, build)
        if not sha:
            sha = b"\0" * 32  # no sha: never matches an earlier upload (no resume)
        upload = self._upload
        if upload is not None and (upload.size, upload.sha) == (size, sha) and upload.offset:
            return {"off": upload.offset}
        status = self.bms.begin_image_upload(size, sha, version)
        if status.erased and status.contiguous_bytes > 0 and any(sha):
            # Same image as the interrupted upload: go on where flash says it stopped.
            self._upload = _Upload(size, sha, status.contiguous_bytes)
            log.info("SMP upload of %s resumes at %d", version, status.contiguous_bytes)
            return {"off": status.contiguous_bytes}
        if not status.erased or status.contiguous_bytes:
            self.bms.erase_inactive()
        if len(data) > size:
            raise _Refused(IMG_TOO_LARGE, "first chunk longer than the image", group=GROUP_IMAGE)
        self.bms.write_inactive(0, data)
        self._upload = _Upload(size, sha, len(data))
        log.info("SMP upload of %s (%d bytes) started", version, size)
        return {"off": len(data)}

    def _image_erase(self, body: dict[Any, Any]) -> dict[str, Any]:
        self._need_auth("image erase")
        slot = int(body.get("slot", 1))
        running = self.bms.boot_status().active_bank
        if slot not in (0, 1) or ("A" if slot == 0 else "B") == running:
            raise _Refused(EBADSTATE, f"slot {slot} runs (or does not exist): not erased")
        self.bms.erase_unused_bank()
        self._upload = None
        return {}

    # ------------------------------------------------------------------ settings group

    def _setting_read(self, body: dict[Any, Any]) -> dict[str, Any]:
        if str(body.get("name")) != CONFIG_SETTING:
            raise _Refused(ENOENT, f"no setting {body.get('name')!r}")
        return {"val": backup_document(self.bms.config_snapshot())}

    def _setting_write(self, body: dict[Any, Any]) -> dict[str, Any]:
        self._need_auth("settings write")
        if str(body.get("name")) != CONFIG_SETTING:
            raise _Refused(ENOENT, f"no setting {body.get('name')!r}")
        try:
            snapshot = snapshot_from_document(bytes(body["val"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise _Refused(EINVAL, f"{CONFIG_SETTING}: not a backup document ({exc})") from exc
        self.bms.restore_snapshot(snapshot)
        return {}

    # ------------------------------------------------------------------ BMS vendor group

    def _identity(self, _: dict[Any, Any]) -> dict[str, Any]:
        i = self.bms.identity()
        return {
            "vendor": i.vendor,
            "model": i.model,
            "hw_revision": i.hw_revision,
            "serial": i.serial,
            "bootloader_version": i.bootloader_version,
            "app_version": i.app_version,
            "security_counter": i.security_counter,
            "active_bank": i.active_bank,
            "image_key_hashes": [bytes.fromhex(h) for h in i.image_key_hashes],
            **(
                {"flash_layout": [layout.bank_size_bytes, layout.sector_size_bytes, layout.banks]}
                if (layout := i.flash_layout) is not None
                else {}
            ),
        }

    def _telemetry(self, _: dict[Any, Any]) -> dict[str, Any]:
        if not self.vendor_telemetry:
            raise _Refused(ENOTSUP, "this BMS broadcasts its telemetry on CAN only")
        t = self.bms.telemetry()
        return {
            "soc_pct": t.soc_pct,
            "pack_voltage_v": t.pack_voltage_v,
            "pack_current_a": t.pack_current_a,
            "cell_voltages_v": list(t.cell_voltages_v),
            "temperatures_c": list(t.temperatures_c),
            "supply_voltage_v": t.supply_voltage_v,
            "faults": list(t.faults),
            "contactors_closed": t.contactors_closed,
        }

    def _boot_status(self, _: dict[Any, Any]) -> dict[str, Any]:
        s = self.bms.boot_status()
        return {
            "run_state": s.run_state,
            "active_bank": s.active_bank,
            "running_version": s.running_version,
            "image_state": s.image_state,
            "boot_count": s.boot_count,
            "security_counter": s.security_counter,
            "last_revert_reason": s.last_revert_reason,
        }

    def _self_test(self, _: dict[Any, Any]) -> dict[str, Any]:
        try:
            result = self.bms.self_test()
        except BmsfwError:
            return {"state": "none", "firmware": "", "checks": []}
        return {
            "state": "passed" if result.passed else "failed",
            "firmware": result.version,
            "checks": [dataclasses.asdict(c) for c in result.checks],
        }

    def _last_error(self, _: dict[Any, Any]) -> dict[str, Any]:
        code, text = self.last_error
        return {"code": code, "text": text}

    def _auth_challenge(self, _: dict[Any, Any]) -> dict[str, Any]:
        self._challenge = os.urandom(CHALLENGE_BYTES)
        self._authenticated = False
        return {"challenge": self._challenge}

    def _auth_prove(self, body: dict[Any, Any]) -> dict[str, Any]:
        from bmsfw.protocol.uds._auth import (
            TesterCertificateRejected,
            verify_proof,
            verify_tester_chain,
        )

        challenge, self._challenge = self._challenge, b""  # one proof per challenge
        self._authenticated = False
        if not challenge:
            raise _Refused(EBADSTATE, "no challenge issued: read AUTH first", code="BMSFW-E349")
        try:
            tester = verify_tester_chain(
                bytes(body["chain"]),
                root_key_hash=self.bms.otp.root_key_hash,
                now=self.bms.clock.now(),
            )
        except TesterCertificateRejected as exc:
            raise _Refused(
                EACCESSDENIED, f"tester certificate rejected: {exc.reason}", code="BMSFW-E349"
            ) from None
        if not verify_proof(tester.public_key, challenge, bytes(body["signature"])):
            raise _Refused(
                EACCESSDENIED,
                "challenge signature does not match the tester certificate",
                code="BMSFW-E349",
            )
        self._authenticated = True
        log.info("SMP: tester %s authenticated", tester.subject)
        return {}

    def _rollback(self, _: dict[Any, Any]) -> dict[str, Any]:
        self._need_auth("rollback")
        self.bms.rollback()
        self._upload = None
        self._authenticated = False
        return {}

    def _image_digest(self, _: dict[Any, Any]) -> dict[str, Any]:
        return {"sha256": active_image_digest(self.bms)}

    def _upload_status(self, _: dict[Any, Any]) -> dict[str, Any]:
        status = self.bms.transfer_status()
        if not status.staged or not status.erased:
            return {"len": 0, "off": 0, "sha": b"", "image_version": ""}
        upload = self._upload
        off = upload.offset if upload is not None else status.contiguous_bytes
        return {
            "len": status.total_size,
            "off": off,
            "sha": status.sha256,
            "image_version": status.version,
        }


# ---------------------------------------------------------------------- transports


class _DatagramServer(asyncio.DatagramProtocol):
    def __init__(self, server: SmpBmsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        answer = self.server.handle(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def serve_udp(
    server: SmpBmsServer, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.DatagramTransport, int]:
    """Serve SMP over UDP (one frame per datagram, as Zephyr's UDP transport)."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DatagramServer(server), local_addr=(host, port)
    )
    return transport, int(transport.get_extra_info("sockname")[1])


class SerialConsole:
    """SMP console framing on the device end of a pty (Zephyr's SMP over UART/shell).

    Lines start with ``06 09`` (first) or ``04 14`` (continuation) and end in
    ``\\n``; their base64 text is ``[u16 length][SMP frame][u16 CRC16-XMODEM]``.
    Responses go out the same way, at most ``line_length`` bytes per line.
    With ``baud_bps`` the pty runs at that line's wire time (10 bits a character,
    8N1): received bytes count from when the previous ones had arrived, and a
    response leaves only as fast as the line carries it.
    """

    def __init__(
        self,
        server: SmpBmsServer,
        *,
        baud_bps: int | None = None,
        line_length: int = 128,
    ) -> None:
        self.server = server
        self.baud_bps = baud_bps
        self.line_length = line_length
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)
        self.port = os.ttyname(self.slave_fd)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smp-serial", daemon=True)
        self._rx_clock = 0.0
        self.frames = 0

    def start(self) -> SerialConsole:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _char_s(self) -> float:
        return 10.0 / self.baud_bps if self.baud_bps else 0.0

    def _run(self) -> None:
        import select

        from smp import packet as smppacket

        pending = bytearray()
        text = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master_fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.master_fd, 4096)
            except OSError:
                return
            if self.baud_bps:
                now = time.monotonic()
                self._rx_clock = max(self._rx_clock, now) + len(chunk) * self._char_s()
                time.sleep(max(0.0, self._rx_clock - now))
            pending += chunk
            while (nl := pending.find(b"\n")) >= 0:
                line, pending = bytes(pending[:nl]), pending[nl + 1 :]
                start = line.find(smppacket.START_DELIMITER)
                if start >= 0:
                    text = bytearray(line[start + 2 :])
                elif line.startswith(smppacket.CONTINUE_DELIMITER) and text:
                    text += line[2:]
                else:
                    continue  # console noise between frames
                frame = self._frame(bytes(text))
                if frame is None:
                    continue
                text = bytearray()
                self._answer(frame)

    @staticmethod
    def _frame(text: bytes) -> bytes | None:
        from smp import packet as smppacket

        usable = len(text) - len(text) % 4
        try:
            raw = base64.b64decode(text[:usable], validate=True)
        except ValueError:
            return None
        if len(raw) < 2:
            return None
        (length,) = struct.unpack_from("!H", raw)
        if len(raw) < 2 + length:
            return None
        body, crc = raw[2:length], raw[length : length + 2]  # length counts the CRC
        if struct.pack("!H", smppacket.crc16_func(body)) != crc:
            log.warning("SMP serial frame with a bad CRC dropped")
            return b""
        return body

    def _answer(self, frame: bytes) -> None:
        from smp import packet as smppacket

        if not frame:
            return
        self.frames += 1
        answer = self.server.handle(frame)
        if answer is None:
            return
        for line in smppacket.encode(answer, line_length=self.line_length):
            if self.baud_bps:
                time.sleep(len(line) * self._char_s())
            try:
                os.write(self.master_fd, line)
            except OSError:
                return


# ---------------------------------------------------------------------- process


def _exit_process() -> None:
    log.error("power cut: stopping")
    os._exit(3)


class _FirmwareTicker(threading.Thread):
    """Lets the BMS firmware catch up with the clock (boots and self-tests run on their own).

    At a power cut it calls ``on_power_cut`` and stops: the BMS's own process exits
    (the default); an in-process :class:`SmpSimulator` just leaves the BMS dead.
    """

    def __init__(
        self,
        bms: VirtualBms,
        poll_s: float = 0.02,
        on_power_cut: Callable[[], None] = _exit_process,
    ) -> None:
        super().__init__(name="bms-firmware", daemon=True)
        self.bms = bms
        self.poll_s = poll_s
        self.on_power_cut = on_power_cut
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.poll_s):
            try:
                self.bms.poll()
            except PowerCutError:
                self.on_power_cut()
                return
            except BmsfwError:
                log.debug("poll", exc_info=True)


class SmpSimulator:
    """One virtual BMS serving SMP on the serial console framing (a pty), in this process.

    What :class:`SimSmpProcess` runs, without the process: a test can cut the power
    at an exact flash operation (``devices.faults.power_cut_at``) and the BMS then
    stays silent (``handle`` answers nothing) until :meth:`stop` and a new
    :meth:`start` power it on again from its state directory.
    """

    def __init__(
        self, state_dir: str | Path, *, time_scale: float = 1.0, require_auth: bool = False
    ) -> None:
        self.state_dir = Path(state_dir)
        self.time_scale = time_scale
        self.require_auth = require_auth
        self._bms: VirtualBms | None = None
        self._console: SerialConsole | None = None
        self._ticker: _FirmwareTicker | None = None

    @property
    def bms(self) -> VirtualBms:
        assert self._bms is not None, "the simulator is not started"
        return self._bms

    @property
    def port(self) -> str:
        """The tester's end of the pty (``--smp serial:PORT``)."""
        assert self._console is not None, "the simulator is not started"
        return self._console.port

    def start(self, *, wait_boot: bool = True) -> SmpSimulator:
        """Power on: bootloader, self-test, application (by default wait until it runs)."""
        self._bms = VirtualBms(self.state_dir, clock=_clock(self.time_scale))
        if wait_boot:
            self._bms.wait_boot(120.0)
        server = SmpBmsServer(self._bms, require_auth=self.require_auth)
        self._console = SerialConsole(server).start()
        self._ticker = _FirmwareTicker(
            self._bms, on_power_cut=lambda: log.error("power cut: the BMS is dead")
        )
        self._ticker.start()
        return self

    def stop(self) -> None:
        """Power off (a BMS that lost its power stays as the cut left it)."""
        if self._ticker is not None:
            self._ticker.stopped.set()
            self._ticker.join(2)
        if self._console is not None:
            self._console.stop()
        if self._bms is not None and not self._bms.dead:
            self._bms.close()
        self._bms = self._console = self._ticker = None


class _CanBroadcaster(threading.Thread):
    """Broadcasts the BMS's state on CAN every ``period_s``, encoded with the example DBC
    (what most BMS do; the updater can read its preflight values from these frames)."""

    def __init__(self, bms: VirtualBms, can_link: str, period_s: float = 0.1) -> None:
        super().__init__(name="bms-can-broadcast", daemon=True)
        import cantools

        from bmsfw.link.canlink import open_can_bus
        from bmsfw.protocol.smp.dbc import EXAMPLE_DBC, EXAMPLE_MAP

        self.bms = bms
        self.period_s = period_s
        database = cantools.database.load_file(str(EXAMPLE_DBC))
        assert isinstance(database, cantools.database.can.Database)
        self.database = database
        self.mapping = EXAMPLE_MAP
        self.bus = open_can_bus(can_link)
        self.stopped = threading.Event()

    def _signals(self) -> dict[str, float]:
        t = self.bms.telemetry()
        m = self.mapping
        values = {
            m.soc_pct: t.soc_pct,
            m.pack_voltage_v: t.pack_voltage_v,
            m.pack_current_a: t.pack_current_a,
            m.supply_voltage_v: min(t.supply_voltage_v, 51.0),
            m.contactors_closed: float(t.contactors_closed),
        }
        values.update(zip(m.cell_voltages_v, t.cell_voltages_v, strict=False))
        values.update(zip(m.temperatures_c, t.temperatures_c, strict=False))
        values.update({signal: float(name in t.faults) for signal, name in m.faults})
        return values

    def run(self) -> None:
        import can

        while not self.stopped.wait(self.period_s):
            if self.bms.run_state != "application":
                continue  # rebooting: no broadcast
            try:
                values = self._signals()
            except BmsfwError:
                continue
            for message in self.database.messages:
                data = {
                    signal.name: values.get(f"{message.name}.{signal.name}", 0.0)
                    for signal in message.signals
                }
                payload = message.encode(data, strict=False)
                self.bus.send(
                    can.Message(arbitration_id=message.frame_id, data=payload, is_extended_id=False)
                )

    def close(self) -> None:
        self.stopped.set()
        self.join(2)
        self.bus.shutdown()


def _clock(time_scale: float) -> Clock:
    return RealClock() if time_scale == 1.0 else ScaledClock(time_scale)


async def _serve(args: argparse.Namespace) -> None:
    bms = VirtualBms(args.state_dir, clock=_clock(args.time_scale))
    await asyncio.to_thread(bms.wait_boot, 120.0)  # READY means the BMS answers
    server = SmpBmsServer(
        bms,
        require_auth=args.require_auth,
        buf_size=args.buf_size,
        vendor_telemetry=not args.no_vendor_telemetry,
    )
    ticker = _FirmwareTicker(bms)
    ticker.start()
    info: dict[str, Any] = {"serial": bms.serial}
    closers: list[Callable[[], Any]] = []
    if args.serial:
        console = SerialConsole(server, baud_bps=args.baud or None).start()
        info["serial_port"] = console.port
        closers.append(console.stop)
    if args.udp is not None:
        transport, port = await serve_udp(server, args.udp_host, args.udp)
        info["udp"] = f"{args.udp_host}:{port}"
        closers.append(transport.close)
    if args.can_broadcast:
        broadcaster = _CanBroadcaster(bms, args.can_broadcast)
        broadcaster.start()
        info["can_broadcast"] = args.can_broadcast
        closers.append(broadcaster.close)
    if args.ble:
        from bmsfw.sim.smp_ble import serve_ble

        passkey = None if args.ble_open else _ble_passkey(args.ble_passkey_file)
        ble = await serve_ble(server, name=args.ble_name or f"BMS-{bms.serial}", passkey=passkey)
        info.update(ble.info)
        if passkey is not None:
            info["ble_passkey"] = f"{passkey:06d}"  # what the BMS's label / display shows
        closers.append(ble.close)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("READY " + json.dumps(info), flush=True)
    await stop.wait()
    ticker.stopped.set()
    for close in closers:
        result = close()
        if asyncio.iscoroutine(result):
            await result
    bms.close()


def _ble_passkey(path: Path | None) -> int:
    """The BMS's fixed passkey: from a file (a provisioned label), else a new random one."""
    import secrets

    if path is None:
        return secrets.randbelow(1_000_000)
    text = path.read_text(encoding="ascii").strip()
    if len(text) != 6 or not text.isdigit():
        raise SystemExit(f"{path}: a BLE passkey is 6 digits")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A virtual BMS serving MCUmgr SMP")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--serial", action="store_true", help="serve on a new pty")
    parser.add_argument("--baud", type=int, default=0, help="pace the pty at this baud (8N1)")
    parser.add_argument("--udp", type=int, default=None, metavar="PORT", help="0: any port")
    parser.add_argument("--udp-host", default="127.0.0.1", help="address to serve UDP on")
    parser.add_argument("--ble", action="store_true", help="advertise the SMP GATT service")
    parser.add_argument("--ble-name", default="", help="default: BMS-<serial>")
    parser.add_argument(
        "--ble-passkey-file",
        type=Path,
        default=None,
        help="the BMS's fixed 6-digit passkey (default: a random one, shown in READY)",
    )
    parser.add_argument(
        "--ble-open",
        action="store_true",
        help="no pairing required (a stock MCUmgr sample); default: LE Secure Connections",
    )
    parser.add_argument("--require-auth", action="store_true")
    parser.add_argument(
        "--can-broadcast", default="", metavar="LINK", help="broadcast telemetry frames (DBC)"
    )
    parser.add_argument(
        "--no-vendor-telemetry", action="store_true", help="TELEMETRY answers ENOTSUP"
    )
    parser.add_argument("--buf-size", type=int, default=DEFAULT_BUF_SIZE)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    level = int(args.log_level) if args.log_level.isdigit() else args.log_level
    logging.basicConfig(level=level, stream=sys.stderr)
    asyncio.run(_serve(args))


def loopback_udp_address(port: int = 1337) -> str:
    """``127.X.Y.Z:port`` not used by another simulator on this machine (probed by bind)."""
    import random
    import socket

    for _ in range(50):
        host = f"127.{random.randint(16, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return f"{host}:{port}"
    raise OSError(f"no free loopback address for UDP port {port}")


class SimSmpProcess(SimProcess):
    """``python -m bmsfw.sim.smp_server`` in its own process (SIGKILL = power loss).

    ``udp`` is ``HOST:PORT`` to serve on (port 0: any). Stock MCUmgr clients reach
    UDP port 1337 only; :func:`loopback_udp_address` gives each simulator a
    loopback address of its own so several can serve 1337 at once.
    """

    what = "virtual BMS SMP server"

    def __init__(
        self,
        state_dir: str | Path,
        *,
        serial: bool = False,
        udp: str | None = None,
        ble: bool = False,
        ble_open: bool = False,
        baud_bps: int = 0,
        require_auth: bool = False,
        time_scale: float = 1.0,
        log_file: str | Path | None = None,
        extra: list[str] | None = None,
    ) -> None:
        args = [sys.executable, "-m", "bmsfw.sim.smp_server", "--state-dir", str(state_dir)]
        if serial:
            args += ["--serial", "--baud", str(baud_bps)]
        if udp:
            host, _, port = udp.rpartition(":")
            args += ["--udp-host", host or "127.0.0.1", "--udp", port]
        if ble:
            args += ["--ble", *(["--ble-open"] if ble_open else [])]
        if require_auth:
            args += ["--require-auth"]
        args += ["--time-scale", str(time_scale), *(extra or [])]
        super().__init__(args, log_file=log_file)


if __name__ == "__main__":
    main()
