"""Errors of the virtual BMS device core (BMSFW-E201..E249).

The device raises these when it *refuses* a request (wrong state or sequence,
an address out of range, a transfer that does not verify) or when its own
hardware fails (flash program error, power cut). Trust failures found while
checking a release header or an image are raised as the package module's
``PackageError`` subclasses unchanged, so a client sees exactly the same code
whether a package was refused offline or by the device.

Protocol servers translate these into negative responses / exception codes;
the ``code`` is stable and documented in docs/virtual-bms.md.
"""

from __future__ import annotations

from bmsfw.errors import DeviceError

__all__ = [
    "BootStateCorruptError",
    "ConfigChecksumError",
    "ConfigSchemaError",
    "ConfigValueError",
    "DeviceBusyError",
    "DeviceNotRunningError",
    "EraseNeededError",
    "FlashProgramError",
    "NoStagedUpdateError",
    "NotConfirmableError",
    "NotVerifiedError",
    "PowerCutError",
    "ProvisioningError",
    "RollbackBlockedError",
    "StateDirectoryError",
    "UpdateInProgressError",
    "VerifyFailedError",
    "WriteOutOfRangeError",
    "WrongStateError",
]


class WrongStateError(DeviceError):
    code = "BMSFW-E201"
    diagnosis = "The BMS is not in a state that allows this request (wrong sequence)."
    remedy = "Follow the update sequence: prepare, erase, write, verify, activate, reset, confirm."


class NoStagedUpdateError(DeviceError):
    code = "BMSFW-E202"
    diagnosis = "No update is staged: the release header was not accepted yet."
    remedy = "Send the release header first (prepare / begin_update), then erase and write."


class EraseNeededError(DeviceError):
    code = "BMSFW-E203"
    diagnosis = "The target flash is not erased: data can only be programmed into erased flash."
    remedy = "Erase the inactive bank before writing (or write the same data as already there)."


class WriteOutOfRangeError(DeviceError):
    code = "BMSFW-E204"
    diagnosis = "The write falls outside the image size announced in the release header."
    remedy = "Write only offsets 0..size-1 of the component image named in the manifest."


class VerifyFailedError(DeviceError):
    code = "BMSFW-E205"
    diagnosis = "The image in the inactive bank does not match the manifest (size or SHA-256)."
    remedy = "Re-send the missing or damaged blocks (see the transfer status) and verify again."


class NotVerifiedError(DeviceError):
    code = "BMSFW-E206"
    diagnosis = "The staged image has not passed verification, so it cannot be activated."
    remedy = "Run the check-programming step (verify) and fix what it reports first."


class DeviceNotRunningError(DeviceError):
    code = "BMSFW-E207"
    diagnosis = "The BMS is resetting or booting and does not answer yet."
    remedy = "Wait for the boot to finish (boot status run_state 'application') and retry."


class FlashProgramError(DeviceError):
    code = "BMSFW-E208"
    diagnosis = "The flash controller reported a program or erase error."
    remedy = (
        "Retry the erase and transfer; if it repeats, the BMS flash may be worn: replace the board."
    )


class PowerCutError(DeviceError):
    code = "BMSFW-E209"
    retry_helps = True
    diagnosis = "The BMS lost power; this instance is dead until the power comes back."
    remedy = "Power the BMS again (open a new device on the same state directory) and resume."


class NotConfirmableError(DeviceError):
    code = "BMSFW-E210"
    diagnosis = (
        "Nothing to confirm: no image runs in test mode, its self-test has not passed in this"
        " boot, or the BMS rejected (reverted) the test image it was sent."
    )
    remedy = (
        "Read the boot status and self-test record; confirm only a test image whose self-test"
        " passed. After a revert the old firmware stays: fix the cause and run the update again."
    )


class RollbackBlockedError(DeviceError):
    code = "BMSFW-E211"
    diagnosis = (
        "Nothing to roll back to: the other bank holds a rejected (reverted) image, no valid"
        " image, or one that anti-rollback blocks; the running firmware stays."
    )
    remedy = (
        "Install the wanted version as a new signed release with a sufficient security counter."
    )


class UpdateInProgressError(DeviceError):
    code = "BMSFW-E212"
    diagnosis = "A test image is running unconfirmed; the fallback bank must not be touched."
    remedy = "Confirm the running image or roll it back before starting another update."


class ConfigSchemaError(DeviceError):
    code = "BMSFW-E213"
    diagnosis = "The configuration uses a schema version or field this firmware does not know."
    remedy = "Convert the backup to the device's schema version (see `bmsfw info`) and write again."


class ConfigValueError(DeviceError):
    code = "BMSFW-E214"
    diagnosis = "A configuration or calibration value is outside its safe limits."
    remedy = "Correct the value named in the message; limits are listed in docs/virtual-bms.md."


class ConfigChecksumError(DeviceError):
    code = "BMSFW-E215"
    diagnosis = "The configuration snapshot's checksum does not match its contents."
    remedy = "The backup was altered or damaged; use a verified backup file."


class DeviceBusyError(DeviceError):
    code = "BMSFW-E216"
    diagnosis = "The BMS refuses this while the pack is energised or a protection fault is active."
    remedy = "Clear the protection fault or isolate the pack, then retry."


class BootStateCorruptError(DeviceError):
    code = "BMSFW-E217"
    diagnosis = "No valid copy of a power-fail-safe NVM record could be read."
    remedy = "Re-provision the BMS at the factory station; both record copies are damaged."


class StateDirectoryError(DeviceError):
    code = "BMSFW-E218"
    diagnosis = "The virtual BMS state directory is missing, incomplete or not provisioned."
    remedy = "Create the device with `provision(...)` (or `bmsfw sim provision`) first."


class ProvisioningError(DeviceError):
    code = "BMSFW-E219"
    diagnosis = "The factory provisioning data is inconsistent (image does not fit, bad key hash)."
    remedy = "Check the spec, the initial image and the key hashes passed to provisioning."
