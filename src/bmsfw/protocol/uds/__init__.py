"""UDS (ISO 14229-1) on ISO-TP (ISO 15765-2): the CAN path's application protocol.

``open_uds_session(link, node)`` gives a :class:`UdsSession` (a ``BmsSession``);
the identifiers, routines and record layouts are in :mod:`bmsfw.protocol.uds._codec`
and documented in docs/uds.md. CAN ids and ISO-TP settings are the link layer's
(:func:`bmsfw.link.node_address`, :func:`bmsfw.link.default_isotp_params`); node
numbers start at 1.
"""

from __future__ import annotations

from bmsfw.protocol.uds._auth import (
    issue_tester_certificate,
    load_tester_credentials,
    tester_credentials,
)
from bmsfw.protocol.uds._codec import DID, NRC, ROUTINE, Session, is_encoded, transfer_dfi
from bmsfw.protocol.uds._open import discover_nodes, open_uds_session
from bmsfw.protocol.uds._payload import stored_component
from bmsfw.protocol.uds.client import RoutineResult, UdsClientConfig, UdsSession

__all__ = [
    "DID",
    "NRC",
    "ROUTINE",
    "RoutineResult",
    "Session",
    "UdsClientConfig",
    "UdsSession",
    "discover_nodes",
    "is_encoded",
    "issue_tester_certificate",
    "load_tester_credentials",
    "open_uds_session",
    "stored_component",
    "tester_credentials",
    "transfer_dfi",
]
