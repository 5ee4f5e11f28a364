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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bmsfw.errors import PackageError
from bmsfw.fleet.errors import FleetConfigError, ReleaseRejectedError
from bmsfw.package import TrustAnchors, verify_release

__all__ = ["ReleaseFacts", "TrustRoot", "verify_upload"]


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

    @property
    def safety_critical(self) -> bool:
        return self.safety_class == "safety-critical"


class TrustRoot:
    """The vendor root certificate the server verifies uploads against."""

    def __init__(self, root_pem: bytes) -> None:
        try:
            self.anchors = TrustAnchors.from_root_certificate(root_pem)
        except PackageError as exc:
            raise FleetConfigError(f"the --trust-root certificate is not usable: {exc}") from exc
        self.root_pem = root_pem


def verify_upload(data: bytes, trust: TrustRoot, *, now: datetime | None = None) -> ReleaseFacts:
    """Verify ``data`` as a ``.bmsfw`` release; raises ReleaseRejectedError with the cause.

    No device facts: compatibility and anti-rollback are the device's (and the
    campaign selector's) business; signature, chain, revocation and every
    component hash are checked here.
    """
    try:
        verified = verify_release(data, trust.anchors, None, now=now)
    except PackageError as exc:
        raise ReleaseRejectedError(
            f"release rejected: {exc.code}: {exc.message}", package_code=exc.code
        ) from exc
    manifest = verified.manifest
    return ReleaseFacts(
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
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
