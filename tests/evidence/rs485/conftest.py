"""The RS485 string bench of the CLI end-to-end tests (tests/cli_rs485), for bundles."""

from __future__ import annotations

from cli_rs485.conftest import kit, make_string  # noqa: F401  (fixtures)
