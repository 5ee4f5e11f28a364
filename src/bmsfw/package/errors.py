"""Errors of the package layer: release packages, trust, MCUboot images, PKI (BMSFW-E1xx).

One class per cause, so a device, the CLI and a fleet server can each react to
exactly what went wrong. Ranges inside E1xx:

=========  ======================================================
E101–E119  release package and manifest (structure, trust, policy)
E120–E139  MCUboot component images
E140–E144  component encodings (compression, delta, encryption)
E145       the device's OTA version rule
E150–E169  keys and the vendor PKI
=========  ======================================================
"""

from __future__ import annotations

from bmsfw.errors import PackageError

__all__ = [
    "AntiRollbackError",
    "BadImageMagicError",
    "BadImageSignatureError",
    "BadSignatureError",
    "BadTlvAreaError",
    "BootloaderTooOldError",
    "CertificateExpiredError",
    "CertificateNotYetValidError",
    "CertificatePolicyError",
    "ComponentDecodeError",
    "DecryptionError",
    "DeltaBaseMismatchError",
    "DeltaPatchError",
    "FirmwareFormatError",
    "HashMismatchError",
    "ImageHashMismatchError",
    "ImageKeyNotFusedError",
    "ImageKeyNotGivenError",
    "ImageManifestMismatchError",
    "IncompatibleHardwareError",
    "InvalidManifestError",
    "InvalidVersionError",
    "KeyFileError",
    "KeyHashNotTrustedError",
    "KeyPassphraseMissingError",
    "KeyPassphraseWrongError",
    "MalformedImageError",
    "MalformedPackageError",
    "MissingSecurityCounterError",
    "NotFirmwareError",
    "OtaDowngradeError",
    "PkiExistsError",
    "RevocationListError",
    "RevokedSignerError",
    "SafetyCriticalOverOtaError",
    "SecurityCounterMismatchError",
    "UnsignedImageError",
    "UnsignedPackageError",
    "UnsupportedAlgorithmError",
    "UnsupportedEncodingError",
    "UnsupportedFormatVersionError",
    "UnsupportedImageError",
    "UntrustedSignerError",
    "VersionNotCarriedError",
]


# --- release package and manifest -------------------------------------------------


class MalformedPackageError(PackageError):
    code = "BMSFW-E101"
    diagnosis = "The package is not a well-formed .bmsfw file (truncated, corrupted or not a zip)."
    remedy = "Download or copy the package again and compare its SHA-256 with the vendor's."


class UnsupportedFormatVersionError(PackageError):
    code = "BMSFW-E102"
    diagnosis = "The package or header uses a format version this bmsfw does not understand."
    remedy = "Update bmsfw (or the BMS bootloader) to a version that supports this format."


class InvalidManifestError(PackageError):
    code = "BMSFW-E103"
    diagnosis = "manifest.json is missing fields, has wrong types or is not canonical JSON."
    remedy = "Rebuild the package with `bmsfw package build`; do not edit manifest.json by hand."


class HashMismatchError(PackageError):
    code = "BMSFW-E104"
    diagnosis = "A component's size or SHA-256 differs from what the signed manifest says."
    remedy = "The package was altered or damaged in transit; get a fresh copy from the vendor."


class BadSignatureError(PackageError):
    code = "BMSFW-E105"
    diagnosis = "The manifest signature does not verify with the signer certificate's key."
    remedy = "The manifest was altered after signing; get a fresh copy or re-sign it."


class UntrustedSignerError(PackageError):
    code = "BMSFW-E106"
    diagnosis = "The signer certificate does not chain to a trusted vendor root."
    remedy = "Sign with a certificate issued under the vendor root fused into this BMS."


class CertificateExpiredError(PackageError):
    code = "BMSFW-E107"
    diagnosis = "A certificate in the signer chain has expired."
    remedy = "Re-sign the release with a currently valid signer (`bmsfw keys issue-signer`)."


class CertificateNotYetValidError(PackageError):
    code = "BMSFW-E108"
    diagnosis = "A certificate in the signer chain is not valid yet (check the clock)."
    remedy = "Check the date and time of this computer or device, then verify again."


class RevokedSignerError(PackageError):
    code = "BMSFW-E109"
    diagnosis = "A certificate in the signer chain has been revoked by the vendor."
    remedy = "Do not install this package; ask the vendor for a release signed by a valid signer."


class IncompatibleHardwareError(PackageError):
    code = "BMSFW-E110"
    diagnosis = "The release is not built for this BMS hardware model or revision."
    remedy = "Pick the release for this model and hardware revision (see `bmsfw info`)."


class BootloaderTooOldError(PackageError):
    code = "BMSFW-E111"
    diagnosis = "The BMS bootloader is older than the release requires."
    remedy = "Update the bootloader first (a wired service update), then install this release."


class AntiRollbackError(PackageError):
    code = "BMSFW-E112"
    diagnosis = "The release's security counter is lower than the device's (anti-rollback)."
    remedy = "Install a release with an equal or higher security counter; downgrades are blocked."


class SafetyCriticalOverOtaError(PackageError):
    code = "BMSFW-E113"
    diagnosis = "A safety-critical release was offered over the air, which is not allowed."
    remedy = "Install safety-critical releases on site over a wired link (CAN, RS485 or USB)."


class OtaDowngradeError(PackageError):
    code = "BMSFW-E145"
    diagnosis = (
        "The BMS refused a release header over the air because the release is an older "
        "version than the firmware it runs (even at an equal security counter), and the "
        "request did not say that a person authorised this downgrade."
    )
    remedy = (
        "Install the newer release. To downgrade, give the reason: on site "
        "`bmsfw update --allow-downgrade REASON`; in a fleet, an approved downgrade campaign "
        "to a gateway started with `bmsfw agent --accept-approved-downgrades` "
        "(both recorded in the report and the audit log)."
    )


class UnsignedPackageError(PackageError):
    code = "BMSFW-E114"
    diagnosis = "The package has no manifest signature (it was built but never signed)."
    remedy = "Sign it with `bmsfw package sign` before distributing or verifying it."


class CertificatePolicyError(PackageError):
    code = "BMSFW-E115"
    diagnosis = "A certificate in the chain is not allowed for its role (CA flags, key usage)."
    remedy = "Issue signer and CA certificates with `bmsfw keys`, which sets the right extensions."


class RevocationListError(PackageError):
    code = "BMSFW-E116"
    diagnosis = "A revocation list is malformed or not signed by a trusted CA."
    remedy = "Use the revocation list produced by `bmsfw keys revoke` with the vendor's CA."


class InvalidVersionError(InvalidManifestError, ValueError):
    code = "BMSFW-E117"
    diagnosis = (
        "A version is neither a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD]) "
        "nor an MCUboot header version (MAJOR.MINOR.REVISION+BUILD)."
    )
    remedy = "Write the version as a semantic version, e.g. 1.4.0, 1.4.0-rc.2 or 1.4.0+17."


class VersionNotCarriedError(InvalidVersionError):
    code = "BMSFW-E118"
    diagnosis = (
        "The release version cannot be carried in an MCUboot image header version "
        "(see docs/packages.md, 'Versions')."
    )
    remedy = (
        "Use a pre-release alpha, beta or rc (alone, .N or one digit, e.g. 1.4.0-rc.2), "
        "a build number up to 4294967295, major/minor up to 255 and patch up to 65535."
    )


# --- MCUboot images ----------------------------------------------------------------


class MalformedImageError(PackageError):
    code = "BMSFW-E120"
    diagnosis = "The MCUboot image is truncated or its header sizes are inconsistent."
    remedy = "Rebuild the image (bmsfw or imgtool) and check that it was copied completely."


class BadImageMagicError(PackageError):
    code = "BMSFW-E121"
    diagnosis = "The file does not start with the MCUboot image magic 0x96f3b83d."
    remedy = "Pass a signed MCUboot image, not the raw firmware binary."


class BadTlvAreaError(PackageError):
    code = "BMSFW-E122"
    diagnosis = "The MCUboot TLV area is corrupt (bad magic, lengths or duplicated entries)."
    remedy = "Re-sign the image with bmsfw or imgtool."


class ImageHashMismatchError(PackageError):
    code = "BMSFW-E123"
    diagnosis = "The image's SHA-256 TLV does not match its contents."
    remedy = "The image was altered or damaged; rebuild or fetch it again."


class KeyHashNotTrustedError(PackageError):
    code = "BMSFW-E124"
    diagnosis = "The image is signed with a key whose hash is not among the trusted (fused) ones."
    remedy = "Sign the image with the vendor image-signing key whose hash this BMS holds in OTP."


class BadImageSignatureError(PackageError):
    code = "BMSFW-E125"
    diagnosis = "The image signature does not verify with the signing key."
    remedy = "Re-sign the image with the vendor image-signing key."


class UnsignedImageError(PackageError):
    code = "BMSFW-E126"
    diagnosis = "The image lacks a SHA-256, key or signature TLV needed for secure boot."
    remedy = "Sign the image with a key (`bmsfw package build` or `imgtool sign -k`)."


class UnsupportedImageError(PackageError):
    code = "BMSFW-E127"
    diagnosis = (
        "The image uses an MCUboot feature bmsfw does not support (encryption, RSA, SHA-384+)."
    )
    remedy = "Sign with Ed25519 or ECDSA P-256 and SHA-256, unencrypted."


class ImageManifestMismatchError(PackageError):
    code = "BMSFW-E128"
    diagnosis = (
        "A component image's version, security counter or hardware TLV contradicts the manifest."
    )
    remedy = "Rebuild the release so the images and the manifest agree."


class FirmwareFormatError(PackageError):
    code = "BMSFW-E129"
    diagnosis = (
        "The firmware file is Intel HEX, S-record or ELF but cannot be read "
        "(bad checksum or record, no loadable data, or addresses spread too far apart)."
    )
    remedy = (
        "Export the firmware again from the build (objcopy -O ihex / -O srec, or the linked "
        "ELF) and check that the app is linked for one flash region."
    )


class NotFirmwareError(PackageError):
    code = "BMSFW-E130"
    diagnosis = (
        "The file cannot be a firmware image: it is empty, text that is not Intel HEX or "
        "S-record, or a .bmsfw package."
    )
    remedy = (
        "Pass the firmware as a raw .bin, Intel HEX (.hex), Motorola S-record (.srec/.s19) "
        "or ELF (.elf) file as the build writes it."
    )


class ImageKeyNotGivenError(PackageError):
    code = "BMSFW-E131"
    diagnosis = (
        "The image's signature cannot be checked: the image names its signing key by hash "
        "only (imgtool's default) and the vendor's image-signing public key was not given."
    )
    remedy = (
        "Give the image-signing public key: `--pki DIR` (its image-signing.pub) or "
        "`--image-key image-signing.pub`; or sign with `imgtool sign --public-key-format full`."
    )


class MissingSecurityCounterError(ImageManifestMismatchError):
    code = "BMSFW-E132"
    diagnosis = (
        "The app image has no security counter (SEC_CNT TLV); the BMS refuses such an "
        "image after the transfer, so bmsfw refuses it before."
    )
    remedy = (
        "Sign the image with the release's counter: `imgtool sign --security-counter N` "
        "(N = the manifest's security_counter), or let `bmsfw package build` wrap the raw firmware."
    )


class ImageKeyNotFusedError(KeyHashNotTrustedError):
    code = "BMSFW-E134"
    diagnosis = (
        "The BMS reports the image-verification keys it has fused, and the release's image "
        "is signed by none of them: its secure boot would refuse the image after the whole "
        "transfer, so bmsfw refuses it before the first byte."
    )
    remedy = (
        "Install a release whose image is signed by the image-signing key this BMS holds "
        "(`bmsfw info` lists its key hashes, `bmsfw keys hash image-signing.pub` a key's); "
        "a release signed by another key generation or another vendor is not for this BMS."
    )


class KeyPassphraseMissingError(PackageError):
    code = "BMSFW-E135"
    diagnosis = "The private key is encrypted with a passphrase and none was given."
    remedy = (
        "Give the passphrase: `--tester-key-passphrase-file FILE` (first line), the "
        "environment variable BMSFW_TESTER_KEY_PASSPHRASE, or run on a terminal to be asked."
    )


class KeyPassphraseWrongError(PackageError):
    code = "BMSFW-E136"
    diagnosis = "The passphrase given does not decrypt the private key; nothing was done."
    remedy = (
        "Check which passphrase file or BMSFW_TESTER_KEY_PASSPHRASE value is used. A lost "
        "passphrase cannot be recovered: issue a new tester certificate (`bmsfw keys "
        "issue-tester`) and revoke the old one (`bmsfw keys revoke`)."
    )


class SecurityCounterMismatchError(ImageManifestMismatchError):
    code = "BMSFW-E133"
    diagnosis = (
        "The app image's security counter (SEC_CNT TLV) differs from the manifest's "
        "security_counter; the BMS would refuse it after the transfer."
    )
    remedy = (
        "Re-sign the image with `imgtool sign --security-counter N` for the manifest's N, "
        "or build the release with `--security-counter` equal to the image's."
    )


# --- encodings ----------------------------------------------------------------------


class UnsupportedEncodingError(PackageError):
    code = "BMSFW-E140"
    diagnosis = "A component uses an encoding (compression) this bmsfw does not support."
    remedy = "Update bmsfw or rebuild the package with encoding raw or zstd."


class ComponentDecodeError(PackageError):
    code = "BMSFW-E141"
    diagnosis = "A compressed component could not be decoded to its declared size."
    remedy = "The package is damaged; get a fresh copy from the vendor."


class DeltaBaseMismatchError(PackageError):
    code = "BMSFW-E142"
    diagnosis = "The delta release patches a different image than the one this device runs."
    remedy = "Install the full release (or the delta built against the running version)."


class DeltaPatchError(PackageError):
    code = "BMSFW-E143"
    diagnosis = "The delta patch is corrupt or does not produce the image the manifest names."
    remedy = "The package is damaged; get a fresh copy, or install the full release."


class DecryptionError(PackageError):
    code = "BMSFW-E144"
    diagnosis = "The encrypted image cannot be decrypted with this device-class key."
    remedy = "Build the release with the device class's public key (`bmsfw keys enc-keygen`)."


# --- keys and PKI -------------------------------------------------------------------


class KeyFileError(PackageError):
    code = "BMSFW-E150"
    diagnosis = "A key or certificate file could not be read (wrong format or passphrase)."
    remedy = "Check the path and the passphrase file; keys are PEM files made by `bmsfw keys`."


class UnsupportedAlgorithmError(PackageError):
    code = "BMSFW-E151"
    diagnosis = "The key type is not supported; bmsfw signs with Ed25519 or ECDSA P-256."
    remedy = "Create keys with `bmsfw keys init --algorithm ed25519` (or ecdsa-p256)."


class PkiExistsError(PackageError):
    code = "BMSFW-E152"
    diagnosis = "The target directory already holds a PKI; refusing to overwrite private keys."
    remedy = "Choose an empty directory, or move the existing PKI away deliberately."
