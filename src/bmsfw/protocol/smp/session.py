"""``BmsSession`` over MCUmgr SMP (smpclient), for Zephyr/MCUboot BMS controllers.

The session drives the standard groups the way MCUboot devices expect, and the
BMS vendor group for what SMP has no standard for (docs/smp.md):

=================  ==========================================================
BmsSession         SMP
=================  ==========================================================
identify           vendor IDENTITY (model, serial, versions, OTP security counter)
read_telemetry     vendor TELEMETRY
read_boot_status   vendor BOOT_STATUS
read_image_digest  vendor IMAGE_DIGEST
link_check         OS echo, round trips timed
read/write_config  settings ``bms/backup`` (the backup document, JSON)
authenticate       vendor AUTH: challenge, then certificate chain + signature
prepare            vendor UPLOAD_STATUS: what the BMS holds of *this* image (len + sha)
erase              image erase (the slot that does not run)
write              image upload (smpclient's; offset-based, the BMS resumes at its offset)
verify             image state write, ``confirm=false`` + the image's SHA256 TLV: the
                   BMS checks signature, security counter and hardware, then marks the
                   slot pending (MCUboot "test")
activate           image state read: the slot must be pending
reset              OS reset
wait_boot          vendor BOOT_STATUS until the application runs (silent while booting)
read_self_test     vendor SELF_TEST
confirm            image state write ``confirm=true`` (the running image)
rollback           vendor ROLLBACK
=================  ==========================================================

smpclient is asyncio; the session runs one event loop in a thread of its own
and calls into it, so the update pipeline stays synchronous like the other
sessions. The release header is not sent: a stock MCUboot device verifies the
image itself (signature against its fused key, security counter, hardware TLV);
the host has verified the release before (package signature, policy).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncGenerator, Coroutine, Iterator
from typing import Any, TypeVar

from bmsfw.errors import BmsfwError
from bmsfw.link.tap import MessageTap
from bmsfw.package import Component, Manifest, decode_header, parse_image
from bmsfw.protocol.boot_wait import wait_for_application
from bmsfw.protocol.bounds import flash_layout, image_key_hashes
from bmsfw.protocol.errors import (
    DeviceActivateFailedError,
    DeviceVerifyFailedError,
)
from bmsfw.protocol.session import (
    BleLinkFacts,
    BootStatus,
    Channel,
    ConfigSnapshot,
    DeviceIdentity,
    FlashLayout,
    ImageState,
    LinkQuality,
    RunState,
    SelfTestCheck,
    SelfTestResult,
    Telemetry,
    TesterCredentials,
    TransferState,
)
from bmsfw.protocol.smp import _vendor as vendor
from bmsfw.protocol.smp.dbc import DbcTelemetrySource
from bmsfw.protocol.smp.errors import (
    BleLinkInsecureError,
    BlePairingFailedError,
    SmpAuthRejectedError,
    SmpLinkError,
    SmpNoResponseError,
    SmpProtocolError,
    SmpRefusedError,
    SmpTransferError,
)
from bmsfw.protocol.smp.groups import CONFIG_SETTING, backup_document, snapshot_from_document
from bmsfw.protocol.smp.link import OS_ADAPTER, SmpLink

__all__ = ["SmpSession", "open_smp_session"]

log = logging.getLogger(__name__)

T = TypeVar("T")
TLV_SHA256 = 0x10
VENDOR_TELEMETRY_FIELDS = (
    "soc_pct",
    "pack_voltage_v",
    "pack_current_a",
    "cell_voltages_v",
    "temperatures_c",
    "supply_voltage_v",
    "faults",
    "contactors_closed",
)


class _LoopThread:
    """An asyncio loop in a daemon thread; ``run`` waits for one coroutine's result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="smp-io", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def _next(generator: AsyncGenerator[int, None]) -> int:
    return await generator.__anext__()


def _transport(link: SmpLink) -> Any:
    """The smpclient transport for ``link`` (imported lazily: optional drivers)."""
    if link.kind == "serial":
        from smpclient.transport.serial import SMPSerialTransport

        return SMPSerialTransport(baudrate=link.baud)
    if link.kind == "udp":
        from smpclient.transport.udp import SMPUDPTransport

        port = link.port

        class PortTransport(SMPUDPTransport):
            async def connect(self, address: str, timeout_s: float, port: int = port) -> None:
                await super().connect(address, timeout_s, port)

        return PortTransport()
    if link.hci == OS_ADAPTER:
        # The operating system's Bluetooth (BlueZ, CoreBluetooth, WinRT) through bleak.
        from smpclient.transport.ble import SMPBLETransport

        return SMPBLETransport()
    from smpclient.transport.bumble import SMPBumbleTransport
    from smpclient.transport.bumble.keystore import InMemory

    from bmsfw.protocol.smp._ble import passkey_entry

    # Pair (LE Secure Connections, passkey entry) right after connecting, before GATT
    # discovery; bonds only in memory: every run pairs again, nothing stays on the laptop.
    return SMPBumbleTransport(
        hci=link.hci,
        keystore=InMemory(),
        pair_on_connect=passkey_entry(link.passkey),
        pair_timeout_s=30.0,
        settle_s=0.1,
    )


def ble_link_text(facts: BleLinkFacts | None) -> dict[str, str]:
    """The BLE link facts as the link check and ``bmsfw info`` show them."""
    if facts is None:
        return {}
    security = (
        "LE Secure Connections, passkey"
        if facts.mitm and facts.secure_connections
        else ("encrypted" if facts.encrypted else "NOT encrypted")
    )
    return {
        "ATT MTU": str(facts.att_mtu),
        "interval ms": f"{facts.interval_ms:g}",
        "RSSI": "n/a" if facts.rssi_dbm is None else f"{facts.rssi_dbm} dBm",
        "security": security,
    }


class SmpSession:
    """A connection to one BMS over MCUmgr SMP (implements ``BmsSession``)."""

    #: SMP carries images only: an encoded component is decoded by the host first.
    accepts_stored = False

    def __init__(
        self,
        link: SmpLink,
        *,
        upload_timeout_s: float = 10.0,
        upload_window: int = 2,
        telemetry_source: DbcTelemetrySource | None = None,
    ) -> None:
        from smpclient import SMPClient

        self.link = link
        if telemetry_source is None and link.telemetry is not None:
            spec = link.telemetry
            telemetry_source = DbcTelemetrySource(
                spec.dbc_path, spec.can_link, spec.mapping, window_s=spec.window_s
            )
        self.wireless = link.kind == "ble"  # RadioLink: Bluetooth is an over-the-air channel
        # Where telemetry comes from when the BMS has no vendor TELEMETRY (CAN + DBC)
        self.telemetry_source = telemetry_source
        self.upload_timeout_s = upload_timeout_s
        self.upload_window = upload_window  # chunks in flight (the BMS announces buf_count)
        self._io = _LoopThread()
        transport = _transport(link)
        # Every SMP message sent and received, for the evidence of an update (docs/evidence.md)
        self.frame_tap = MessageTap(transport)
        self._client = SMPClient(transport, link.target, timeout_s=link.timeout_s)
        self._image: bytes | None = None
        self._component: Component | None = None
        self._credentials: TesterCredentials | None = None
        try:
            self._io.run(self._client.connect(max(link.timeout_s, 5.0)))
        except BaseException as exc:
            self._io.close()
            if "pair_on_connect" in str(exc):
                raise BlePairingFailedError(f"{link}: {exc}") from exc
            raise SmpLinkError(f"cannot open {link}: {exc or type(exc).__name__}") from exc
        self._ble_security_checked = False
        if link.kind == "ble":
            self._refuse_insecure_link()

    def _refuse_insecure_link(self) -> None:
        """bmsfw sends nothing over a Bluetooth link that is not encrypted with a key from an
        authenticated LE Secure Connections pairing (the operating system's adapter does not
        tell how it secured the link: refused as well)."""
        from bmsfw.protocol.smp._ble import insecure_reason

        facts = self.ble_facts()
        reason = (
            "the operating system's adapter (@os) does not show how the link is secured"
            if facts is None
            else insecure_reason(facts)
        )
        if reason:
            self.close()
            raise BleLinkInsecureError(f"{self.link}: {reason}; nothing was sent")
        self._ble_security_checked = True

    @property
    def address(self) -> str:
        return str(self.link)

    # ------------------------------------------------------------------ requests

    def _request(self, request: Any, what: str, *, timeout_s: float | None = None) -> Any:
        from smpclient.exceptions import SMPBadSequence, SMPClientException
        from smpclient.generics import error
        from smpclient.transport import SMPTransportDisconnected

        from bmsfw.protocol.smp._upload import exchange

        timeout = timeout_s if timeout_s is not None else self.link.timeout_s
        try:
            response = self._io.run(exchange(self._client, request, timeout))
        except TimeoutError as exc:
            raise SmpNoResponseError(
                f"{self.address}: no answer to {what} within {timeout:g} s"
            ) from exc
        except SMPTransportDisconnected as exc:
            raise SmpNoResponseError(f"{self.address}: link lost during {what}: {exc}") from exc
        except (SMPBadSequence, SMPClientException, ValueError, IndexError) as exc:
            raise SmpProtocolError(f"{self.address}: {what}: {exc}") from exc
        if error(response):
            raise self._refusal(what, response)
        return response

    def _refusal(self, what: str, response: Any) -> SmpRefusedError:
        rc = int(response.rc if hasattr(response, "rc") else response.err.rc)
        code, text = "", ""
        try:
            last = self._request(vendor.LastErrorRead(), "last error")
            code, text = str(last.code), str(last.text)
        except BmsfwError:
            pass
        message = f"{what} refused (SMP rc {rc}" + (f", {code})" if code else ")")
        if text:
            message += f": {text}"
        return SmpRefusedError(message, device_code=code, rc=rc)

    # ------------------------------------------------------------------ BmsSession

    def identify(self) -> DeviceIdentity:
        r = self._request(vendor.IdentityRead(), "identity")
        return DeviceIdentity(
            vendor=r.vendor,
            model=r.model,
            hw_revision=r.hw_revision,
            serial=r.serial,
            bootloader_version=r.bootloader_version,
            app_version=r.app_version,
            security_counter=r.security_counter,
            active_bank=r.active_bank,
            address=self.address,
            image_key_hashes=self._decode_keys(r.image_key_hashes),
            flash_layout=self._decode_layout(r.flash_layout),
        )

    def _decode_layout(self, layout: list[int]) -> FlashLayout | None:
        """``[bank size, sector size, banks]``; empty: not reported (the BMS alone judges)."""
        if not layout:
            return None
        try:
            if len(layout) != 3:
                raise ValueError(f"{len(layout)} numbers, not [bank size, sector size, banks]")
            bank, sector, banks = layout
            return flash_layout(bank, sector, banks, "identity flash_layout")
        except ValueError as exc:
            raise SmpProtocolError(f"{self.address}: identity flash_layout: {exc}") from None

    def _decode_keys(self, hashes: list[bytes]) -> tuple[str, ...]:
        try:
            return image_key_hashes(hashes, "identity image_key_hashes")
        except ValueError as exc:
            raise SmpProtocolError(f"{self.address}: {exc}") from None

    def read_telemetry(self) -> Telemetry:
        """From the CAN broadcast decoded with the DBC file when a ``telemetry_source`` was
        chosen, else the vendor group's TELEMETRY. ``Telemetry.sources`` says which, per
        value (``dbc:MESSAGE.SIGNAL`` or ``smp:TELEMETRY``)."""
        if self.telemetry_source is not None:
            decoded = self.telemetry_source.read()
            return dataclasses.replace(decoded.telemetry, sources=decoded.sources)
        r = self._request(vendor.TelemetryRead(), "telemetry")
        return Telemetry(
            soc_pct=r.soc_pct,
            pack_voltage_v=r.pack_voltage_v,
            pack_current_a=r.pack_current_a,
            cell_voltages_v=tuple(r.cell_voltages_v),
            temperatures_c=tuple(r.temperatures_c),
            supply_voltage_v=r.supply_voltage_v,
            faults=tuple(r.faults),
            contactors_closed=r.contactors_closed,
            sources=dict.fromkeys(VENDOR_TELEMETRY_FIELDS, "smp:TELEMETRY"),
        )

    def read_boot_status(self, *, timeout_s: float | None = None) -> BootStatus:
        r = self._request(vendor.BootStatusRead(), "boot status", timeout_s=timeout_s)
        run_state: RunState = r.run_state
        image_state: ImageState = r.image_state
        return BootStatus(
            run_state=run_state,
            active_bank=r.active_bank,
            running_version=r.running_version,
            image_state=image_state,
            boot_count=r.boot_count,
            security_counter=r.security_counter,
            last_revert_reason=r.last_revert_reason,
        )

    def read_image_digest(self) -> bytes:
        return bytes(self._request(vendor.ImageDigestRead(), "image digest").sha256)

    def link_check(self, round_trips: int = 5) -> LinkQuality:
        from smpclient.requests.os_management import EchoWrite

        errors = 0
        times: list[float] = []
        for n in range(round_trips):
            text = f"bmsfw link check {n}"
            started = time.perf_counter()
            try:
                ok = self._request(EchoWrite(d=text), "echo").r == text
            except BmsfwError:
                ok = False
            if ok:
                times.append(time.perf_counter() - started)
            else:
                errors += 1
        ble = self.ble_facts() if self.link.kind == "ble" else None
        return LinkQuality(
            echo_ok=bool(times) and errors == 0,
            round_trips=round_trips,
            errors=errors,
            rate=self._rate(ble),
            rate_matches=True,  # SMP frames carry their own length and CRC (or UDP/ATT's)
            round_trip_ms=1000 * sum(times) / len(times) if times else 0.0,
            ble=ble,
        )

    def _rate(self, ble: BleLinkFacts | None) -> str:
        if self.link.kind == "serial":
            return f"SMP serial {self.link.baud} baud"
        if self.link.kind == "udp":
            return "SMP UDP"
        return "SMP BLE, " + ", ".join(
            f"{k} {v}"
            for k, v in {**ble_link_text(ble), "SMP frame B": self.max_unencoded_size}.items()
        )

    def ble_facts(self) -> BleLinkFacts | None:
        """ATT MTU, connection interval, RSSI and security of the BLE connection (bumble
        only; None otherwise). RSSI comes from the controller (HCI Read RSSI); a
        controller that does not support it (bumble's virtual one) gives None."""
        from bmsfw.protocol.smp._ble import link_facts, rssi_dbm

        connection = getattr(getattr(self._client._transport, "_state", None), "connection", None)
        if connection is None:
            return None

        async def read() -> BleLinkFacts:
            return await link_facts(connection, await rssi_dbm(connection))

        return self._io.run(read())

    def ble_link(self) -> dict[str, str]:
        """The BLE link facts as text for the link check (empty off BLE)."""
        return ble_link_text(self.ble_facts())

    @property
    def max_unencoded_size(self) -> int:
        """The largest SMP message the transport sends (the device's buffer or the MTU)."""
        return int(self._client._transport.max_unencoded_size)

    def read_config(self) -> ConfigSnapshot:
        from smpclient.requests.settings_management import ReadSetting

        r = self._request(ReadSetting(name=CONFIG_SETTING), "settings read")
        try:
            return snapshot_from_document(bytes(r.val))
        except (ValueError, KeyError, TypeError) as exc:
            raise SmpProtocolError(f"{CONFIG_SETTING} is not a backup document: {exc}") from exc

    def write_config(self, snapshot: ConfigSnapshot) -> None:
        from smpclient.requests.settings_management import WriteSetting

        value = backup_document(snapshot)
        self._request(WriteSetting(name=CONFIG_SETTING, val=value), "settings write")

    def authenticate(self, credentials: TesterCredentials) -> None:
        from bmsfw.protocol.uds._auth import chain_pem_to_der, sign_challenge

        challenge = bytes(self._request(vendor.AuthChallengeRead(), "auth challenge").challenge)
        try:
            chain = chain_pem_to_der(credentials.certificate_chain_pem)
            signature = sign_challenge(
                credentials.private_key_pem, challenge, credentials.passphrase
            )
        except ValueError as exc:
            raise SmpAuthRejectedError(f"tester credentials unusable: {exc}") from exc
        try:
            self._request(vendor.AuthProveWrite(chain=chain, signature=signature), "auth proof")
        except SmpRefusedError as exc:
            raise SmpAuthRejectedError(exc.message) from exc
        # A reset ends the tester's authentication (the BMS keeps it in RAM): wait_boot
        # proves possession again with a fresh challenge.
        self._credentials = credentials

    def prepare(
        self, header: bytes, *, channel: Channel = "wired", downgrade_authorised: bool = False
    ) -> TransferState:
        """Read what the BMS holds of the release's image (SMP has no header to stage,
        so neither the channel nor the downgrade authorisation reaches the BMS: a stock
        MCUmgr device judges the image itself at its test boot, docs/smp.md)."""
        self._image = None
        self._component = Manifest.from_json_bytes(decode_header(header).manifest).component("app")
        return self.transfer_state()

    def transfer_state(self) -> TransferState:
        component = self._component
        status = self._request(vendor.UploadStatusRead(), "upload status")
        size = component.image_size if component else status.len
        same = component is None or (
            status.len == component.image_size and bytes(status.sha) == component.image_sha256
        )
        if not same or status.len == 0:
            return TransferState(total_size=size, contiguous_bytes=0, erased=False)
        return TransferState(total_size=size, contiguous_bytes=status.off, erased=True)

    def erase(self) -> None:
        from smpclient.requests.image_management import ImageErase

        self._request(ImageErase(slot=1), "image erase", timeout_s=self.upload_timeout_s)

    def write(self, image: bytes, *, start_offset: int = 0) -> Iterator[int]:
        """Upload ``image``; the first request names ``len`` and ``sha``, and a BMS holding
        part of this image answers with its offset: the upload goes on from there
        (``start_offset`` is only what ``prepare`` reported). Then ``upload_window``
        chunks are in flight (:mod:`bmsfw.protocol.smp._upload`)."""
        from smpclient.exceptions import SMPBadSequence, SMPUploadError
        from smpclient.transport import SMPTransportDisconnected

        from bmsfw.protocol.smp._upload import windowed_upload

        self._image = bytes(image)
        upload = windowed_upload(
            self._client, self._image, window=self.upload_window, timeout_s=self.upload_timeout_s
        )
        offset = start_offset
        try:
            while True:
                try:
                    offset = self._io.run(_next(upload))
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise SmpTransferError(
                        f"{self.address}: no answer to the upload chunk after byte {offset}"
                    ) from exc
                except SMPTransportDisconnected as exc:
                    raise SmpTransferError(
                        f"{self.address}: link lost after byte {offset}: {exc}"
                    ) from exc
                except SMPBadSequence as exc:
                    raise SmpTransferError(
                        f"{self.address}: upload after byte {offset}: {exc}"
                    ) from exc
                except SMPUploadError as exc:
                    if isinstance(exc.args[0], str):
                        raise SmpProtocolError(f"{self.address}: {exc.args[0]}") from exc
                    raise self._refusal(f"upload at byte {offset}", exc.args[0]) from exc
                yield offset
        finally:
            try:
                self._io.run(upload.aclose())
            except Exception as exc:  # a generator stopped mid-request: nothing to keep
                log.debug("closing the upload: %s", exc)

    def _image_hash(self) -> bytes:
        if self._image is None:
            raise DeviceVerifyFailedError("nothing was uploaded in this session")
        tlv = parse_image(self._image).tlv(TLV_SHA256)
        if tlv is None:
            raise DeviceVerifyFailedError("the image has no SHA256 TLV: MCUboot cannot test it")
        return tlv.value

    def verify(self) -> None:
        from smpclient.requests.image_management import ImageStatesWrite

        digest = self._image_hash()
        try:
            self._request(
                ImageStatesWrite(hash=digest, confirm=False),
                "image test",
                timeout_s=self.upload_timeout_s,
            )
        except SmpRefusedError as exc:
            raise DeviceVerifyFailedError(exc.message) from exc

    def _images(self) -> list[Any]:
        from smpclient.requests.image_management import ImageStatesRead

        return list(self._request(ImageStatesRead(), "image list").images)

    def activate(self) -> None:
        digest = self._image_hash()
        if not any(i.hash == digest and i.pending for i in self._images()):
            raise DeviceActivateFailedError(
                f"{self.address}: the uploaded image is not pending for a test boot"
            )

    def reset(self) -> None:
        from smpclient.requests.os_management import ResetWrite

        self._request(ResetWrite(), "reset")

    def wait_boot(self, timeout_s: float, poll_s: float = 0.05) -> BootStatus:
        status = wait_for_application(
            lambda: self.read_boot_status(timeout_s=min(0.5, self.link.timeout_s)),
            timeout_s=timeout_s,
            poll_s=poll_s,
            # rebooting: silent (or a late answer to an earlier poll)
            silent=(SmpNoResponseError, SmpProtocolError),
            who=f"{self.address}:",
        )
        if self._credentials is not None:
            self.authenticate(self._credentials)
        return status

    def read_self_test(self) -> SelfTestResult:
        r = self._request(vendor.SelfTestRead(), "self-test")
        checks = tuple(
            SelfTestCheck(
                name=str(c.get("name", "")),
                passed=bool(c.get("passed", False)),
                value=str(c.get("value", "")),
                limit=str(c.get("limit", "")),
                detail=str(c.get("detail", "")),
            )
            for c in r.checks
        )
        return SelfTestResult(passed=r.state == "passed", checks=checks, version=r.firmware)

    def confirm(self) -> None:
        from smpclient.requests.image_management import ImageStatesWrite

        self._request(ImageStatesWrite(confirm=True), "image confirm")

    def rollback(self) -> None:
        self._request(vendor.RollbackWrite(), "rollback")

    def close(self) -> None:
        try:
            self._io.run(asyncio.wait_for(self._client.disconnect(), 5.0))
        except Exception:  # closing must not mask the update's own result
            log.debug("SMP disconnect failed", exc_info=True)
        self._io.close()

    def __enter__(self) -> SmpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_smp_session(link: SmpLink | str, **kwargs: Any) -> SmpSession:
    """A ``BmsSession`` over SMP; ``link`` as ``--smp`` names it (``serial:/dev/ttyACM0``)."""
    from bmsfw.protocol.smp.link import parse_smp_link

    return SmpSession(parse_smp_link(link) if isinstance(link, str) else link, **kwargs)
