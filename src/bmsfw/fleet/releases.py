"""Upload verification: a release is admitted only if it verifies against the trust root.

The verification itself belongs to :mod:`bmsfw.package` (signature, X.509 chain
to the vendor root, revocation, component hashes); this module calls it without
device facts (the server has no single target device) and turns the verified
manifest into the flat :class:`ReleaseFacts` the database stores. A package
error is re-raised as :class:`ReleaseRejectedError` carrying the package's own
error code, so the operator sees exactly why (e.g. ``BMSFW-E105`` bad signature).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from bmsfw.errors import PackageError
from bmsfw.fleet.errors import FleetConfigError, ReleaseRejectedError
from bmsfw.fleet.protocol import UINT32_MAX, refuse_unsafe_values
from bmsfw.package import TrustAnchors, verify_release

__all__ = ["ReleaseFacts", "TrustRoot", "safe_filename", "verify_upload"]

_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
DEFAULT_FILENAME = "release.bmsfw"
_HASH_CHUNK = 256 * 1024
# Column widths of the releases table: a signed package whose fields do not fit is
# refused (422), never a database error.
_FIELD_WIDTHS = {"product": 120, "version": 64, "hw_model": 120, "min_bootloader": 64}


def safe_filename(name: str) -> str:
    """``name`` reduced to a plain file name for ``Content-Disposition`` and a client's disk:
    the last path component, letters, digits and ``._+-`` only (anything else becomes
    ``_``), no leading dot, at most 128 characters; ``release.bmsfw`` when nothing is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_FILENAME_CHARS.sub("_", base).lstrip(".")[:128]
    return cleaned if cleaned.strip("_") else DEFAULT_FILENAME


@dataclass(frozen=True)
class ReleaseFacts:
    product: str
    version: str
    security_counter: int
    hw_model: str
    hw_revisions: tuple[str, ...]
    min_bootloader: str
    safety_class: str
    components: tuple[dict[str, Any], ...]
    release_notes: str
    sha256: str
    size_bytes: int
    # The certificates the signature was verified through, signer first, up to the
    # trusted root: subject, issuer, serial, validity end, algorithm (shown at upload).
    signer_chain: tuple[dict[str, str], ...] = ()

    @property
    def safety_critical(self) -> bool:
        return self.safety_class == "safety-critical"

    def release_row(self, *, filename: str, uploaded_at: datetime, by: str) -> dict[str, Any]:
        """The ``releases`` row of this release (column name -> value)."""
        return {
            "product": self.product,
            "version": self.version,
            "security_counter": self.security_counter,
            "hw_model": self.hw_model,
            "hw_revisions": list(self.hw_revisions),
            "min_bootloader": self.min_bootloader,
            "safety_class": self.safety_class,
            "components": list(self.components),
            "release_notes": self.release_notes,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "filename": filename,
            "uploaded_at": uploaded_at,
            "uploaded_by": by,
            "signer_chain": list(self.signer_chain),
        }


class TrustRoot:
    """The vendor root certificate the server verifies uploads against."""

    def __init__(self, root_pem: bytes) -> None:
        try:
            self.anchors = TrustAnchors.from_root_certificate(root_pem)
        except PackageError as exc:
            raise FleetConfigError(f"the --trust-root certificate is not usable: {exc}") from exc
        self.root_pem = root_pem


def verify_upload(
    source: IO[bytes], trust: TrustRoot, *, now: datetime | None = None
) -> ReleaseFacts:
    """Verify the seekable file ``source`` as a ``.bmsfw`` release; raises
    ReleaseRejectedError with the cause.

    No device facts: compatibility and anti-rollback are the device's (and the
    campaign selector's) business; signature, chain, revocation and every
    component hash are checked here. The file is hashed and verified a chunk at a
    time (never read whole); the decoded component images the signed manifest
    declares are what stays in memory while it is verified.
    """
    digest = hashlib.sha256()
    source.seek(0)
    while chunk := source.read(_HASH_CHUNK):
        digest.update(chunk)
    size = source.tell()
    source.seek(0)
    try:
        verified = verify_release(source, trust.anchors, None, now=now)
    except PackageError as exc:
        raise ReleaseRejectedError(
            f"release rejected: {exc.code}: {exc.message}", package_code=exc.code
        ) from exc
    manifest = verified.manifest
    facts = ReleaseFacts(
        product=manifest.product,
        version=manifest.version,
        security_counter=manifest.security_counter,
        hw_model=manifest.hardware.model,
        hw_revisions=tuple(manifest.hardware.revisions),
        min_bootloader=manifest.min_bootloader_version,
        safety_class=str(manifest.safety_class),
        components=tuple(
            {
                "name": c.name,
                "size": c.image_size,
                "sha256": c.image_sha256.hex(),
                "encoding": c.encoding,
            }
            for c in manifest.components
        ),
        release_notes=manifest.release_notes,
        sha256=digest.hexdigest(),
        size_bytes=size,
        signer_chain=tuple(
            {
                "subject": c.subject,
                "issuer": c.issuer,
                "serial_number": c.serial_number,
                "not_after": c.not_after.isoformat(),
                "algorithm": c.algorithm,
            }
            for c in verified.chain
        ),
    )
    _check_storable(facts)
    return facts


def _check_storable(facts: ReleaseFacts) -> None:
    """Refuse a verified package whose facts the database cannot hold as they are."""
    if not 0 <= facts.security_counter <= UINT32_MAX:
        raise ReleaseRejectedError(
            f"release rejected: security counter {facts.security_counter} is outside "
            f"0..{UINT32_MAX} (32-bit unsigned)"
        )
    for name, width in _FIELD_WIDTHS.items():
        if len(getattr(facts, name)) > width:
            raise ReleaseRejectedError(f"release rejected: {name} is longer than {width}")
    try:
        refuse_unsafe_values(
            [
                facts.product,
                facts.version,
                facts.hw_model,
                facts.min_bootloader,
                *facts.hw_revisions,
                facts.release_notes,
                *facts.components,
            ]
        )
    except ValueError as exc:
        raise ReleaseRejectedError(f"release rejected: {exc}") from None
