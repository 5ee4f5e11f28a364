"""A plain udsoncan + can-isotp tester, written only against ISO 14229-1 and docs/uds.md.

It imports nothing from bmsfw's UDS client, codec or transport: ids, DIDs,
routines and record layouts are typed in from the documentation, and udsoncan
runs with its own defaults except the DID codecs it needs. Only the test
scaffolding (the simulator process, the signed release, the tester
certificate) comes from bmsfw.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import can
import isotp
import udsoncan
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from udsoncan.client import Client
from udsoncan.connections import PythonIsoTpConnection

from bmsfw.device.sim_can import SimCanProcess
from bmsfw.protocol.session import TesterCredentials as Credentials

from .conftest import Release, unique_link

# docs/uds.md: node 1 is reached on 0x7E0 -> 0x7E8
REQUEST_ID, RESPONSE_ID = 0x7E0, 0x7E8
DID_SOFTWARE_VERSION = 0xF189
DID_BOOT_STATUS = 0x0120
RID_ERASE, RID_CHECK, RID_STAGE, RID_ACTIVATE, RID_CONFIRM = 0xFF00, 0xFF01, 0x0201, 0x0202, 0x0203


class AsciiCodec(udsoncan.DidCodec):
    def decode(self, payload: bytes) -> Any:
        return payload.decode()

    def __len__(self) -> int:
        raise udsoncan.DidCodec.ReadAllRemainingData


class RawCodec(udsoncan.DidCodec):
    def decode(self, payload: bytes) -> Any:
        return bytes(payload)

    def __len__(self) -> int:
        raise udsoncan.DidCodec.ReadAllRemainingData


def test_plain_udsoncan_client_flashes_the_virtual_bms(
    tmp_path: Path, state_dir: Path, tester: Credentials, release_v2: Release
) -> None:
    link = unique_link()
    group, port = link.split(":")[1].split(",")[0], int(link.split("port=")[1])
    with SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"):
        bus = can.Bus(interface="udp_multicast", channel=group, port=port)
        notifier = can.Notifier(bus, [], timeout=0.05)
        # on udp_multicast grant a bounded block size (the docs say so); pad to 8 bytes
        # P2 runs from the end of the request's transmission (ISO 14229-2): blocking send
        params = {
            "blocksize": 16,
            "tx_padding": 0xCC,
            "max_frame_size": 65535,
            "blocking_send": True,
        }
        stack = isotp.NotifierBasedCanStack(
            bus,
            notifier,
            address=isotp.Address(
                isotp.AddressingMode.Normal_11bits, txid=REQUEST_ID, rxid=RESPONSE_ID
            ),
            params=params,
        )
        config = dict(udsoncan.configs.default_client_config)
        config["data_identifiers"] = {
            DID_SOFTWARE_VERSION: AsciiCodec,
            DID_BOOT_STATUS: RawCodec,
        }
        try:
            with Client(PythonIsoTpConnection(stack), config=config) as client:  # type: ignore[arg-type]
                version = client.read_data_by_identifier(DID_SOFTWARE_VERSION)
                assert version.service_data.values[DID_SOFTWARE_VERSION] == "1.0.0"

                client.change_session(0x02)  # programming
                # 0x29 APCE: certificate chain as concatenated DER, leaf first
                certs = x509.load_pem_x509_certificates(tester.certificate_chain_pem)
                der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)
                response = client.verify_certificate_unidirectional(0x00, der, b"")
                challenge = response.service_data.challenge_server
                key = serialization.load_pem_private_key(tester.private_key_pem, None)
                proof = key.sign(challenge)  # type: ignore[call-arg,union-attr]
                client.proof_of_ownership(proof, b"")

                # stage the release header: option record = channel 0x00 (wired) + header
                result = client.start_routine(RID_STAGE, b"\x00" + release_v2.header)
                record = result.service_data.routine_status_record
                assert record[0] == 0x00, record
                client.start_routine(RID_ERASE)

                location = udsoncan.MemoryLocation(0, len(release_v2.image), 32, 32)
                download = client.request_download(location)
                block = download.service_data.max_length - 2  # SID + counter count
                counter = 1
                for offset in range(0, len(release_v2.image), block):
                    client.transfer_data(counter, release_v2.image[offset : offset + block])
                    counter = (counter + 1) & 0xFF
                client.request_transfer_exit()

                check = client.start_routine(RID_CHECK)
                assert check.service_data.routine_status_record[:1] == b"\x00"
                client.start_routine(RID_ACTIVATE)
                client.ecu_reset(0x01)

                deadline = time.monotonic() + 20
                state = b""
                while time.monotonic() < deadline:
                    try:
                        raw = client.read_data_by_identifier(DID_BOOT_STATUS)
                        state = raw.service_data.values[DID_BOOT_STATUS]
                        if state[0] == 0:  # run state 0 = application
                            break
                    except (
                        udsoncan.exceptions.TimeoutException,
                        udsoncan.exceptions.NegativeResponseException,
                    ):
                        pass
                    time.sleep(0.1)
                assert state[:2] == b"\x00\x01"  # application, image state 1 = test

                client.change_session(0x03)  # extended: confirm after reset
                response = client.verify_certificate_unidirectional(0x00, der, b"")
                client.proof_of_ownership(key.sign(response.service_data.challenge_server), b"")  # type: ignore[call-arg,union-attr]
                client.start_routine(RID_CONFIRM)
                version = client.read_data_by_identifier(DID_SOFTWARE_VERSION)
                assert version.service_data.values[DID_SOFTWARE_VERSION] == "1.1.0"
                raw = client.read_data_by_identifier(DID_BOOT_STATUS)
                assert raw.service_data.values[DID_BOOT_STATUS][1] == 0  # confirmed
        finally:
            notifier.stop()
            bus.shutdown()
