"""Errors of the gateway agent itself (BMSFW-E670..E679).

The fleet range E601..E699 is shared with the server (:mod:`bmsfw.fleet.errors`,
E601..E66x); the agent's own causes live in this block so the two halves can grow
without colliding. Errors the agent *reports* for a device are mostly not these:
a refused package reports the package's own E1xx code, a failed preflight its
E4xx code, a rollback the pipeline's E5xx code.
"""

from __future__ import annotations

from bmsfw.errors import FleetError

__all__ = [
    "AgentConfigError",
    "AgentStateCorruptError",
    "BandwidthBelowFloorError",
    "NoLocalBmsError",
    "OfferMismatchError",
]


class AgentConfigError(FleetError):
    code = "BMSFW-E670"
    diagnosis = "The agent's configuration is incomplete or inconsistent."
    remedy = "Fix the option named in the message (`bmsfw agent --help` lists them)."


class BandwidthBelowFloorError(FleetError):
    code = "BMSFW-E671"
    diagnosis = "The measured download rate is below the campaign's bandwidth floor."
    remedy = (
        "Nothing to do: the agent keeps the partial download and resumes it on a later poll; "
        "check the site's uplink if it never completes."
    )


class OfferMismatchError(FleetError):
    code = "BMSFW-E672"
    diagnosis = "The signed package does not match what the server offered (version or counter)."
    remedy = (
        "Do not install it; report the campaign to the operator (the server's release record "
        "or its artifact store was altered)."
    )


class AgentStateCorruptError(FleetError):
    code = "BMSFW-E673"
    diagnosis = "The agent's state file cannot be read."
    remedy = (
        "Move the state file aside and restart the agent: it re-reads every BMS and reports "
        "their true state."
    )


class NoLocalBmsError(FleetError):
    code = "BMSFW-E674"
    diagnosis = "The agent found no BMS answering on its configured link."
    remedy = "Check the --can/--serial link, node ids, cabling and that the BMS is powered."
