"""Errors of the update pipeline: preflight (E401–E499) and procedure (E501–E599).

Preflight errors mean *nothing was written to the BMS*; the pipeline raises the
class of the first failing check and names every failed check in the message.
Procedure errors happen after the first byte: the report that goes with them
always says which step failed and what the device runs now.

A few classes are usage errors of this area (a bad profile file, a link name
that cannot be parsed): they inherit ``UsageError`` so the CLI exits with 2,
but keep a code in this area's range so the troubleshooting table lists them
where a technician looks for them.
"""

from __future__ import annotations

from bmsfw.errors import DeviceError, PreflightError, TransportError, UpdateError, UsageError

__all__ = [
    "ActiveFaultsError",
    "AuditLogTamperedError",
    "AuditLogUnusableError",
    "BackupDirUnusableError",
    "BackupIdentityMismatchError",
    "BackupInvalidError",
    "BackupVerifyFailedError",
    "BootTimeoutError",
    "CellSpreadHighError",
    "ConfigDriftError",
    "DeviceIdentityChangedError",
    "DeviceInBootloaderError",
    "DiskSpaceLowError",
    "DowngradeError",
    "InactiveBankBusyError",
    "IncompatibleDeviceError",
    "InstalledImageMismatchError",
    "LinkQualityPoorError",
    "LinkSpecInvalidError",
    "ManualConfirmationMissingError",
    "NoAnswerAfterResetError",
    "NotConfirmedRolledBackError",
    "NothingToRollBackError",
    "OverrideRefusedError",
    "PayloadNotSendableError",
    "ProfileInvalidError",
    "RecordNotWrittenError",
    "ReportDirUnusableError",
    "ReportUnreadableError",
    "RestoreVerifyFailedError",
    "SecurityCounterNotRaisedError",
    "SelfTestFailedRolledBackError",
    "SocOutOfRangeError",
    "SupplyUnstableError",
    "TelemetryUnavailableError",
    "TemperatureOutOfRangeError",
    "TransferInterruptedError",
    "TransferPausedUnsafeError",
    "TransferTooSlowError",
    "TransportUnavailableError",
    "UpdateFailedNoRollbackError",
    "UpdateInterruptedError",
    "VersionDowngradeError",
]


# --- preflight: nothing has been written when one of these is raised ---------


class SocOutOfRangeError(PreflightError):
    code = "BMSFW-E401"
    diagnosis = "The pack's state of charge is outside the window allowed for an update."
    remedy = (
        "Charge or discharge the pack into the window shown (default 20–80 %), "
        "then run the update again."
    )


class TemperatureOutOfRangeError(PreflightError):
    code = "BMSFW-E402"
    diagnosis = "A pack temperature is outside the window allowed for an update."
    remedy = (
        "Let the pack warm up or cool down into the window shown (default 0–45 °C); "
        "do not heat or cool it forcibly."
    )


class SupplyUnstableError(PreflightError):
    code = "BMSFW-E403"
    diagnosis = "The BMS supply voltage varied more than allowed over the sampling window."
    remedy = (
        "Connect a stable power source (bench supply or charger in CV mode), "
        "check the 12/24 V auxiliary supply and its connectors, then try again."
    )


class ActiveFaultsError(PreflightError):
    code = "BMSFW-E404"
    diagnosis = "The BMS reports active protection faults."
    remedy = (
        "Find and clear the cause of the fault (see `bmsfw info`); never update a BMS "
        "that is protecting the pack."
    )


class LinkQualityPoorError(PreflightError):
    code = "BMSFW-E405"
    diagnosis = "The link test failed: echo errors, error counters or a bitrate/baud mismatch."
    remedy = (
        "Check that bitrate/baud rate match on both sides, check termination and cables "
        "(replace worn ones), then run `bmsfw diagnose`."
    )


class BleLinkLimitsError(PreflightError):
    code = "BMSFW-E316"
    diagnosis = (
        "The Bluetooth link to the BMS is below the product profile's limits (ATT MTU, "
        "connection interval or signal strength)."
    )
    remedy = (
        "Move the laptop close to the pack with a clear line of sight, use a dongle that "
        "negotiates a larger MTU and a short connection interval, or a wired link; override "
        "with a reason (--override ble-link) only if the slower link is understood."
    )


class OtaBandwidthTooLowError(PreflightError):
    code = "BMSFW-E315"
    diagnosis = (
        "The field guide allows an over-the-air update only above 5 Mbit/s; a Bluetooth LE "
        "link carries far less, and the product profile does not declare Bluetooth the "
        "product's service link."
    )
    remedy = (
        "Update over a wired link (serial, UDP or CAN), use a profile that declares "
        "ble_service_link = true for a product serviced over Bluetooth by design, or take "
        "responsibility with --override ota-bandwidth --override-reason TEXT (kept in the "
        "report and the audit log). Safety-critical releases never go over Bluetooth."
    )


class InactiveBankBusyError(PreflightError):
    code = "BMSFW-E406"
    diagnosis = "The inactive flash bank is not free: an image is waiting to be confirmed."
    remedy = (
        "Confirm or roll back the pending image first (`bmsfw rollback`), "
        "then run the update again."
    )


class IncompatibleDeviceError(PreflightError):
    code = "BMSFW-E407"
    diagnosis = "The package does not fit this BMS (model, hardware revision or bootloader)."
    remedy = (
        "Check the hardware compatibility matrix in the release notes and get the "
        "package built for this hardware revision and bootloader."
    )


class DowngradeError(PreflightError):
    code = "BMSFW-E408"
    diagnosis = "The package's security counter is below the one fused in the BMS (downgrade)."
    remedy = (
        "Anti-rollback forbids this; install the current or a newer release. "
        "Same-version re-flash is allowed."
    )


class ManualConfirmationMissingError(PreflightError):
    code = "BMSFW-E409"
    diagnosis = "A confirmation the product profile requires from the technician was not given."
    remedy = (
        "Check the site (for example: flammable materials removed, stable power source) and "
        "answer the question, or pass `--confirm ID` for each item."
    )


class OverrideRefusedError(PreflightError):
    code = "BMSFW-E410"
    diagnosis = "An override was requested for a safety check, or without a reason."
    remedy = (
        "Safety checks (state of charge, temperature, supply, faults, compatibility, "
        "anti-rollback) cannot be skipped; non-safety checks need `--override-reason`."
    )


class TelemetryUnavailableError(PreflightError):
    code = "BMSFW-E411"
    diagnosis = "The BMS did not report the telemetry a preflight check needs."
    remedy = "Check the BMS runs its application (`bmsfw info`) and that its sensors are connected."


class DeviceInBootloaderError(PreflightError):
    code = "BMSFW-E412"
    diagnosis = "The BMS is stuck in its bootloader: no valid application runs."
    remedy = (
        "Re-flash from the bootloader with `bmsfw update --recovery` (the same version is "
        "allowed); with a stable supply and the pack in its safe window."
    )


class CellSpreadHighError(PreflightError):
    code = "BMSFW-E413"
    diagnosis = "The cell voltages differ more than the profile allows (unbalanced pack)."
    remedy = (
        "Let the BMS balance the pack (or balance it manually) and check the cell "
        "sense wiring; override with a reason only if the spread is understood."
    )


class VersionDowngradeError(PreflightError):
    code = "BMSFW-E414"
    diagnosis = (
        "The release is an older version than the firmware the BMS runs (a downgrade), "
        "even if its security counter still allows it."
    )
    remedy = (
        "Use the current release; to go back on purpose, run the update again with "
        "`--allow-downgrade REASON` (the reason goes into the report and the audit log)."
    )


# --- procedure: something may have been written --------------------------------


class TransferInterruptedError(UpdateError, TimeoutError):
    code = "BMSFW-E501"
    retry_helps = True
    diagnosis = (
        "The transfer stopped: the BMS stopped answering (time-out, cable, "
        "bitrate/baud mismatch or power loss). The old firmware still runs."
    )
    remedy = (
        "Check power, cables and bitrate/baud synchronisation, then run the same "
        "`bmsfw update` again: it resumes where the transfer stopped."
    )


class TransferTooSlowError(TransferInterruptedError):
    code = "BMSFW-E524"
    diagnosis = (
        "The BMS took the image more slowly than the product profile's floor for this link"
        " (transfer.min_rate_*_bps, averaged after transfer.rate_grace_s): a BMS that asks"
        " for tiny ISO-TP blocks and long gaps, or a failing link. The old firmware still"
        " runs and keeps what it received."
    )
    remedy = (
        "Check the link (bitrate, termination, bus load); run the same `bmsfw update`"
        " again, it resumes. If the BMS keeps asking for block size 1 and a long STmin,"
        " report its firmware; a profile may lower the floor for a known slow link."
    )


class TransferPausedUnsafeError(UpdateError):
    code = "BMSFW-E502"
    retry_helps = True
    diagnosis = (
        "A watched value (supply, temperature or state of charge) left its limits during "
        "the transfer; writing stopped at a safe point. The old firmware still runs."
    )
    remedy = (
        "Bring the pack back into its safe window and run the same `bmsfw update` again: "
        "it resumes where it stopped."
    )


class BackupVerifyFailedError(UpdateError):
    code = "BMSFW-E503"
    diagnosis = "The configuration backup read back from disk differs from the BMS's config."
    remedy = (
        "Use another backup directory or drive (check free space and that it is writable), "
        "then run again; nothing was written to the BMS."
    )


class BackupInvalidError(UpdateError):
    code = "BMSFW-E504"
    diagnosis = "The backup file is not a valid bmsfw backup or its checksum does not match."
    remedy = "Use another copy of the backup (external drive or fleet server)."


class BackupIdentityMismatchError(UpdateError):
    code = "BMSFW-E505"
    diagnosis = "The backup belongs to another BMS (serial or model differs)."
    remedy = "Pick the backup file made from this BMS (its serial is in the file name)."


class RestoreVerifyFailedError(UpdateError):
    code = "BMSFW-E506"
    diagnosis = "After restoring, the configuration read back from the BMS differs from the backup."
    remedy = (
        "Run `bmsfw restore` again; if it persists, the new firmware changed the config "
        "schema: check the release notes."
    )


class ConfigDriftError(UpdateError):
    code = "BMSFW-E507"
    diagnosis = "After the update the BMS configuration differs from the backup."
    remedy = (
        "Review the differences with `bmsfw diff BACKUP`; restore them with "
        "`bmsfw restore BACKUP` if they were not intended by the release."
    )


class BankLayoutMismatchError(UpdateError):
    """Refused before anything is written: the decision is ``core.layout_refusal``."""

    code = "BMSFW-E525"
    diagnosis = (
        "The BMS reports an image bank layout (UDS DID 0x0104, Modbus identity object 0x87,"
        " SMP IDENTITY flash_layout) that cannot take this release:"
        " the image is larger than a bank, fewer than two banks (no A/B: the old image would"
        " not stay bootable), or a bank that is not a whole number of sectors. Nothing was"
        " written."
    )
    remedy = (
        "Check that the release is built for this BMS model and flash size (`bmsfw info`"
        " shows the layout the BMS reports); a BMS that misreports its layout needs its"
        " firmware checked before any update."
    )


class DeviceIdentityChangedError(UpdateError):
    code = "BMSFW-E508"
    diagnosis = (
        "The BMS answered with another identity than at the start (serial, model, vendor,"
        " hardware revision, bank layout, or the active bank before the reset): another"
        " node answers,"
        " the cable was moved, or the BMS misreports itself. Nothing more was written."
    )
    remedy = (
        "Check that one BMS is connected and its node address is unique (`bmsfw scan`),"
        " then run the update again; the report names what changed."
    )


class InstalledImageMismatchError(UpdateError):
    code = "BMSFW-E509"
    diagnosis = (
        "After the confirm, the BMS's digest of its active image is not the release"
        " image's (or it did not report one): the update is not proven, so it is not"
        " reported as updated."
    )
    remedy = (
        "Read the BMS with `bmsfw info`; run the update again. If it repeats, the BMS"
        " runs an image it was not sent: take it out of service and report it."
    )


class SecurityCounterNotRaisedError(UpdateError):
    code = "BMSFW-E523"
    diagnosis = (
        "After the confirm, the BMS's security counter is below the release's (it did not"
        " move): the anti-rollback protection was not raised, so older firmware could"
        " still be installed."
    )
    remedy = (
        "Read `bmsfw info`; run the update again. If the counter still does not move,"
        " the BMS's bootloader does not enforce anti-rollback: report it to the vendor."
    )


class BootTimeoutError(UpdateError, TimeoutError):
    code = "BMSFW-E510"
    diagnosis = (
        "The BMS did not come back after the reset within the boot window (boot loop after update)."
    )
    remedy = (
        "Check the hardware compatibility matrix; wait for the bootloader to revert and "
        "run `bmsfw rollback` to return to the last stable version."
    )


class SelfTestFailedRolledBackError(DeviceError):
    code = "BMSFW-E511"
    diagnosis = "The new firmware failed its self-test; the BMS returned to the previous firmware."
    remedy = (
        "Keep the pack on the previous firmware; send the report (self-test details) to "
        "the firmware vendor and check the hardware compatibility matrix."
    )


class NotConfirmedRolledBackError(DeviceError):
    code = "BMSFW-E512"
    diagnosis = (
        "The new firmware did not confirm itself within the watchdog window; the "
        "bootloader reverted to the previous firmware (boot loop after update)."
    )
    remedy = (
        "Check the hardware compatibility matrix; stay on the last stable version and "
        "report the release to the vendor."
    )


class UpdateFailedNoRollbackError(UpdateError):
    code = "BMSFW-E513"
    diagnosis = "The update failed and the BMS did not return to the previous firmware by itself."
    remedy = (
        "Run `bmsfw rollback`; if the BMS stays in its bootloader, re-flash the last "
        "stable version with `bmsfw update --recovery`."
    )


class AuditLogTamperedError(UpdateError):
    code = "BMSFW-E514"
    diagnosis = "The audit log's hash chain is broken: a record was changed or removed."
    remedy = (
        "Keep the file as evidence; restore the audit log from a backup and report "
        "the incident to whoever is responsible for the site."
    )


class ReportUnreadableError(UpdateError):
    code = "BMSFW-E515"
    diagnosis = "The file is not a bmsfw update report."
    remedy = "Pass the JSON report written by `bmsfw update --report-dir`."


class NoAnswerAfterResetError(UpdateError, TimeoutError):
    code = "BMSFW-E516"
    retry_helps = True
    diagnosis = (
        "The BMS did not answer at all after the reset: a power loss, an unplugged cable "
        "or adapter, not a boot loop. The BMS keeps the new image as a test image or "
        "reverts by itself; nothing is lost."
    )
    remedy = (
        "Restore power and the link, then run the same `bmsfw update` again: it reads "
        "the state from the BMS, runs or reads the self-test, and confirms or reports "
        "the revert without sending the image again."
    )


class NothingToRollBackError(UpdateError):
    code = "BMSFW-E517"
    diagnosis = (
        "There is nothing to roll back to: no unconfirmed test image runs. The other "
        "bank holds a rejected image or an older release that would run without a "
        "self-test. Nothing was changed on the BMS."
    )
    remedy = (
        "Nothing to do if the BMS runs the firmware it should (`bmsfw info`); to go back "
        "to an older release, install it with `bmsfw update OLD.bmsfw --allow-downgrade "
        "REASON`."
    )


class UpdateInterruptedError(UpdateError):
    code = "BMSFW-E518"
    retry_helps = True
    diagnosis = (
        "The update was stopped by the operator (Ctrl-C) or the system (SIGTERM); it "
        "stopped at a safe point and the report says what the BMS runs now."
    )
    remedy = (
        "Run the same `bmsfw update` again: it recognises what the BMS holds and "
        "continues from there."
    )


class RecordNotWrittenError(UpdateError):
    code = "BMSFW-E519"
    diagnosis = (
        "The report or the audit record could not be written at the end (disk full, "
        "drive removed); the outcome printed above is what happened on the BMS."
    )
    remedy = (
        "Free space or reconnect the drive, keep the printed outcome (or the --json "
        "output) as the record, and check `bmsfw info`; the BMS itself is not affected."
    )


# --- usage errors of this area (exit 2) -------------------------------------------


class ProfileInvalidError(UsageError):
    code = "BMSFW-E520"
    diagnosis = "The product profile (TOML) cannot be read or has invalid values."
    remedy = "Fix the named key in the profile; see docs/technician-howto.md for the format."


class LinkSpecInvalidError(UsageError):
    code = "BMSFW-E521"
    diagnosis = "The link could not be understood (--can/--serial, --node/--unit, --baud)."
    remedy = (
        "Name a link as `--can INTERFACE:CHANNEL --node N` or `--serial PORT --unit N --baud RATE`."
    )


class TransportUnavailableError(TransportError):
    code = "BMSFW-E522"
    diagnosis = "No session implementation for this link type is installed in this bmsfw."
    remedy = "Install the full bmsfw package, or use another link type (`--can` or `--serial`)."


# --- the record: checked before the first byte goes to the BMS (exit 2) -----------


class BackupDirUnusableError(UsageError):
    code = "BMSFW-E530"
    diagnosis = (
        "The backup directory cannot be used: a file is in its path, it is read-only, "
        "or it cannot be created. Nothing was sent to the BMS."
    )
    remedy = "Pass a writable directory with `--backup-dir` (an external drive), then run again."


class ReportDirUnusableError(UsageError):
    code = "BMSFW-E531"
    diagnosis = (
        "The report directory cannot be used (a file in its path, read-only, cannot be "
        "created). Nothing was sent to the BMS."
    )
    remedy = "Pass a writable directory with `--report-dir` (or fix the backup directory)."


class AuditLogUnusableError(UsageError):
    code = "BMSFW-E532"
    diagnosis = (
        "The audit log cannot be appended to (a directory of that name, read-only, or "
        "its folder cannot be created). Nothing was sent to the BMS."
    )
    remedy = "Pass a writable file with `--audit-log`, or fix its permissions, then run again."


class DiskSpaceLowError(UsageError):
    code = "BMSFW-E533"
    diagnosis = (
        "Too little free space where the backup, report or audit record go: the record "
        "of the update could be lost. Nothing was sent to the BMS."
    )
    remedy = "Free space on that drive or choose another with `--backup-dir`, then run again."


class PayloadNotSendableError(UsageError):
    code = "BMSFW-E534"
    diagnosis = (
        "This link cannot carry the release as packaged: a delta or encrypted component "
        "only the BMS can decode, and a broadcast (or this session) sends decoded images "
        "only. Nothing was written to the BMS."
    )
    remedy = (
        "Broadcast the full, unencrypted release (a compressed one is decoded by the "
        "updater), or update the units one by one without `--broadcast`."
    )
