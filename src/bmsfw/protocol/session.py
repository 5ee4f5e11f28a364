"""The one interface the update pipeline uses to talk to a BMS.

``BmsSession`` is transport-independent: there is one implementation per
application protocol (UDS over ISO-TP on CAN, Modbus RTU on RS485/USB), and
nothing above ``bmsfw.protocol`` knows which one it holds. The records below are
the client's view of the device, decoded from DIDs or registers; they are plain
frozen dataclasses so reports can serialise them with ``dataclasses.asdict``.

Sequence the pipeline drives (docs/update-procedure.md)::

    identify -> read_telemetry / link_check -> read_config -> authenticate
    -> prepare(header) -> erase (unless resuming) -> write(...)* -> verify
    -> activate -> reset -> wait_boot -> read_self_test -> confirm | rollback
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "BleLinkFacts",
    "BmsSession",
    "BootStatus",
    "ConfigSnapshot",
    "DeviceIdentity",
    "FlashLayout",
    "LinkQuality",
    "RadioLink",
    "SelfTestCheck",
    "SelfTestResult",
    "StoredBytesWriter",
    "Telemetry",
    "TesterCredentials",
    "TransferState",
    "decode_staging_flags",
    "staging_flags",
]

ImageState = Literal["confirmed", "test", "reverted", "none"]
RunState = Literal["application", "booting", "self-test", "bootloader", "off"]
Channel = Literal["wired", "ota"]

# The flags that come with a release header when it is staged (UDS routine 0x0201's
# first option byte, the Modbus PREPARE command's argument): bit 0 the channel (0 wired,
# 1 over the air), bit 1 "a person authorised this downgrade" (the host's update core
# allowed a lower version with a recorded reason). Other bits are refused by the BMS.
STAGING_OTA = 0x01
STAGING_DOWNGRADE_AUTHORISED = 0x02


def staging_flags(channel: Channel, *, downgrade_authorised: bool = False) -> int:
    """The staging flags of a request (docs/uds.md, docs/modbus.md)."""
    return (STAGING_OTA if channel == "ota" else 0) | (
        STAGING_DOWNGRADE_AUTHORISED if downgrade_authorised else 0
    )


def decode_staging_flags(value: int) -> tuple[Channel, bool]:
    """``(channel, downgrade_authorised)`` of staging flags; ValueError for unknown bits."""
    if value & ~(STAGING_OTA | STAGING_DOWNGRADE_AUTHORISED):
        raise ValueError(f"unknown staging flags 0x{value:02x} (bit 0 OTA, bit 1 downgrade)")
    channel: Channel = "ota" if value & STAGING_OTA else "wired"
    return channel, bool(value & STAGING_DOWNGRADE_AUTHORISED)


@dataclass(frozen=True)
class FlashLayout:
    """The BMS's image banks as it reports them (UDS DID 0x0104); checked by the host
    against the release image before anything is written (``core.decide_start``)."""

    bank_size_bytes: int
    sector_size_bytes: int
    banks: int


@dataclass(frozen=True)
class DeviceIdentity:
    vendor: str
    model: str
    hw_revision: str
    serial: str
    bootloader_version: str
    app_version: str
    security_counter: int
    active_bank: str
    address: str = ""  # how this session reaches it, e.g. "can:udp_multicast/node 3"
    # Lower-case hex SHA-256 of each image-verification key the BMS's bootloader holds
    # (its fused MCUboot key hashes: UDS DID 0x0103, Modbus input registers 0x0150,
    # SMP identity). Empty: the BMS does not report them; only the BMS checks the key.
    image_key_hashes: tuple[str, ...] = ()
    # The bank geometry the BMS reports (UDS DID 0x0104); None: not reported, so only
    # the BMS itself judges whether the image fits (at the release header).
    flash_layout: FlashLayout | None = None


@dataclass(frozen=True)
class Telemetry:
    soc_pct: float
    pack_voltage_v: float
    pack_current_a: float
    cell_voltages_v: tuple[float, ...]
    temperatures_c: tuple[float, ...]
    supply_voltage_v: float
    faults: tuple[str, ...] = ()
    contactors_closed: bool = True
    # Where each value came from, by field name, when a session reads more than one
    # source (e.g. "dbc:BMS_Status.SOC" from a CAN broadcast); empty: the session's protocol.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class BootStatus:
    run_state: RunState
    active_bank: str
    running_version: str
    image_state: ImageState
    boot_count: int
    security_counter: int
    last_revert_reason: str = ""


@dataclass(frozen=True)
class SelfTestCheck:
    name: str
    passed: bool
    value: str = ""
    limit: str = ""
    detail: str = ""


@dataclass(frozen=True)
class SelfTestResult:
    passed: bool
    checks: tuple[SelfTestCheck, ...]
    version: str = ""


@dataclass(frozen=True)
class BleLinkFacts:
    """What a Bluetooth LE connection is, as the host stack sees it (SMP over BLE).

    The preflight judges them against the product profile's ``[ble]`` limits
    (:func:`bmsfw.update.core.judge_ble_link`)."""

    att_mtu: int  # negotiated ATT MTU (an ATT write carries att_mtu - 3 bytes)
    interval_ms: float  # connection interval
    rssi_dbm: int | None  # None: the controller does not report it
    encrypted: bool
    secure_connections: bool  # LE Secure Connections (not legacy pairing)
    mitm: bool  # the key comes from an authenticated pairing (passkey or numeric comparison)


@dataclass(frozen=True)
class LinkQuality:
    echo_ok: bool
    round_trips: int
    errors: int
    rate: str  # "500000 bit/s CAN", "115200 8E1"
    rate_matches: bool
    round_trip_ms: float = 0.0
    ble: BleLinkFacts | None = None  # a Bluetooth LE link's facts (None on a wire)


@dataclass(frozen=True)
class TransferState:
    """What the device already holds for the staged update (for resume)."""

    total_size: int
    contiguous_bytes: int  # bytes written from offset 0 without a gap
    erased: bool
    missing_ranges: tuple[tuple[int, int], ...] = ()  # (offset, length)


@dataclass(frozen=True)
class ConfigSnapshot:
    schema_version: int
    config: Mapping[str, Any]
    calibration: Mapping[str, Any]
    checksum: str  # hex SHA-256 of the canonical JSON of config + calibration


@dataclass(frozen=True)
class TesterCredentials:
    """What the tester proves to the BMS: a certificate chained to the vendor root."""

    certificate_chain_pem: bytes
    private_key_pem: bytes
    passphrase: bytes | None = field(default=None, repr=False)


@runtime_checkable
class BmsSession(Protocol):
    """A connection to one BMS. Methods raise ``BmsfwError`` subclasses only."""

    def identify(self) -> DeviceIdentity: ...

    def read_telemetry(self) -> Telemetry: ...

    def read_boot_status(self) -> BootStatus: ...

    def read_image_digest(self) -> bytes:
        """SHA-256 of the image in the active bank, as the device computes it.

        Over the MCUboot image up to the end of its TLVs (what a delta release
        names as ``delta_base_sha256``); the updater sends a delta only when the
        two are equal (docs/transfers.md).
        """
        ...

    def link_check(self) -> LinkQuality: ...

    def read_config(self) -> ConfigSnapshot: ...

    def write_config(self, snapshot: ConfigSnapshot) -> None: ...

    def authenticate(self, credentials: TesterCredentials) -> None: ...

    def prepare(
        self, header: bytes, *, channel: Channel = "wired", downgrade_authorised: bool = False
    ) -> TransferState:
        """Stage a release header; the device verifies it and says what it holds already.

        ``downgrade_authorised``: the update core allowed a lower version than the running
        one with a person's reason; the request says so (a BMS refuses a lower version
        over the air without it, BMSFW-E145)."""
        ...

    def erase(self) -> None: ...

    def write(self, image: bytes, *, start_offset: int = 0) -> Iterator[int]:
        """Transfer ``image[start_offset:]``; yields the offset reached after each block.

        ``image`` is either the decoded image or, for a session with
        ``accepts_stored = True``, the staged component's *stored* bytes
        (compressed, delta patch, ciphertext; ``len(image) == stored_size``), which
        the device decodes as they arrive. An encoded stream starts at 0 on an
        erased bank; it cannot resume mid-way (docs/transfers.md).
        """
        ...

    def verify(self) -> None: ...

    def activate(self) -> None: ...

    def reset(self) -> None: ...

    def wait_boot(self, timeout_s: float) -> BootStatus: ...

    def read_self_test(self) -> SelfTestResult: ...

    def confirm(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class RadioLink(Protocol):
    """Declared capability: the session may run over a radio (SMP over Bluetooth LE);
    ``wireless`` says whether this one does. The update procedure then treats it as an
    over-the-air channel (``bmsfw.update.core.channel_for_link``)."""

    wireless: bool


@runtime_checkable
class StoredBytesWriter(Protocol):
    """Declared capability: ``write`` takes a component's *stored* bytes (compressed,
    delta patch, ciphertext) and the BMS decodes them. A session without it (or with
    ``accepts_stored = False``, e.g. a broadcast string member) gets decoded images only.
    """

    accepts_stored: bool
