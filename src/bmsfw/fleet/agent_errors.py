"""Errors of the gateway agent itself (BMSFW-E670..E699).

The fleet range E601..E699 is shared with the server (:mod:`bmsfw.fleet.errors`,
E601..E669); the agent's own causes live in E670..E699 so the two halves can grow
without colliding. E675..E679 are answers the agent refuses (a broken or hostile
server: malformed, too large, too slow, a host it may not use); E680..E685 are the
TUF checks of the server's signed metadata (:mod:`bmsfw.fleet.agent_tuf`).

Errors the agent *reports* for a device are mostly not these:
a refused package reports the package's own E1xx code, a failed preflight its
E4xx code, a rollback the pipeline's E5xx code.
"""

from __future__ import annotations

from bmsfw.errors import FleetError

__all__ = [
    "AgentConfigError",
    "AgentStateCorruptError",
    "AnswerTooLargeError",
    "AnswerTooSlowError",
    "ArtifactLocationRefusedError",
    "BandwidthBelowFloorError",
    "BmsIdentityNotReportableError",
    "MalformedAnswerError",
    "NoLocalBmsError",
    "OfferMismatchError",
    "TufError",
    "TufExpiredError",
    "TufInconsistentError",
    "TufOfferNotSignedError",
    "TufRollbackError",
    "TufSignatureError",
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


class MalformedAnswerError(FleetError):
    """A server answer the agent refuses; the base of E676..E678 too. Each is reported to
    the server on the next good poll and retried with backoff; the daemon keeps running."""

    code = "BMSFW-E675"
    diagnosis = (
        "The fleet server's answer is not the documented JSON answer (an HTML page, a redirect, "
        "a missing or mistyped field, null, a value out of range)."
    )
    remedy = (
        "Nothing to do on the gateway: the agent retries with backoff. If it persists, check "
        "for a captive portal or proxy in front of the server, and the server's version and log."
    )


class AnswerTooLargeError(MalformedAnswerError):
    code = "BMSFW-E676"
    diagnosis = (
        "The fleet server sent more bytes than the agent accepts for this answer (check-in "
        "answer, error body, TUF metadata) or more than the signed size of an artifact."
    )
    remedy = (
        "Nothing to do on the gateway: the agent discarded the answer and retries with backoff; "
        "report it to the server's operator (the server or a proxy in front of it misbehaves)."
    )


class AnswerTooSlowError(MalformedAnswerError, TimeoutError):
    code = "BMSFW-E677"
    diagnosis = (
        "The answer or artifact did not arrive within its overall deadline (the server dripped "
        "it, or the link is far below the agent's minimum average rate)."
    )
    remedy = (
        "Nothing to do: the agent keeps a partial artifact and resumes on a later poll; check the "
        "site's uplink if it never completes."
    )


class ArtifactLocationRefusedError(MalformedAnswerError):
    code = "BMSFW-E678"
    diagnosis = (
        "The offer names an artifact URL outside the server's own origin (or the configured "
        "artifact host), or not over HTTPS; the agent does not fetch it and sends no credential."
    )
    remedy = (
        "If the releases really live on another host, name it with --artifact-origin; otherwise "
        "report the campaign to the operator (the server may be compromised)."
    )


class TufError(FleetError):
    """The server's TUF metadata is malformed or unreachable; the base of E680..E684."""

    code = "BMSFW-E685"
    diagnosis = "The server's TUF repository metadata is malformed or could not be fetched."
    remedy = (
        "The agent trusts no offer until the metadata verifies; check the server's TUF set-up "
        "(docs/agent.md, 'Signed freshness') and its log."
    )


class TufExpiredError(TufError):
    code = "BMSFW-E680"
    diagnosis = (
        "The server's signed metadata has expired (timestamp, snapshot, targets or root): the "
        "server is frozen, replays old answers, or its online signing stopped."
    )
    remedy = (
        "No offer is trusted until fresh metadata arrives. Check the server's clock and its "
        "online key; an expired root needs a new root signed with the offline root keys."
    )


class TufRollbackError(TufError):
    code = "BMSFW-E681"
    diagnosis = (
        "The server sent signed metadata older than what the agent already trusts (a rollback "
        "or replay of an earlier repository state)."
    )
    remedy = (
        "Nothing to install until the server serves current metadata; report it to the "
        "operator (a restored backup of the server, or a compromised server)."
    )


class TufSignatureError(TufError):
    code = "BMSFW-E682"
    diagnosis = (
        "The server's metadata is not signed by the threshold of keys the trusted root names "
        "(arbitrary or forged metadata)."
    )
    remedy = (
        "Nothing is installed. Check that the server's online key is the one in root.json; "
        "after a key rotation the server must publish the new root."
    )


class TufInconsistentError(TufError):
    code = "BMSFW-E683"
    diagnosis = (
        "The server's metadata files do not belong together: a version or hash differs from "
        "what the timestamp or snapshot lists (mix-and-match of repository states)."
    )
    remedy = (
        "Nothing is installed; the next poll fetches the metadata again. If it persists, report "
        "it to the operator."
    )


class TufOfferNotSignedError(TufError):
    code = "BMSFW-E684"
    diagnosis = (
        "The offer names a release the signed targets metadata does not list, or with a size, "
        "hash, product, hardware, version or security counter other than the signed ones."
    )
    remedy = (
        "Do not install it; report the campaign to the operator (the server's release record "
        "or its artifact store was altered)."
    )


class BmsIdentityNotReportableError(FleetError):
    """A BMS's identity that the check-in cannot carry: that BMS is left out of it."""

    code = "BMSFW-E686"
    diagnosis = (
        "A BMS behind this gateway reports an identity string (serial, model, vendor, "
        "version) with a control character such as NUL: the server would refuse the "
        "whole check-in for it, so the agent leaves that one BMS out and reports the rest."
    )
    remedy = (
        "Find the BMS by the escaped serial in the message (`bmsfw info` shows it); its "
        "identity memory is corrupt or its firmware misreports itself: have it serviced."
    )
