"""MCUmgr SMP (Simple Management Protocol): the Zephyr/MCUboot path's application protocol.

``open_smp_session("serial:/dev/ttyACM0")`` (or ``udp:HOST[:PORT]``,
``ble:DEVICE[@HCI]``) gives an :class:`SmpSession` (a ``BmsSession``) on
smpclient's transports; the groups and the BMS vendor group are in
:mod:`bmsfw.protocol.smp.groups` and documented in docs/smp.md. Importing this
session needs the ``smp`` extra (smp, smpclient, bumble); the link names and
group ids do not, so ``bmsfw --help`` works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bmsfw.protocol.smp.groups import BMS_GROUP, CONFIG_SETTING, BmsCommand
from bmsfw.protocol.smp.link import SmpLink, parse_smp_link

if TYPE_CHECKING:
    from bmsfw.protocol.smp.session import SmpSession, open_smp_session

__all__ = [
    "BMS_GROUP",
    "CONFIG_SETTING",
    "BmsCommand",
    "SmpLink",
    "SmpSession",
    "open_smp_session",
    "parse_smp_link",
]


def __getattr__(name: str) -> Any:
    # The session imports smpclient: only when it is asked for (optional extra).
    if name in ("SmpSession", "open_smp_session"):
        from bmsfw.protocol.smp import session

        return getattr(session, name)
    raise AttributeError(name)
