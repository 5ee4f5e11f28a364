"""Signed BMS release packages, MCUboot component images and the vendor PKI.

Pure trust decisions (bytes in, verified objects or one specific
``PackageError`` out): :func:`verify_header` is what a BMS runs on the small
signed header; :func:`verify_release` runs the same check plus every component
on a whole ``.bmsfw`` package; :func:`verify_image` / :func:`verify_image_stream`
check an MCUboot image against fused key hashes. Only ``_keystore`` touches
files (the PKI directory).
"""

from bmsfw.package._crypto import (
    ALGORITHMS,
    Algorithm,
    PrivateKey,
    PublicKey,
    generate_key,
    key_hash,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_der,
    public_key_pem,
)
from bmsfw.package._encoding import ENCODINGS
from bmsfw.package._header import ReleaseHeader, decode_header, encode_header
from bmsfw.package._image import (
    IMAGE_MAGIC,
    ImageInfo,
    McubootImage,
    Tlv,
    build_image,
    parse_image,
    parse_image_stream,
    verify_image,
    verify_image_stream,
)
from bmsfw.package._keystore import (
    PkiPaths,
    init_pki_dir,
    issue_signer_in_dir,
    load_certificate_file,
    load_key_file,
    load_signer,
    private_key_encrypted,
    revoke_in_dir,
    unlock_private_key,
)
from bmsfw.package._manifest import FORMAT_VERSION, SAFETY_CLASSES, Component, Manifest
from bmsfw.package._model import DeviceFacts, HardwareCompat
from bmsfw.package._pki import (
    RevokedEntry,
    SignerCredentials,
    VendorPki,
    create_pki,
    create_revocation_list,
    issue_signer,
)
from bmsfw.package._release import (
    ComponentInspection,
    ComponentSource,
    ReleaseInspection,
    VerifiedRelease,
    build_release,
    check_policy,
    image_key_refusal,
    inspect_release,
    release_header,
    sign_release,
    verify_header,
    verify_release,
)
from bmsfw.package._trust import CertificateSummary, TrustAnchors, summarize_certificate
from bmsfw.package.version import (
    ImageVersion,
    Version,
    as_version,
    compare_versions,
    device_runs,
    image_version_of,
    parse_image_version,
    parse_version,
)

__all__ = [
    "ALGORITHMS",
    "ENCODINGS",
    "FORMAT_VERSION",
    "IMAGE_MAGIC",
    "SAFETY_CLASSES",
    "Algorithm",
    "CertificateSummary",
    "Component",
    "ComponentInspection",
    "ComponentSource",
    "DeviceFacts",
    "HardwareCompat",
    "ImageInfo",
    "ImageVersion",
    "Manifest",
    "McubootImage",
    "PkiPaths",
    "PrivateKey",
    "PublicKey",
    "ReleaseHeader",
    "ReleaseInspection",
    "RevokedEntry",
    "SignerCredentials",
    "Tlv",
    "TrustAnchors",
    "VendorPki",
    "VerifiedRelease",
    "Version",
    "as_version",
    "build_image",
    "build_release",
    "check_policy",
    "compare_versions",
    "create_pki",
    "create_revocation_list",
    "decode_header",
    "device_runs",
    "encode_header",
    "generate_key",
    "image_key_refusal",
    "image_version_of",
    "init_pki_dir",
    "inspect_release",
    "issue_signer",
    "issue_signer_in_dir",
    "key_hash",
    "load_certificate_file",
    "load_key_file",
    "load_private_key",
    "load_public_key",
    "load_signer",
    "parse_image",
    "parse_image_stream",
    "parse_image_version",
    "parse_version",
    "private_key_encrypted",
    "private_key_pem",
    "public_key_der",
    "public_key_pem",
    "release_header",
    "revoke_in_dir",
    "sign_release",
    "summarize_certificate",
    "unlock_private_key",
    "verify_header",
    "verify_image",
    "verify_image_stream",
    "verify_release",
]
