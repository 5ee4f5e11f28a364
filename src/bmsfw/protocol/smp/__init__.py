"""MCUmgr SMP (Simple Management Protocol): the Zephyr/MCUboot path's application protocol.

``open_smp_session("serial:/dev/ttyACM0")`` (or ``udp:HOST[:PORT]``,
``ble:DEVICE[@HCI]``) gives an :class:`SmpSession` (a ``BmsSession``) on
smpclient's transports; the groups and the BMS vendor group are in
:mod:`bmsfw.protocol.smp.groups` and documented in docs/smp.md. Importing this
package needs the ``smp`` extra (smp, smpclient, bumble).
"""

from __future__ import annotations

from bmsfw.protocol.smp.groups import BMS_GROUP, CONFIG_SETTING, BmsCommand
from bmsfw.protocol.smp.link import SmpLink, parse_smp_link
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
