"""A stock UDS tester for a bmsfw BMS: udsoncan + can-isotp + python-can, nothing else.

Written only from docs/uds.md and ISO 14229-1: every identifier, routine and
record layout below is typed in from that page. It imports nothing of bmsfw
(tests/interop/test_isolation.py checks that), so it is what a BMS team's own
tester would be.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import can
import isotp
import udsoncan
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from udsoncan.client import Client
from udsoncan.connections import PythonIsoTpConnection

# docs/uds.md, "Addressing": node n answers 0x7E8 + n - 1 to requests on 0x7E0 + n - 1
REQUEST_ID, RESPONSE_ID = 0x7E0, 0x7E8
# docs/uds.md, "Data identifiers" and "Routines"
DID_SOFTWARE_VERSION = 0xF189
DID_SECURITY_COUNTER = 0x0100
DID_PACK_CURRENT = 0x0112
DID_BOOT_STATUS = 0x0120
DID_IMAGE_KEYS = 0x0103
DID_FLASH_LAYOUT = 0x0104
RID_ERASE, RID_CHECK = 0xFF00, 0xFF01
RID_STAGE, RID_ACTIVATE, RID_CONFIRM, RID_ROLLBACK = 0x0201, 0x0202, 0x0203, 0x0204
RUN_STATES = ("application", "booting", "self-test", "bootloader", "off")
IMAGE_STATES = ("confirmed", "test", "reverted", "none")


class _Ascii(udsoncan.DidCodec):
    def decode(self, payload: bytes) -> Any:
        return bytes(payload).decode()

    def __len__(self) -> int:
        raise udsoncan.DidCodec.ReadAllRemainingData


class _Raw(udsoncan.DidCodec):
    def decode(self, payload: bytes) -> Any:
        return bytes(payload)

    def __len__(self) -> int:
        raise udsoncan.DidCodec.ReadAllRemainingData


@dataclass(frozen=True)
class BootStatus:
    """DID 0x0120: run state u8, image state u8, bank str8, version str8, boot count u32,
    security counter u32, last revert reason str8."""

    run_state: str
    image_state: str
    bank: str
    version: str
    security_counter: int
    revert_reason: str

    @classmethod
    def decode(cls, data: bytes) -> BootStatus:
        pos = 2

        def str8() -> str:
            nonlocal pos
            n = data[pos]
            text = data[pos + 1 : pos + 1 + n].decode()
            pos += 1 + n
            return text

        bank, version = str8(), str8()
        _boots, counter = struct.unpack_from(">II", data, pos)
        pos += 8
        return cls(RUN_STATES[data[0]], IMAGE_STATES[data[1]], bank, version, counter, str8())


@dataclass(frozen=True)
class Credentials:
    """The technician's credentials: certificate chain (PEM, leaf first, root last) and key."""

    chain_pem: bytes
    key_pem: bytes

    @property
    def certificate_client(self) -> bytes:
        """docs/uds.md: DER certificates concatenated, leaf first, ending with the root."""
        certs = x509.load_pem_x509_certificates(self.chain_pem)
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)

    def prove(self, challenge: bytes) -> bytes:
        key = serialization.load_pem_private_key(self.key_pem, None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(challenge)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(challenge, ec.ECDSA(hashes.SHA256()))


@contextmanager
def connect(group: str, port: int, node: int = 1) -> Iterator[Client]:
    """A udsoncan client on the udp_multicast CAN bus ``group``:``port``."""
    bus = can.Bus(interface="udp_multicast", channel=group, port=port)
    notifier = can.Notifier(bus, [], timeout=0.05)
    # docs/uds.md: pad classic frames with 0xCC, bounded block size on udp_multicast,
    # blocking send (P2 runs from the end of the request's transmission)
    params = {"blocksize": 16, "tx_padding": 0xCC, "max_frame_size": 65535, "blocking_send": True}
    stack = isotp.NotifierBasedCanStack(
        bus,
        notifier,
        address=isotp.Address(
            isotp.AddressingMode.Normal_11bits,
            txid=REQUEST_ID + node - 1,
            rxid=RESPONSE_ID + node - 1,
        ),
        params=params,
    )
    config = dict(udsoncan.configs.default_client_config)
    config["p2_timeout"] = 2.0  # P2 is 50 ms; a loaded bench may answer later
    # docs/uds.md: "Testers should not adopt P2 blindly" -- udsoncan would adopt the 50 ms
    # the session control answers, which a loaded machine misses (seen in a CI run)
    config["use_server_timing"] = False
    config["data_identifiers"] = {
        DID_SOFTWARE_VERSION: _Ascii,
        DID_SECURITY_COUNTER: _Raw,
        DID_PACK_CURRENT: _Raw,
        DID_BOOT_STATUS: _Raw,
        DID_IMAGE_KEYS: _Raw,
        DID_FLASH_LAYOUT: _Raw,
    }
    try:
        with Client(PythonIsoTpConnection(stack), config=config) as client:  # type: ignore[arg-type]
            yield client
    finally:
        notifier.stop()
        bus.shutdown()


def read(client: Client, did: int) -> Any:
    return client.read_data_by_identifier(did).service_data.values[did]


def boot_status(client: Client) -> BootStatus:
    return BootStatus.decode(read(client, DID_BOOT_STATUS))


def image_keys(client: Client) -> list[bytes]:
    """DID 0x0103: uint8 n, then n SHA-256 values of the fused image-verification keys."""
    data = read(client, DID_IMAGE_KEYS)
    assert len(data) == 1 + 32 * data[0], data
    return [data[1 + 32 * i : 33 + 32 * i] for i in range(data[0])]


def flash_layout(client: Client) -> tuple[int, int, int]:
    """DID 0x0104: bank size u32, sector size u32 (bytes), number of banks u8."""
    data = read(client, DID_FLASH_LAYOUT)
    assert len(data) == 9, data
    bank, sector, banks = struct.unpack(">IIB", data)
    return bank, sector, banks


def key_hash(public_key_pem: bytes) -> bytes:
    """docs/uds.md: SHA-256 of the key's DER SubjectPublicKeyInfo (imgtool's KEYHASH)."""
    key = serialization.load_pem_public_key(public_key_pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def authenticate(client: Client, tester: Credentials, session: int) -> None:
    """Session 0x02/0x03, then 0x29 APCE: certificate, then proof of possession."""
    client.change_session(session)
    response = client.verify_certificate_unidirectional(0x00, tester.certificate_client, b"")
    assert response.service_data.return_value == 0x11  # certificate verified, prove ownership
    proof = tester.prove(response.service_data.challenge_server)
    answer = client.proof_of_ownership(proof, b"")
    assert answer.service_data.return_value == 0x12  # ownership verified


def wait_application(client: Client, timeout_s: float = 20.0) -> BootStatus:
    """Poll DID 0x0120 through the reboot until the run state is 0 (application)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = boot_status(client)
            if status.run_state == "application":
                return status
        except udsoncan.exceptions.NegativeResponseException:
            pass  # 0x22 while booting
        except udsoncan.exceptions.TimeoutException:
            # a late answer to this request must not be taken for the next one's
            time.sleep(1.0)
            client.conn.empty_rxqueue()
        time.sleep(0.1)
    raise TimeoutError("the BMS did not come back into its application")


def flash(client: Client, tester: Credentials, header: bytes, image: bytes) -> BootStatus:
    """docs/uds.md "Flash sequence" steps 3 to 13: the new image runs as a test image."""
    authenticate(client, tester, 0x02)
    staged = client.start_routine(RID_STAGE, b"\x00" + header)  # flags 0x00: wired
    record = staged.service_data.routine_status_record
    assert record[:1] == b"\x00", record
    client.start_routine(RID_ERASE)
    download = client.request_download(udsoncan.MemoryLocation(0, len(image), 32, 32))
    block = download.service_data.max_length - 2  # the limit counts SID and counter
    counter = 1
    for offset in range(0, len(image), block):
        client.transfer_data(counter, image[offset : offset + block])
        counter = (counter + 1) & 0xFF
    client.request_transfer_exit()
    check = client.start_routine(RID_CHECK).service_data.routine_status_record
    assert check[:1] == b"\x00", check
    client.start_routine(RID_ACTIVATE)
    client.ecu_reset(0x01)
    return wait_application(client)


def confirm(client: Client, tester: Credentials) -> None:
    authenticate(client, tester, 0x03)  # the reset ended the programming session
    client.start_routine(RID_CONFIRM)


def rollback(client: Client, tester: Credentials) -> None:
    authenticate(client, tester, 0x03)
    client.start_routine(RID_ROLLBACK)
