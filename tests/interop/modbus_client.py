"""A stock Modbus RTU tester for a bmsfw BMS: pymodbus (+ cryptography), nothing else.

Written only from docs/modbus.md: register addresses, commands and record layouts
are typed in from that page. It imports nothing of bmsfw
(tests/interop/test_isolation.py checks that).

The simulated line is a pty, which the kernel cannot open with parity: the client
opens it at 8N1 (docs/modbus.md, "Simulated strings"; the simulated line carries
bytes, so an 8N1 client talks to the 8E1 BMS unchanged).
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass

from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ModbusException

from .uds_client import Credentials

UNIT = 1
# docs/modbus.md, input registers
PACK_CURRENT, RUN_STATE, IMAGE_STATE = 0x0004, 0x0100, 0x0102
SECURITY_COUNTER, RUNNING_VERSION, REVERT_REASON = 0x0104, 0x0106, 0x0116
SELFTEST_STATE, LAST_RESULT, AUTH_STATE, LAST_MESSAGE = 0x0200, 0x0301, 0x0309, 0x0310
BLOCK_SIZE, BLOCK_COUNT = 0x0306, 0x0307
CHALLENGE, CHALLENGE_LENGTH, BLOCK_CRC = 0x0400, 0x0420, 0x0A00
IMAGE_KEY_COUNT, IMAGE_KEY_HASHES = 0x0150, 0x0151
# holding registers
COMMAND_ARG, UPLOAD_LENGTH, UPLOAD, TRANSFER_WINDOW = 0x1000, 0x1002, 0x2000, 0x8000
# commands
PREPARE, ERASE, VERIFY, ACTIVATE, RESET, CONFIRM, ROLLBACK = 1, 2, 3, 4, 5, 6, 7
AUTH_CHALLENGE, AUTH_PROVE = 8, 9
RUN_STATES = ("off", "bootloader", "booting", "self-test", "application")
IMAGE_STATES = ("none", "confirmed", "test", "reverted")


class Refused(Exception):  # noqa: N818 - the BMS's answer, not a client failure
    """An exception response to a command; ``result`` is ``last_result``."""

    def __init__(self, command: int, exception_code: int, result: int, message: str) -> None:
        self.command, self.exception_code, self.result = command, exception_code, result
        super().__init__(f"command {command}: exception {exception_code}, {result} {message}")


@dataclass(frozen=True)
class Status:
    run_state: str
    image_state: str
    version: str
    security_counter: int
    revert_reason: str


def regs_to_bytes(regs: list[int]) -> bytes:
    return b"".join(struct.pack(">H", r) for r in regs)


def bytes_to_regs(data: bytes) -> list[int]:
    data = data + b"\0" * (len(data) % 2)  # an odd length gets one pad byte
    return list(struct.unpack(f">{len(data) // 2}H", data))


def ascii_of(regs: list[int]) -> str:
    return regs_to_bytes(regs).split(b"\0", 1)[0].decode()


def open_client(pty: str) -> ModbusSerialClient:
    client = ModbusSerialClient(pty, baudrate=115200, bytesize=8, parity="N", stopbits=1, timeout=1)
    for _ in range(20):  # a pty shared by a busy machine: give the open a few tries
        if client.connect():
            return client
        time.sleep(0.1)
    raise AssertionError(f"cannot open {pty}")


def read_input(client: ModbusSerialClient, address: int, count: int) -> list[int]:
    response = client.read_input_registers(address, count=count, device_id=UNIT)
    assert not response.isError(), response
    return list(response.registers)


def image_keys(client: ModbusSerialClient) -> list[bytes]:
    """docs/modbus.md "Image keys": image_key_count, then 16 registers per SHA-256."""
    (count,) = read_input(client, IMAGE_KEY_COUNT, 1)
    raw = regs_to_bytes(read_input(client, IMAGE_KEY_HASHES, 16 * count)) if count else b""
    return [raw[32 * i : 32 * i + 32] for i in range(count)]


def status(client: ModbusSerialClient) -> Status:
    regs = read_input(client, RUN_STATE, REVERT_REASON + 32 - RUN_STATE)
    at = lambda a, n=1: regs[a - RUN_STATE : a - RUN_STATE + n]  # noqa: E731
    return Status(
        RUN_STATES[at(RUN_STATE)[0]],
        IMAGE_STATES[at(IMAGE_STATE)[0]],
        ascii_of(at(RUNNING_VERSION, 16)),
        at(SECURITY_COUNTER, 2)[0] << 16 | at(SECURITY_COUNTER, 2)[1],
        ascii_of(at(REVERT_REASON, 32)),
    )


def command(client: ModbusSerialClient, cmd: int, arg: int = 0) -> None:
    """docs/modbus.md "Commands and results": write [argument, command] at 0x1000."""
    response = client.write_registers(COMMAND_ARG, [arg, cmd], device_id=UNIT)
    if response.isError():
        result = read_input(client, LAST_RESULT, 1)[0]
        message = ascii_of(read_input(client, LAST_MESSAGE, 64))
        raise Refused(cmd, response.exception_code, result, message)


def upload(client: ModbusSerialClient, data: bytes) -> None:
    regs = bytes_to_regs(data)
    for i in range(0, len(regs), 123):  # at most 123 registers per 0x10 write
        assert not client.write_registers(UPLOAD + i, regs[i : i + 123], device_id=UNIT).isError()
    n = len(data)
    assert not client.write_registers(
        UPLOAD_LENGTH, [n >> 16, n & 0xFFFF], device_id=UNIT
    ).isError()


def authenticate(client: ModbusSerialClient, tester: Credentials) -> None:
    command(client, AUTH_CHALLENGE)
    length = read_input(client, CHALLENGE_LENGTH, 1)[0]
    challenge = regs_to_bytes(read_input(client, CHALLENGE, 32))[:length]
    chain = tester.certificate_client
    signature = tester.prove(challenge)
    proof = b"BMA1" + struct.pack(">I", len(chain)) + chain + struct.pack(">I", len(signature))
    upload(client, proof + signature)
    command(client, AUTH_PROVE)
    assert read_input(client, AUTH_STATE, 1) == [2]  # authenticated


def write_image(client: ModbusSerialClient, image: bytes) -> None:
    """Window writes: [page, data...] at 0x7FFF + (offset mod 65536) / 2, <= 122 data regs."""
    offset = 0
    while offset < len(image):
        in_page = offset % 65536
        chunk = image[offset : offset + min(244, 65536 - in_page)]
        values = [offset // 65536, *bytes_to_regs(chunk)]
        response = client.write_registers(
            TRANSFER_WINDOW - 1 + in_page // 2, values, device_id=UNIT
        )
        assert not response.isError(), (offset, response)
        offset += len(chunk)


def block_crcs(client: ModbusSerialClient) -> list[int]:
    count = read_input(client, BLOCK_COUNT, 1)[0]
    regs: list[int] = []
    for i in range(0, 2 * count, 124):
        regs += read_input(client, BLOCK_CRC + i, min(124, 2 * count - i))
    return [regs[i] << 16 | regs[i + 1] for i in range(0, len(regs), 2)]


def image_block_crcs(client: ModbusSerialClient, image: bytes) -> list[int]:
    size = read_input(client, BLOCK_SIZE, 1)[0]
    return [zlib.crc32(image[i : i + size]) for i in range(0, len(image), size)]


def wait_application(client: ModbusSerialClient, timeout_s: float = 20.0) -> Status:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            now = status(client)
            if now.run_state == "application":
                return now
        except (ModbusException, AssertionError):
            pass  # rebooting: the BMS is silent
        time.sleep(0.1)
    raise TimeoutError("the BMS did not come back into its application")


def flash(client: ModbusSerialClient, tester: Credentials, header: bytes, image: bytes) -> Status:
    """docs/modbus.md "Update sequence" up to the self-test: the image runs as a test image."""
    authenticate(client, tester)
    upload(client, header)
    command(client, PREPARE, 0)  # 0 = wired
    command(client, ERASE)
    write_image(client, image)
    assert block_crcs(client) == image_block_crcs(client, image)
    command(client, VERIFY)
    command(client, ACTIVATE)
    command(client, RESET)
    return wait_application(client)
