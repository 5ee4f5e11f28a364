"""Documented ranges of fleet settings, shared by the server, the agent and the CLI
(plain numbers and no imports, so the CLI can name them in its options at start)."""

from __future__ import annotations

__all__ = ["TELEMETRY_INTERVAL_RANGE_S", "TELEMETRY_KEEP_RANGE_S"]

# The telemetry sampling interval, in seconds: the server's setting is clamped to it, and
# so is the interval the agent is told in every check-in answer (docs/fleet.md,
# "Telemetry history").
TELEMETRY_INTERVAL_RANGE_S = (60, 86_400)
# How long telemetry history is kept: one hour to 400 days (and never less than two
# sampling intervals).
TELEMETRY_KEEP_RANGE_S = (3600, 400 * 86_400)
