"""An in-process ``BmsSession`` straight onto a :class:`VirtualBms`, without a transport.

For library users (bench scripts, notebooks) and fast pipeline tests on a
simulated clock. It is *not* evidence that an update works over a real link:
end-to-end tests drive ``bmsfw`` over CAN/RS485 against virtual BMS processes.

Authentication is real: the tester chain must lead to the root key hash fused
in the device's OTP, and the tester must sign a fresh challenge with its key
(the same checks the UDS server makes for service 0x29).

Encoded transfers go the way the protocol servers take them: :meth:`write`
given the staged component's *stored* bytes (compressed, delta patch,
ciphertext) feeds them to :class:`~bmsfw.sim._stream_decode.EncodedTransfer`
and finishes the stream (sizes, digests, delta applied) after the last block;
a delta for another base or an encrypted image without the device key is
refused in :meth:`prepare`, before anything is erased.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Literal

from bmsfw.errors import TransportError
from bmsfw.package import Component, Manifest, decode_header
from bmsfw.protocol.device_errors import DeviceNotRunningError, PowerCutError
from bmsfw.protocol.errors import DeviceBootTimeoutError, UdsCertificateRejectedError
from bmsfw.protocol.session import (
    BootStatus,
    ConfigSnapshot,
    DeviceIdentity,
    LinkQuality,
    SelfTestResult,
    Telemetry,
    TesterCredentials,
    TransferState,
)
from bmsfw.sim._stream_decode import (
    EncodedTransfer,
    active_image_digest,
    check_release,
)
from bmsfw.sim.bms import VirtualBms

__all__ = ["DirectSession"]


def _is_encoded(component: Component) -> bool:
    return component.encoding != "raw" or component.is_delta or component.encryption != "none"


class DirectSession:
    """``BmsSession`` over a ``VirtualBms`` object in this process."""

    #: ``write`` takes a component's stored bytes as well as decoded images.
    accepts_stored = True

    def __init__(self, bms: VirtualBms, *, block_size: int | None = None) -> None:
        self.bms = bms
        self.block_size = block_size or bms.spec.transfer_block_size
        self.authenticated = False
        self._staged: Component | None = None  # app component of the last staged header

    @property
    def address(self) -> str:
        return f"direct:{self.bms.serial}"

    def identify(self) -> DeviceIdentity:
        return dataclasses.replace(self.bms.identity(), address=self.address)

    def read_telemetry(self) -> Telemetry:
        return self.bms.telemetry()

    def read_boot_status(self) -> BootStatus:
        return self.bms.boot_status()

    def read_image_digest(self) -> bytes:
        return active_image_digest(self.bms)

    def link_check(self) -> LinkQuality:
        # No wire: the "echo" is one call into the device core.
        self.bms.poll()
        return LinkQuality(
            echo_ok=True, round_trips=1, errors=0, rate="in-process", rate_matches=True
        )

    def read_config(self) -> ConfigSnapshot:
        return self.bms.config_snapshot()

    def write_config(self, snapshot: ConfigSnapshot) -> None:
        self.bms.restore_snapshot(snapshot)

    def authenticate(self, credentials: TesterCredentials) -> None:
        from cryptography import x509

        from bmsfw.protocol.uds._auth import (
            TesterCertificateRejected,
            chain_pem_to_der,
            sign_challenge,
            verify_proof,
            verify_tester_chain,
        )

        try:
            verify_tester_chain(
                chain_pem_to_der(credentials.certificate_chain_pem),
                root_key_hash=self.bms.otp.root_key_hash,
                now=self.bms.clock.now(),
            )
        except (TesterCertificateRejected, ValueError) as exc:
            raise UdsCertificateRejectedError(f"tester certificate rejected: {exc}") from exc
        challenge = os.urandom(32)
        proof = sign_challenge(credentials.private_key_pem, challenge, credentials.passphrase)
        leaf = x509.load_pem_x509_certificates(credentials.certificate_chain_pem)[0]
        if not verify_proof(leaf.public_key(), challenge, proof):  # type: ignore[arg-type]
            raise UdsCertificateRejectedError("proof of possession failed")
        self.authenticated = True

    @property
    def staged_component(self) -> Component | None:
        """The app component of the header last staged with :meth:`prepare`."""
        return self._staged

    def prepare(
        self,
        header: bytes,
        *,
        channel: Literal["wired", "ota"] = "wired",
        downgrade_authorised: bool = False,
    ) -> TransferState:
        self._staged = None
        # as the UDS and Modbus servers do: refusals that must come before any erase
        check_release(self.bms, header)
        component = Manifest.from_json_bytes(decode_header(header).manifest).component("app")
        status = self.bms.begin_update(
            header, channel=channel, downgrade_authorised=downgrade_authorised
        )
        self._staged = component
        return TransferState(
            total_size=status.total_size,
            contiguous_bytes=status.contiguous_bytes,
            erased=status.erased,
            missing_ranges=status.missing_ranges,
        )

    def erase(self) -> None:
        self.bms.erase_inactive()

    def write(self, image: bytes, *, start_offset: int = 0) -> Iterator[int]:
        """Transfer ``image[start_offset:]``; yields the offset reached after each block.

        ``image`` is the decoded image (resumable at any byte), or the staged
        component's stored bytes when it is stored encoded and ``len(image)`` is its
        ``stored_size``: those are decoded by the BMS and always start at 0.
        """
        component = self._staged
        if component is not None and _is_encoded(component):
            if len(image) == component.stored_size:
                yield from self._write_encoded(image, start_offset)
                return
            if component.encryption != "none":
                # the BMS holds only the ciphertext's digest: decoded bytes cannot verify
                raise ValueError(
                    "the staged image is encrypted: send its stored bytes "
                    f"({component.stored_size} bytes), not {len(image)}"
                )
        offset = start_offset
        while offset < len(image):
            chunk = image[offset : offset + self.block_size]
            try:
                offset = self.bms.write_inactive(offset, chunk)
            except PowerCutError as exc:
                # Seen from the tester a BMS without power simply stops answering.
                raise TransportError(f"the BMS stopped answering at byte {offset}: {exc}") from exc
            yield offset

    def _write_encoded(self, stored: bytes, start_offset: int) -> Iterator[int]:
        if start_offset != 0:
            raise ValueError("an encoded transfer cannot resume: it starts at byte 0")
        try:
            transfer = EncodedTransfer(self.bms)
            offset = 0
            while offset < len(stored):
                chunk = stored[offset : offset + self.block_size]
                transfer.feed(chunk)
                offset += len(chunk)
                if offset == len(stored):
                    # the servers' RequestTransferExit / end of stream: sizes, digests,
                    # a delta applied active -> inactive, before anything can verify
                    transfer.finish()
                yield offset
        except PowerCutError as exc:
            raise TransportError(f"the BMS stopped answering during the stream: {exc}") from exc

    def verify(self) -> None:
        self.bms.verify_inactive()

    def activate(self) -> None:
        self.bms.activate()

    def reset(self) -> None:
        self.bms.reset()

    def wait_boot(self, timeout_s: float) -> BootStatus:
        try:
            return self.bms.wait_boot(timeout_s)
        except DeviceNotRunningError as exc:
            raise DeviceBootTimeoutError(str(exc)) from exc

    def read_self_test(self) -> SelfTestResult:
        return self.bms.self_test()

    def confirm(self) -> None:
        self.bms.confirm()

    def rollback(self) -> None:
        self.bms.rollback()

    def close(self) -> None:
        """The caller owns the VirtualBms; nothing to release here."""
