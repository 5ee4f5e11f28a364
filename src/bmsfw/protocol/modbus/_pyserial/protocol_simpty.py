"""``simpty://PATH``: a pty opened like a serial port, tolerating parity it cannot hold.

On some Linux kernels (measured here: 6.18) a pseudo-terminal refuses
``PARENB`` with EINVAL, so pyserial (and pymodbus, which opens ports through
``serial.serial_for_url``) cannot open a pty with 8E1, the Modbus default. A pty
has no parity bits on its "wire" anyway: the simulated RS485 bus models parity
from the configured line settings. This handler opens the pty with every other
setting (baud rate, stop bits, timeouts) and drops only the parity flag when the
kernel refuses it; ``parity_emulated`` says whether that happened.
"""

from __future__ import annotations

import logging
import termios
from typing import Any

from serial.serialposix import Serial as PosixSerial

log = logging.getLogger(__name__)

SCHEME = "simpty://"


class Serial(PosixSerial):  # type: ignore[misc]
    parity_emulated = False

    def open(self) -> None:
        port: Any = getattr(self, "portstr", None)
        if isinstance(port, str) and port.startswith(SCHEME):
            self.portstr = port[len(SCHEME) :]
        super().open()

    def _reconfigure_port(self, force_update: bool = False) -> Any:
        try:
            return super()._reconfigure_port(force_update)
        except termios.error:
            parity: Any = getattr(self, "_parity", "N")
            if parity == "N":
                raise
            self._parity = "N"
            try:
                result = super()._reconfigure_port(force_update)
            finally:
                self._parity = parity
            if not self.parity_emulated:
                log.debug(
                    "%s: pty refuses parity %s; parity left to the simulated line",
                    self.portstr,
                    parity,
                )
            self.parity_emulated = True
            return result
