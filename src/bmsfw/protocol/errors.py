"""Errors a protocol client sees: device-reported update failures and protocol errors.

Two families live here, split by cause:

* ``E250–E299`` (:class:`~bmsfw.errors.DeviceError`): the BMS answered properly and
  reported that an update step failed on its side (verify failed, self-test failed,
  rolled back, package refused).
* ``E340–E399`` (:class:`~bmsfw.errors.TransportError`): the application protocol
  failed. UDS uses ``E340–E369``: every negative response code maps to one class
  (:func:`uds_error_for_nrc`), and P2/P2* timeouts also inherit :class:`TimeoutError`.
  ``E370–E399`` is reserved for Modbus.
"""

from __future__ import annotations

from typing import ClassVar

from bmsfw.errors import DeviceError, TransportError

__all__ = [
    "DeviceActivateFailedError",
    "DeviceBootTimeoutError",
    "DeviceHeaderRejectedError",
    "DeviceValueImplausibleError",
    "DeviceVerifyFailedError",
    "ProtocolError",
    "StepDeadlineError",
    "UdsAuthenticationRequiredError",
    "UdsBusyRepeatRequestError",
    "UdsCertificateRejectedError",
    "UdsConditionsNotCorrectError",
    "UdsExceededNumberOfAttemptsError",
    "UdsGeneralProgrammingFailureError",
    "UdsIncorrectMessageLengthError",
    "UdsInvalidKeyError",
    "UdsInvalidResponseError",
    "UdsNegativeResponseError",
    "UdsNoNodeAnsweredError",
    "UdsOwnershipVerificationFailedError",
    "UdsRequestOutOfRangeError",
    "UdsRequestSequenceError",
    "UdsRequiredTimeDelayNotExpiredError",
    "UdsResponsePendingLimitError",
    "UdsSecurityAccessDeniedError",
    "UdsServiceNotSupportedError",
    "UdsServiceNotSupportedInSessionError",
    "UdsStepTimeoutError",
    "UdsTimeoutError",
    "UdsTransferInterruptedError",
    "UdsUploadDownloadNotAcceptedError",
    "UdsWrongBlockSequenceCounterError",
    "uds_error_for_nrc",
]


# --------------------------------------------------------------------------- E250–E299


class DeviceVerifyFailedError(DeviceError):
    code = "BMSFW-E250"
    diagnosis = (
        "The BMS checked the transferred image and rejected it (hash, signature, "
        "compatibility or security counter)."
    )
    remedy = (
        "Nothing was activated; the old firmware still runs. Check the package with "
        "`bmsfw package verify` and run the update again."
    )


class DeviceHeaderRejectedError(DeviceError):
    code = "BMSFW-E253"
    diagnosis = (
        "The BMS refused the release header (signature, certificate chain, compatibility,"
        " anti-rollback or OTA policy)."
    )
    remedy = (
        "Use a package built for this hardware and signed by the vendor; check it with "
        "`bmsfw package verify`."
    )


class DeviceActivateFailedError(DeviceError):
    code = "BMSFW-E254"
    diagnosis = "The BMS could not mark the new bank for a test boot."
    remedy = "Run the verify step again; if it persists read the fault log with `bmsfw diagnose`."


class DeviceBootTimeoutError(DeviceError, TimeoutError):
    code = "BMSFW-E255"
    diagnosis = "The BMS did not come back after reset within the allowed time."
    remedy = (
        "Power-cycle the BMS; its bootloader reverts an unconfirmed image by itself. Then"
        " read `bmsfw info`."
    )


# --------------------------------------------------------------------------- E340–E369


class ProtocolError(TransportError):
    """An application protocol (UDS, Modbus) failed: negative response, timeout, bad frame."""

    code = "BMSFW-E340"
    diagnosis = "The BMS answered with something the protocol does not allow here."
    remedy = (
        "Check that the BMS runs a firmware that speaks this protocol version; run with "
        "-vv for the frame log."
    )


class UdsNegativeResponseError(ProtocolError):
    """A UDS negative response (0x7F SID NRC). Subclasses name the NRC."""

    code = "BMSFW-E341"
    diagnosis = "The BMS refused the UDS request with a negative response."
    remedy = "Look up the negative response code in docs/uds.md; run with -vv for the frame log."
    nrcs: ClassVar[tuple[int, ...]] = ()

    def __init__(self, message: str | None = None, *, sid: int = 0, nrc: int = 0) -> None:
        self.sid = sid
        self.nrc = nrc
        super().__init__(message)


class UdsServiceNotSupportedError(UdsNegativeResponseError):
    code = "BMSFW-E342"
    diagnosis = "The BMS does not support this UDS service or sub-function."
    remedy = (
        "Update the BMS bootloader/firmware to a version that documents the service in docs/uds.md."
    )
    nrcs = (0x11, 0x12)


class UdsIncorrectMessageLengthError(UdsNegativeResponseError):
    code = "BMSFW-E343"
    diagnosis = "The BMS rejected the request length or format."
    remedy = "The tester and BMS disagree on a record layout; check both against docs/uds.md."
    nrcs = (0x13,)


class UdsBusyRepeatRequestError(UdsNegativeResponseError):
    code = "BMSFW-E344"
    diagnosis = "The BMS is busy and asked the tester to repeat the request."
    remedy = "Wait a second and run the step again."
    nrcs = (0x21,)


class UdsConditionsNotCorrectError(UdsNegativeResponseError):
    code = "BMSFW-E345"
    diagnosis = (
        "The BMS is not in a state that allows this request (wrong session, precondition not met)."
    )
    remedy = (
        "Run `bmsfw preflight`; bring the pack into its safe window and start the update again."
    )
    nrcs = (0x22,)


class UdsRequestSequenceError(UdsNegativeResponseError):
    code = "BMSFW-E346"
    diagnosis = (
        "The request came out of order (e.g. TransferData without RequestDownload, "
        "activate before verify)."
    )
    remedy = (
        "Start the update again from the beginning; the device keeps what it has received"
        " for resume."
    )
    nrcs = (0x24,)


class UdsRequestOutOfRangeError(UdsNegativeResponseError):
    code = "BMSFW-E347"
    diagnosis = (
        "A parameter of the request is outside what the BMS accepts (unknown DID/routine,"
        " bad address or size)."
    )
    remedy = (
        "Check the identifier and the image size against docs/uds.md and the device's bank size."
    )
    nrcs = (0x31,)


class UdsSecurityAccessDeniedError(UdsNegativeResponseError):
    code = "BMSFW-E348"
    diagnosis = "The request needs an unlocked security level or an authenticated tester."
    remedy = "Authenticate first (tester certificate or seed/key) in the programming session."
    nrcs = (0x33,)


class UdsAuthenticationRequiredError(UdsNegativeResponseError):
    code = "BMSFW-E349"
    diagnosis = "The BMS requires authentication (service 0x29) before this request."
    remedy = "Give a tester certificate chained to the vendor root (`--tester-cert`)."
    nrcs = (0x34,)


class UdsInvalidKeyError(UdsNegativeResponseError):
    code = "BMSFW-E350"
    diagnosis = "The BMS rejected the security-access key."
    remedy = (
        "Check the seed/key secret for this product; after repeated failures the BMS "
        "locks out for a while."
    )
    nrcs = (0x35,)


class UdsExceededNumberOfAttemptsError(UdsNegativeResponseError):
    code = "BMSFW-E351"
    diagnosis = "Too many wrong keys: the BMS locked security access."
    remedy = (
        "Wait for the lock-out delay (see docs/uds.md) before trying again with the right secret."
    )
    nrcs = (0x36,)


class UdsRequiredTimeDelayNotExpiredError(UdsNegativeResponseError):
    code = "BMSFW-E352"
    diagnosis = "Security access is locked out after failed attempts and the delay has not expired."
    remedy = "Wait for the lock-out delay to pass, then authenticate again."
    nrcs = (0x37,)


class UdsUploadDownloadNotAcceptedError(UdsNegativeResponseError):
    code = "BMSFW-E353"
    diagnosis = (
        "The BMS refused the download request (no staged header, wrong size, or bank not erased)."
    )
    remedy = "Run the update from the beginning (prepare and erase) and check the image size."
    nrcs = (0x70,)


class UdsGeneralProgrammingFailureError(UdsNegativeResponseError):
    code = "BMSFW-E354"
    diagnosis = "The BMS failed to erase or program its flash."
    remedy = (
        "Retry once; if it persists the flash may be worn: read the fault log with `bmsfw"
        " diagnose`."
    )
    nrcs = (0x71, 0x72)


class UdsWrongBlockSequenceCounterError(UdsNegativeResponseError):
    code = "BMSFW-E355"
    diagnosis = "The BMS received a TransferData block out of sequence."
    remedy = "Run the update again; it resumes from the last block the device holds."
    nrcs = (0x73,)


class UdsServiceNotSupportedInSessionError(UdsNegativeResponseError):
    code = "BMSFW-E356"
    diagnosis = (
        "The service is not available in the active diagnostic session (S3 timeout may "
        "have dropped it)."
    )
    remedy = "Enter the programming session again; keep TesterPresent running during long pauses."
    nrcs = (0x7E, 0x7F)


class UdsCertificateRejectedError(UdsNegativeResponseError):
    code = "BMSFW-E357"
    diagnosis = (
        "The BMS rejected the tester certificate (validity period, signature, chain of "
        "trust, type, format, content, scope or revoked)."
    )
    remedy = (
        "Use a tester certificate issued under the vendor root that this BMS has fused, "
        "and not revoked."
    )
    nrcs = (0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57)


class UdsOwnershipVerificationFailedError(UdsNegativeResponseError):
    code = "BMSFW-E358"
    diagnosis = "The tester could not prove possession of the certificate's private key."
    remedy = (
        "The private key does not belong to the tester certificate; give the matching key file."
    )
    nrcs = (0x58, 0x59, 0x5A, 0x5B, 0x5C, 0x5D)


class UdsTimeoutError(ProtocolError, TimeoutError):
    code = "BMSFW-E360"
    diagnosis = "The BMS did not answer within P2 / P2* (link down, wrong node address or bitrate)."
    remedy = "Check the CAN connection, bitrate and node id (`bmsfw scan`); then run again."


class UdsStepTimeoutError(UdsTimeoutError):
    code = "BMSFW-E361"
    diagnosis = (
        "An update step took longer than its time budget although the BMS kept answering "
        "'response pending'."
    )
    remedy = (
        "The BMS may be stuck in erase/verify; power-cycle it (the old firmware still "
        "runs) and retry."
    )


class UdsResponsePendingLimitError(UdsStepTimeoutError):
    """udsoncan has no limit on 0x78 answers; the session counts them (``nrc78_callback``)."""

    code = "BMSFW-E367"
    diagnosis = (
        "The BMS answered one request with 'response pending' (NRC 0x78) more often than"
        " the documented limit (UdsClientConfig.max_response_pending, 100 by default)"
        " without ever giving the final answer."
    )
    remedy = (
        "The BMS is stuck or hostile: power-cycle it (the old firmware still runs) and run"
        " again; if it happens again, do not update this BMS and send it for service."
    )


class UdsTransferInterruptedError(UdsTimeoutError):
    code = "BMSFW-E362"
    diagnosis = "The transfer stopped: a data block got no answer, even after one retry."
    remedy = (
        "Restore the CAN link and run the update again: it resumes from the bytes the BMS"
        " already holds."
    )

    def __init__(self, message: str | None = None, *, offset: int = 0, total: int = 0) -> None:
        self.offset = offset
        self.total = total
        super().__init__(message)


class UdsInvalidResponseError(ProtocolError):
    code = "BMSFW-E363"
    diagnosis = "The BMS answered with a malformed or unexpected UDS response."
    remedy = "Check that only one node uses this CAN id pair; run with -vv for the frame log."


class DeviceValueImplausibleError(ProtocolError):
    """A well-formed answer carrying a value no battery can have (either protocol)."""

    code = "BMSFW-E365"
    diagnosis = (
        "The BMS reported a physically impossible value (a cell above 5 V, a state of"
        " charge above 100 %, a temperature outside -55..150 °C, a NaN): its measurements"
        " cannot be trusted, so nothing is updated on the strength of them."
    )
    remedy = (
        "Do not update this BMS; check its sensor wiring and measurement firmware (the"
        " message names the value). A reading of exactly 6.5535 V or 655.35 % is a"
        " register the BMS never filled."
    )


class StepDeadlineError(ProtocolError, TimeoutError):
    """A session step (several requests, repeats included) ran past its bound (either protocol)."""

    code = "BMSFW-E366"
    diagnosis = (
        "A step of the session with the BMS (identify, authentication, release header,"
        " erase, verify, activate, reset, self-test, confirm, configuration read) took longer"
        " than its documented bound: the BMS kept answering, but too slowly to finish."
    )
    remedy = (
        "Check the link quality (`bmsfw diagnose`) and that nothing else loads the BMS; run"
        " again (the old firmware still runs). A BMS that is always this slow needs service."
    )


class UdsNoNodeAnsweredError(ProtocolError, TimeoutError):
    code = "BMSFW-E364"
    diagnosis = "No BMS answered the functional (broadcast) UDS request."
    remedy = "Check wiring, termination and bitrate; check that the BMS is powered."


_BY_NRC: dict[int, type[UdsNegativeResponseError]] = {
    nrc: cls
    for cls in (
        UdsServiceNotSupportedError,
        UdsIncorrectMessageLengthError,
        UdsBusyRepeatRequestError,
        UdsConditionsNotCorrectError,
        UdsRequestSequenceError,
        UdsRequestOutOfRangeError,
        UdsSecurityAccessDeniedError,
        UdsAuthenticationRequiredError,
        UdsInvalidKeyError,
        UdsExceededNumberOfAttemptsError,
        UdsRequiredTimeDelayNotExpiredError,
        UdsUploadDownloadNotAcceptedError,
        UdsGeneralProgrammingFailureError,
        UdsWrongBlockSequenceCounterError,
        UdsServiceNotSupportedInSessionError,
        UdsCertificateRejectedError,
        UdsOwnershipVerificationFailedError,
    )
    for nrc in cls.nrcs
}


def uds_error_for_nrc(sid: int, nrc: int, what: str = "") -> UdsNegativeResponseError:
    """The error for a negative response ``0x7F sid nrc``; ``what`` names the step."""
    from bmsfw.protocol.uds._codec import nrc_name

    cls = _BY_NRC.get(nrc, UdsNegativeResponseError)
    step = f"{what}: " if what else ""
    message = f"{step}BMS answered service 0x{sid:02X} with NRC 0x{nrc:02X} ({nrc_name(nrc)})"
    return cls(message, sid=sid, nrc=nrc)
