"""bmsfw's own Bluetooth LE link (bumble): LE Secure Connections pairing and link facts.

The tester's side pairs as a keyboard (passkey entry): the BMS shows or carries a
6-digit passkey and the technician types it, so the pairing is authenticated
(MITM-protected) and, with LE Secure Connections, the key never crosses the air.
Bonds are kept in memory only: every run pairs again, nothing is left on the
laptop. After connecting, :func:`link_facts` reads what the link is and
:func:`insecure_reason` says why bmsfw must not use it (pure).

bumble is imported lazily (the ``smp`` extra).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bmsfw.protocol.session import BleLinkFacts
from bmsfw.protocol.smp.link import PasskeyProvider

__all__ = ["insecure_reason", "link_facts", "passkey_entry", "rssi_dbm"]

log = logging.getLogger(__name__)


def insecure_reason(facts: BleLinkFacts) -> str:
    """Why the link may not carry SMP to a BMS; "" when it is encrypted with a key from an
    authenticated LE Secure Connections pairing."""
    if not facts.encrypted:
        return "the link is not encrypted"
    if not facts.secure_connections:
        return "the link was paired with legacy pairing, not LE Secure Connections"
    if not facts.mitm:
        return "the pairing was not authenticated (Just Works: no passkey)"
    return ""


def passkey_entry(provider: PasskeyProvider | None) -> Any:
    """A bumble pairing delegate that types the passkey ``provider`` gives."""
    from bumble.pairing import PairingDelegate

    class PasskeyEntry(PairingDelegate):
        def __init__(self) -> None:
            super().__init__(io_capability=PairingDelegate.KEYBOARD_INPUT_ONLY)
            self.asked = False

        async def get_number(self) -> int | None:
            self.asked = True
            if provider is None:
                log.warning("the BMS asks for a passkey and none was given")
                return None
            # the provider may prompt on the terminal: not on the event loop
            return await asyncio.get_running_loop().run_in_executor(None, provider)

    return PasskeyEntry()


async def link_facts(connection: Any, rssi: int | None) -> BleLinkFacts:
    """The facts of a bumble ``Connection`` (after pairing)."""
    mitm = False
    keystore = connection.device.keystore
    if keystore is not None and connection.is_encrypted:
        keys = await keystore.get(str(connection.peer_address))
        ltk = getattr(keys, "ltk", None) if keys is not None else None
        mitm = bool(ltk is not None and ltk.authenticated)
    return BleLinkFacts(
        att_mtu=int(connection.att_mtu),
        interval_ms=float(connection.parameters.connection_interval),
        rssi_dbm=rssi,
        encrypted=bool(connection.is_encrypted),
        secure_connections=bool(connection.sc),
        mitm=mitm,
    )


async def rssi_dbm(connection: Any) -> int | None:
    """HCI Read RSSI; None when the controller does not support it (bumble's virtual one)."""
    from bumble.hci import HCI_Read_RSSI_Command

    try:
        response = await connection.device.send_command(
            HCI_Read_RSSI_Command(handle=connection.handle)
        )
        return int(response.return_parameters.rssi)
    except Exception:  # not supported by this controller
        return None
