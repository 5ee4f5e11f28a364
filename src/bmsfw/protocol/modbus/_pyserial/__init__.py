"""pyserial URL handlers for simulated lines (see :mod:`.protocol_simpty`)."""
