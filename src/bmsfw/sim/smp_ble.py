"""The virtual BMS's SMP server over Bluetooth LE (bumble), with virtual radios.

The standard SMP GATT service (8D53DC1D-1DB7-4CD3-868B-8A527460AA84) with its
one characteristic (DA2E7828-FBCE-4E01-AE9E-261174997C48, write without
response + notify), as Zephyr's ``CONFIG_MCUMGR_TRANSPORT_BT`` exposes it: a
request is written in pieces of at most ATT_MTU - 3 bytes and reassembled by the
SMP header's length; the answer goes back as notifications of the same size.

The air is bumble's ``LocalLink`` with two virtual controllers in this process:
the BMS's own (its host stack runs here too) and a second one whose HCI is
served on a TCP port on loopback. An updater in another process reaches the
BMS through that port exactly as through a USB HCI dongle (bumble transport
``tcp-client:127.0.0.1:PORT`` instead of ``usb:0``): scanning, connecting,
MTU exchange, GATT discovery and notifications all run through real bumble
host stacks and the controllers' link layer.

Pairing: by default the BMS accepts SMP writes only on a link encrypted with a
key from an authenticated LE Secure Connections pairing (like Zephyr with
``CONFIG_BT_SMP_SC_ONLY`` and ``CONFIG_MCUMGR_TRANSPORT_BT_PERM_RW_AUTHEN``): it
pairs as a display with a fixed 6-digit passkey (its label), and drops SMP
frames written on any other link (write without response has no error to
answer with). ``passkey=None`` serves an open BMS (no pairing asked, Just Works
accepted), like a stock MCUmgr sample.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address
from bumble.host import Host
from bumble.keys import PairingKeys
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport.common import AsyncPipeSink
from bumble.transport.tcp_server import open_tcp_server_transport_with_socket

from bmsfw.sim.smp_server import SmpBmsServer

__all__ = ["SMP_CHARACTERISTIC_UUID", "SMP_SERVICE_UUID", "BleSmpServer", "serve_ble"]

log = logging.getLogger(__name__)

SMP_SERVICE_UUID = "8D53DC1D-1DB7-4CD3-868B-8A527460AA84"
SMP_CHARACTERISTIC_UUID = "DA2E7828-FBCE-4E01-AE9E-261174997C48"
_SMP_HEADER = struct.Struct("!BBHHBB")


def ble_address(serial: str) -> str:
    """A static random address derived from the BMS serial (top two bits set)."""
    raw = bytearray(hashlib.sha256(serial.encode()).digest()[:6])
    raw[0] |= 0xC0
    return ":".join(f"{b:02X}" for b in raw)


@dataclass
class BleSmpServer:
    """The running BLE side: the BMS device, the air and the updater's controller port."""

    device: Device
    hci_port: int
    name: str
    address: str
    transports: list[Any] = field(default_factory=list)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "ble_name": self.name,
            "ble_address": self.address,
            "ble_hci": f"tcp-client:127.0.0.1:{self.hci_port}",
        }

    async def close(self) -> None:
        for transport in self.transports:
            await transport.close()


class _FixedPasskey(PairingDelegate):
    """The BMS's side of passkey entry: it 'displays' its fixed passkey (its label)."""

    def __init__(self, passkey: int) -> None:
        super().__init__(io_capability=PairingDelegate.DISPLAY_OUTPUT_ONLY)
        self.passkey = passkey

    async def generate_passkey(self) -> int:
        return self.passkey

    async def display_number(self, number: int, digits: int) -> None:
        log.info("BLE pairing: the BMS shows its passkey")


async def serve_ble(server: SmpBmsServer, *, name: str, passkey: int | None) -> BleSmpServer:
    """Advertise ``name`` with the SMP service on a virtual link; serve SMP over GATT.

    With ``passkey`` the BMS requires an authenticated LE Secure Connections pairing
    with that passkey before it takes SMP frames; ``None``: an open BMS."""
    link = LocalLink()  # type: ignore[no-untyped-call]
    bms_controller = Controller("BMS", link=link)
    host = Host(bms_controller, AsyncPipeSink(bms_controller))
    address = ble_address(server.bms.serial)
    device = Device(name=name, address=Address(address), host=host)
    secure: set[int] = set()  # connection handles paired with SC + passkey
    if passkey is not None:
        delegate = _FixedPasskey(passkey)
        device.pairing_config_factory = lambda _connection: PairingConfig(
            sc=True, mitm=True, bonding=True, delegate=delegate
        )

    def on_connection(connection: Connection) -> None:
        def on_pairing(keys: PairingKeys) -> None:
            mitm = keys.ltk is not None and keys.ltk.authenticated
            if connection.sc and mitm:
                secure.add(connection.handle)
            log.info("BLE paired: SC %s, authenticated %s", connection.sc, mitm)

        connection.on(Connection.EVENT_PAIRING, on_pairing)
        connection.on(
            Connection.EVENT_DISCONNECTION, lambda _reason: secure.discard(connection.handle)
        )

    device.on(Device.EVENT_CONNECTION, on_connection)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    hci = await open_tcp_server_transport_with_socket(sock)
    Controller("updater", host_source=hci.source, host_sink=hci.sink, link=link)

    buffers: dict[int, bytearray] = {}
    sending: set[asyncio.Task[None]] = set()
    notify_lock = asyncio.Lock()
    characteristic: Characteristic[bytes]

    def on_write(connection: Connection, value: bytes) -> None:
        if passkey is not None and not (connection.is_encrypted and connection.handle in secure):
            log.warning("SMP write on a link without LE Secure Connections pairing dropped")
            return
        buffer = buffers.setdefault(connection.handle, bytearray())
        buffer += value
        while len(buffer) >= _SMP_HEADER.size:
            length = _SMP_HEADER.unpack_from(buffer)[2] + _SMP_HEADER.size
            if len(buffer) < length:
                return
            frame = bytes(buffer[:length])
            del buffer[:length]
            log.log(9, "SMP frame in: %d bytes, sequence %d", length, frame[6])
            answer = server.handle(frame)
            log.log(9, "SMP answer: %s", "none" if answer is None else f"{len(answer)} bytes")
            if answer is not None:
                # Keep a reference until it ran (the loop holds tasks only weakly); the
                # lock sends the answers in the order of their requests, never interleaved.
                task = asyncio.get_running_loop().create_task(_notify(connection, answer))
                sending.add(task)
                task.add_done_callback(sending.discard)

    async def _notify(connection: Connection, answer: bytes) -> None:
        piece = max(20, connection.att_mtu - 3)
        async with notify_lock:
            log.log(9, "SMP answer out: sequence %d, %d bytes", answer[6], len(answer))
            for start in range(0, len(answer), piece):
                chunk = answer[start : start + piece]
                await device.notify_subscriber(connection, characteristic, chunk)

    characteristic = Characteristic(
        SMP_CHARACTERISTIC_UUID,
        Characteristic.Properties.WRITE_WITHOUT_RESPONSE | Characteristic.Properties.NOTIFY,
        Characteristic.Permissions.WRITEABLE | Characteristic.Permissions.READABLE,
        CharacteristicValue(write=on_write),
    )
    device.add_service(Service(SMP_SERVICE_UUID, [characteristic]))
    await device.power_on()
    advertising = bytes(
        AdvertisingData(
            [
                (AdvertisingData.FLAGS, bytes([0x06])),
                (AdvertisingData.COMPLETE_LOCAL_NAME, name.encode()[:20]),
            ]
        )
    )
    scan_response = bytes(
        AdvertisingData(
            [
                (
                    AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                    bytes.fromhex(SMP_SERVICE_UUID.replace("-", ""))[::-1],
                )
            ]
        )
    )
    await device.start_advertising(
        auto_restart=True, advertising_data=advertising, scan_response_data=scan_response
    )
    log.info(
        "BLE: %s (%s) advertises SMP; updater HCI on tcp %d", name, address, sock.getsockname()[1]
    )
    return BleSmpServer(device, sock.getsockname()[1], name, address, [hci])
