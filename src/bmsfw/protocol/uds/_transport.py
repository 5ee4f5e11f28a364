"""Addressing and ISO-TP parameters of the UDS path (both ends use the same rules).

Addressing (ISO 15765-4, 11-bit normal addressing): node ``n`` (1..8) receives
physical requests on ``0x7E0 + n - 1`` and answers on ``0x7E8 + n - 1``; every
node also listens to functional requests on ``0x7DF`` (single-frame only) and
answers them on its own physical response id.

ISO-TP parameters: the tester pads classic frames to 8 bytes (CAN_DL 8), uses
block size 0 / STmin 0 as receiver unless told otherwise and a blocking send,
so P2 starts when the request has left (a 4 KiB block takes ~130 ms on the wire
at 500 kbit/s, longer than P2). The BMS grants block size 0 except on
``udp_multicast``, whose sockets drop bursts: there it grants 16 (FIELD-NOTES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "FUNCTIONAL_REQUEST_ID",
    "MAX_NODES",
    "IsoTpSettings",
    "node_ids",
    "node_of_response_id",
]

FUNCTIONAL_REQUEST_ID = 0x7DF
MAX_NODES = 8
_REQUEST_BASE = 0x7E0
_RESPONSE_BASE = 0x7E8


def node_ids(node: int) -> tuple[int, int]:
    """``(request_id, response_id)`` of node ``node`` (1..8)."""
    if not 1 <= node <= MAX_NODES:
        raise ValueError(f"node must be 1..{MAX_NODES} (ISO 15765-4 11-bit ids), got {node}")
    return _REQUEST_BASE + node - 1, _RESPONSE_BASE + node - 1


def node_of_response_id(arbitration_id: int) -> int | None:
    if _RESPONSE_BASE <= arbitration_id < _RESPONSE_BASE + MAX_NODES:
        return arbitration_id - _RESPONSE_BASE + 1
    return None


@dataclass(frozen=True)
class IsoTpSettings:
    """The can-isotp parameters we set; everything else stays at library defaults."""

    fd: bool = False
    blocksize: int = 0
    stmin: int = 0
    blocking_send: bool = False
    max_frame_size: int = 65_535  # ISO 15765-2:2016 escape: headers > 4095 bytes fit
    timeout_ms: int = 1000  # N_Bs / N_Cr

    def params(self) -> dict[str, Any]:
        return {
            "stmin": self.stmin,
            "blocksize": self.blocksize,
            "tx_data_length": 64 if self.fd else 8,
            "tx_data_min_length": 8,
            "tx_padding": 0xCC,
            "can_fd": self.fd,
            "bitrate_switch": self.fd,
            "max_frame_size": self.max_frame_size,
            "blocking_send": self.blocking_send,
            "rx_flowcontrol_timeout": self.timeout_ms,
            "rx_consecutive_frame_timeout": self.timeout_ms,
        }

    @classmethod
    def for_server(cls, *, fd: bool, multicast: bool) -> IsoTpSettings:
        return cls(fd=fd, blocksize=16 if multicast else 0)

    @classmethod
    def for_client(cls, *, fd: bool, multicast: bool) -> IsoTpSettings:
        return cls(fd=fd, blocksize=16 if multicast else 0, blocking_send=True)


def make_stack(bus: Any, notifier: Any, *, txid: int, rxid: int, settings: IsoTpSettings) -> Any:
    """A started-later can-isotp ``NotifierBasedCanStack`` for one id pair."""
    import isotp

    address = isotp.Address(isotp.AddressingMode.Normal_11bits, txid=txid, rxid=rxid)
    return isotp.NotifierBasedCanStack(bus, notifier, address=address, params=settings.params())
