"""The CAN bench of the CLI end-to-end tests (tests/cli), reused for evidence bundles."""

from __future__ import annotations

from cli.conftest import kit, make_bench  # noqa: F401  (fixtures)
