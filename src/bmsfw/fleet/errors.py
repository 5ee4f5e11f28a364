"""Fleet server and agent-client errors (BMSFW-E601..E699).

Every class maps to one HTTP status (``http_status``) so the server answers
with a stable JSON body ``{"error": {code, type, message, diagnosis, remedy}}``
and the client (:mod:`bmsfw.fleet.client`) can raise the same class again on
the other side of the wire.
"""

from __future__ import annotations

from bmsfw.errors import FleetError

__all__ = [
    "ApprovalExpiredError",
    "ApprovalNotWaitingError",
    "ApproverRoleError",
    "ArtifactStoreError",
    "BackupRejectedError",
    "CampaignStateError",
    "CredentialMissingError",
    "DecommissionedError",
    "DeviceBusyError",
    "DeviceDecommissionedError",
    "DeviceNotOnGatewayError",
    "DownloadDigestMismatchError",
    "DownloadTooLargeError",
    "EvidenceDeviceUnknownError",
    "EvidenceRejectedError",
    "EvidenceSerialMismatchError",
    "FleetConfigError",
    "FleetConflictError",
    "FleetError",
    "FleetNotFoundError",
    "FleetServerError",
    "FleetTimeoutError",
    "FleetUnreachableError",
    "GatewayDecommissionedError",
    "InvalidCampaignSpecError",
    "InvalidCredentialError",
    "InvalidCursorError",
    "InvalidStateTransitionError",
    "MigrationError",
    "NoTargetDevicesError",
    "RateLimitedError",
    "ReleaseDeactivatedError",
    "ReleaseRejectedError",
    "RequestInvalidError",
    "RequestTooLargeError",
    "RoleNotAllowedError",
    "SafetyCriticalOtaRefusedError",
    "TlsVerificationError",
    "fleet_error_for_code",
]


class CredentialMissingError(FleetError):
    code = "BMSFW-E601"
    http_status = 401
    diagnosis = "The request carried no credential (no 'Authorization: Bearer' header)."
    remedy = (
        "Give `bmsfw fleet` commands --token-file FILE (or set BMSFW_FLEET_TOKEN_FILE); other "
        "clients send the operator's or the gateway's token as 'Authorization: Bearer TOKEN'."
    )


class InvalidCredentialError(FleetError):
    code = "BMSFW-E602"
    http_status = 401
    diagnosis = "The credential is unknown, malformed or revoked."
    remedy = (
        "Ask an admin for a new token (`bmsfw fleet token create`) and check it was not revoked."
    )


class RoleNotAllowedError(FleetError):
    code = "BMSFW-E603"
    http_status = 403
    diagnosis = "The credential is valid but its role may not use this endpoint."
    remedy = (
        "Use a token with a role named in the message; an admin creates one with "
        "`bmsfw fleet token create --role ROLE`."
    )


class FleetNotFoundError(FleetError):
    code = "BMSFW-E604"
    http_status = 404
    diagnosis = "The release, campaign, device, gateway or backup named does not exist."
    remedy = (
        "List what exists (`bmsfw fleet releases`, `campaigns`, `devices`, `gateways` or "
        "`flags`) and check the id or name."
    )


class ReleaseRejectedError(FleetError):
    code = "BMSFW-E605"
    http_status = 422
    diagnosis = "The uploaded file is not a release package the trust root accepts."
    remedy = (
        "Check it with `bmsfw package verify --trust-root ROOT.pem`; the package error code "
        "in the message names the exact cause."
    )

    def __init__(self, message: str | None = None, *, package_code: str = "") -> None:
        super().__init__(message)
        self.package_code = package_code


class SafetyCriticalOtaRefusedError(FleetError):
    code = "BMSFW-E606"
    http_status = 409
    diagnosis = "The release is classed safety-critical; IEC 61508 practice forbids sending it OTA."
    remedy = "Install safety-critical releases on site with a wired connection (`bmsfw update`)."


class InvalidStateTransitionError(FleetError):
    code = "BMSFW-E607"
    http_status = 409
    diagnosis = "The device reported a state that cannot follow its current state."
    remedy = "Check the agent's state machine against docs/fleet.md; terminal states are final."


class CampaignStateError(FleetError):
    code = "BMSFW-E608"
    http_status = 409
    diagnosis = "The campaign is not in a state that allows this action."
    remedy = (
        "Read the campaign status (`bmsfw fleet campaign ID`); cancelled or completed is final."
    )


class InvalidCampaignSpecError(FleetError):
    code = "BMSFW-E609"
    http_status = 422
    diagnosis = "The campaign definition (phases, thresholds, selector) is not valid."
    remedy = "Fix the value named in the message; docs/fleet.md describes every field."


class NoTargetDevicesError(FleetError):
    code = "BMSFW-E610"
    http_status = 422
    diagnosis = "No device matches the selector and the release's hardware compatibility."
    remedy = (
        "Check the inventory (`bmsfw fleet devices --model M --site S ...`) and widen the "
        "selector; for devices that are not installed yet, create it with --dynamic (they "
        "join when they first check in)."
    )


class ArtifactStoreError(FleetError):
    code = "BMSFW-E611"
    http_status = 500
    diagnosis = "The artifact store is missing a file or holds a file whose hash does not match."
    remedy = "Check the artifacts directory and upload the release again (content-addressed store)."


class FleetConflictError(FleetError):
    code = "BMSFW-E612"
    http_status = 409
    diagnosis = "The object already exists or is used by another object."
    remedy = "Pick another name, or act on the existing object."


class DeviceNotOnGatewayError(FleetError):
    code = "BMSFW-E613"
    http_status = 403
    diagnosis = "The gateway reported on, or asked for, a device or release that is not its own."
    remedy = "A gateway may only act for the BMS units it reported in its last check-in."


class BackupRejectedError(FleetError):
    code = "BMSFW-E614"
    http_status = 422
    diagnosis = "The configuration backup is not a JSON object or exceeds the size limit."
    remedy = "Send the backup as a JSON object below the limit named in the message."


class MigrationError(FleetError):
    code = "BMSFW-E615"
    http_status = 500
    diagnosis = "The fleet database could not be opened or migrated to the current schema."
    remedy = (
        "Check the --db URL, that the database server answers and that the user may create tables."
    )


class FleetConfigError(FleetError):
    code = "BMSFW-E616"
    http_status = 500
    diagnosis = "The fleet server or client configuration is incomplete or inconsistent."
    remedy = "Fix the option named in the message (e.g. --tls-cert needs --tls-key)."


class FleetUnreachableError(FleetError):
    code = "BMSFW-E617"
    http_status = 503
    diagnosis = "The fleet server could not be reached."
    remedy = "Check the server URL, DNS, the network route and that the server runs."


class FleetTimeoutError(FleetError, TimeoutError):
    code = "BMSFW-E618"
    http_status = 504
    diagnosis = "The fleet server did not answer in time."
    remedy = "Retry later; the agent resumes where it stopped."


class TlsVerificationError(FleetError):
    code = "BMSFW-E619"
    http_status = 495
    diagnosis = (
        "The server's TLS certificate does not chain to the configured CA or names another host."
    )
    remedy = "Configure the agent with the CA that issued the server certificate and the host name."


class DownloadTooLargeError(FleetError):
    code = "BMSFW-E620"
    http_status = 413
    diagnosis = "The server sent more bytes than the size announced for the artifact."
    remedy = (
        "Do not install it; report the release id to the operator (the server may be compromised)."
    )


class DownloadDigestMismatchError(FleetError):
    code = "BMSFW-E621"
    http_status = 422
    diagnosis = "The downloaded artifact's SHA-256 differs from the one announced in the offer."
    remedy = "The partial file was discarded; the next poll downloads it again from the start."


class FleetServerError(FleetError):
    code = "BMSFW-E622"
    http_status = 500
    diagnosis = "The fleet server answered with an error the client does not know."
    remedy = "Read the server log around the time of the request."


class RequestInvalidError(FleetError):
    code = "BMSFW-E630"
    http_status = 422
    diagnosis = (
        "The request is not valid: a value out of range, text with NUL characters, a body "
        "that is not UTF-8 JSON, or NaN/Infinity."
    )
    remedy = (
        "Fix the fields listed under 'detail' (location and reason); docs/fleet.md gives "
        "every field's range."
    )


class RequestTooLargeError(FleetError):
    code = "BMSFW-E631"
    http_status = 413
    diagnosis = "The request body is larger than this route accepts."
    remedy = "Send less (the limit is in the message and in docs/fleet.md, 'Limits')."


class RateLimitedError(FleetError):
    code = "BMSFW-E632"
    http_status = 429
    diagnosis = (
        "Too many requests (or too many failed authentications) from this credential or address."
    )
    remedy = "Wait the number of seconds in the Retry-After header, then retry; check the token."

    def __init__(self, message: str | None = None, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UploadConflictError(FleetError):
    code = "BMSFW-E633"
    http_status = 409
    diagnosis = (
        "Another upload of the same release file was stored while this one was being "
        "verified; this upload stored nothing."
    )
    remedy = (
        "Nothing to repair: the release named in the message is the file you sent "
        "(`bmsfw fleet releases`). Uploading it again answers 200 with that release."
    )


class InvalidCursorError(FleetError):
    code = "BMSFW-E642"
    http_status = 422
    diagnosis = (
        "The paging cursor is not one this server handed out for this list (cut short, "
        "edited, or taken from another list's answer)."
    )
    remedy = (
        "Ask for the first page again without --cursor (API: without 'cursor') and follow "
        "the next cursors the answers give."
    )


class SelfApprovalError(FleetError):
    code = "BMSFW-E650"
    http_status = 403
    diagnosis = (
        "Four eyes: an action waiting for approval (a campaign, a release deactivation, a "
        "token revocation, a decommissioning) was approved with the credential that asked "
        "for it (or another credential of the same name). It stays waiting; the refusal "
        "is in the audit log."
    )
    remedy = (
        "Ask a second person with the role the request names to approve it with their own "
        "token (dashboard Approvals page, or `bmsfw fleet approve ID`)."
    )


class ApprovalNotWaitingError(FleetError):
    code = "BMSFW-E652"
    http_status = 409
    diagnosis = (
        "The approval request was already decided (approved, rejected, withdrawn, or "
        "approved and then failed); only a waiting request can be approved or rejected. "
        "Nothing changed."
    )
    remedy = (
        "Read its status with `bmsfw fleet approvals --status all`; to do the action now, "
        "ask for it again (a new request)."
    )


class ApprovalExpiredError(FleetError):
    code = "BMSFW-E653"
    http_status = 409
    diagnosis = (
        "The approval request waited longer than the server's approval time "
        "(--approval-ttl-h) and has expired: nothing was done, and a campaign waiting for "
        "it was cancelled (its devices are free again)."
    )
    remedy = (
        "Ask for the action again and have it approved in time (`bmsfw fleet approvals` "
        "lists what waits)."
    )


class ApproverRoleError(FleetError):
    code = "BMSFW-E654"
    http_status = 403
    diagnosis = (
        "Four eyes: the approver's role is below the one the action itself needs (a token "
        "revocation or gateway decommissioning needs an admin, a release deactivation a "
        "release manager). The request stays waiting."
    )
    remedy = (
        "Ask someone with the role named in the message to approve it; a request can be "
        "rejected by its requester or by someone who could approve it."
    )


class ReleaseDeactivatedError(FleetError):
    code = "BMSFW-E643"
    http_status = 409
    diagnosis = (
        "The release was deactivated (pulled): no campaign may use it and gateways may no "
        "longer download it."
    )
    remedy = (
        "Pick an active release (`bmsfw fleet releases`); a pulled release cannot be "
        "activated again, upload a fixed one."
    )


class DecommissionedError(FleetError):
    code = "BMSFW-E644"
    http_status = 409
    diagnosis = "The gateway or device was decommissioned; it takes part in nothing new."
    remedy = (
        "Register a new gateway (`bmsfw fleet gateway-add`) and move the devices to it "
        "(`bmsfw fleet device move SERIAL --gateway NAME`); a decommissioned device stays "
        "in the history only."
    )


class DeviceBusyError(FleetError):
    code = "BMSFW-E645"
    http_status = 409
    diagnosis = (
        "The device has open work in a running or paused campaign; decommissioning it now "
        "would leave that campaign waiting for it."
    )
    remedy = (
        "Wait until its campaign ends, or cancel it (`bmsfw fleet campaign ID cancel`), then "
        "decommission the device again. Nothing was changed."
    )


class GatewayDecommissionedError(FleetError):
    code = "BMSFW-E660"
    http_status = 403
    diagnosis = (
        "A gateway that was decommissioned still checks in (its credential was revoked "
        "with it). Nothing it sent was applied; the devices it named that were its own "
        "are flagged decommissioned_check_in."
    )
    remedy = (
        "Switch the gateway's agent off, or register it again as a new gateway "
        "(`bmsfw fleet gateway-add`) and move its devices to it "
        "(`bmsfw fleet device move SERIAL --gateway NAME`); then acknowledge the flags."
    )


class DeviceDecommissionedError(FleetError):
    code = "BMSFW-E661"
    http_status = 409
    diagnosis = (
        "A gateway's check-in named a device that was decommissioned: nothing about it "
        "was applied (no telemetry, no firmware, no offer); the device is flagged "
        "decommissioned_check_in. The check-in answer lists it under 'refusals'."
    )
    remedy = (
        "If the pack is back in service, register it under a new serial or ask the "
        "vendor; otherwise disconnect it from the gateway, then acknowledge the flag."
    )


class EvidenceRejectedError(FleetError):
    code = "BMSFW-E690"
    http_status = 422
    diagnosis = (
        "The uploaded evidence bundle fails verification: not a bundle (E543), or a file "
        "in it differs from its manifest (E544); nothing was stored."
    )
    remedy = (
        "Check the file with `bmsfw evidence verify BUNDLE`; upload the bundle the update "
        "wrote, unchanged."
    )

    def __init__(self, message: str | None = None, *, evidence_code: str = "") -> None:
        super().__init__(message)
        self.evidence_code = evidence_code


class EvidenceSerialMismatchError(FleetError):
    code = "BMSFW-E695"
    http_status = 422
    diagnosis = (
        "The evidence bundle filed by an operator names another device than the serial "
        "given with it (--serial); nothing was stored."
    )
    remedy = (
        "Check which pack the bundle is from (`bmsfw evidence verify BUNDLE --json`, "
        "manifest.device.serial) and file it without --serial or with that serial."
    )


class EvidenceDeviceUnknownError(FleetError):
    code = "BMSFW-E696"
    http_status = 404
    diagnosis = (
        "The device the evidence bundle names is not in the fleet (no gateway ever "
        "reported it); the server keeps update records only of its own devices. "
        "Nothing was stored."
    )
    remedy = (
        "Check the serial with `bmsfw fleet devices`; once the pack's gateway has "
        "reported it, file the bundle again."
    )


class EventStreamNotAcceptedError(FleetError):
    code = "BMSFW-E651"
    http_status = 406
    diagnosis = (
        "The fleet event stream answers only requests that accept text/event-stream "
        "(Server-Sent Events); this one did not say so in its Accept header."
    )
    remedy = (
        "Send 'Accept: text/event-stream' (a browser's EventSource does; with curl: "
        "curl -N -H 'Accept: text/event-stream' -H 'Authorization: Bearer TOKEN' URL)."
    )


_BY_CODE: dict[str, type[FleetError]] = {
    cls.code: cls
    for cls in (
        CredentialMissingError,
        InvalidCredentialError,
        RoleNotAllowedError,
        FleetNotFoundError,
        ReleaseRejectedError,
        SafetyCriticalOtaRefusedError,
        InvalidStateTransitionError,
        CampaignStateError,
        InvalidCampaignSpecError,
        NoTargetDevicesError,
        ArtifactStoreError,
        FleetConflictError,
        DeviceNotOnGatewayError,
        BackupRejectedError,
        MigrationError,
        FleetConfigError,
        FleetUnreachableError,
        FleetTimeoutError,
        TlsVerificationError,
        DownloadTooLargeError,
        DownloadDigestMismatchError,
        FleetServerError,
        RequestInvalidError,
        RequestTooLargeError,
        RateLimitedError,
        UploadConflictError,
        InvalidCursorError,
        SelfApprovalError,
        ReleaseDeactivatedError,
        DecommissionedError,
        DeviceBusyError,
        EvidenceRejectedError,
        EventStreamNotAcceptedError,
    )
}


def http_status_for(error: FleetError) -> int:
    """HTTP status the server answers with for ``error`` (500 for one without its own)."""
    status: int = getattr(error, "http_status", 500)
    return status


def fleet_error_for_code(code: str) -> type[FleetError] | None:
    """The fleet error class with this code, or None (used by the client)."""
    return _BY_CODE.get(code)
