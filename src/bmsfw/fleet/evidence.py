"""Evidence bundles on the fleet server: each update's record, kept per device.

The gateway's agent builds one evidence bundle (:mod:`bmsfw.evidence.bundle`) for
every update it runs and uploads it with its reports:
``POST /api/v1/agent/evidence?campaign_id=N`` with the bundle's bytes as the body.
The server checks it exactly as ``bmsfw evidence verify`` does (:func:`check_upload`:
every file against the manifest's SHA-256, nothing added or missing, the archive
byte for byte in its canonical form) before anything is stored; a refused bundle
answers BMSFW-E690 naming the bundle's own code (E543 not a bundle, E544 changed)
and leaves nothing behind. The device is the one the bundle's manifest names, and
a gateway may file bundles only for its own devices (BMSFW-E613).

Operators read them as the device's update record (UN R156 asks the manufacturer
to keep one per system): ``GET /api/v1/devices/{serial}/evidence`` lists them,
``GET /api/v1/evidence/{id}`` returns the bundle as it was uploaded (same bytes,
same SHA-256), which ``bmsfw evidence verify`` checks again on the operator's side.

A technician who updated a pack on site (``bmsfw update --evidence DIR``) files that
bundle with an operator token: ``POST /api/v1/evidence?serial=S`` (``bmsfw fleet
evidence upload FILE``). The same checks apply (E690); the device is again the one the
manifest names, which must match ``serial`` when given (E695) and be in the fleet
(E696). Such a record says ``filed_by: "operator"`` and ``uploaded_by`` names the
operator's token, where a gateway's upload says ``filed_by: "gateway"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from bmsfw.errors import BmsfwError
from bmsfw.fleet.errors import EvidenceRejectedError

__all__ = ["CheckedBundle", "EvidenceInfo", "check_upload"]

_MAX_TEXT = 120  # what the server keeps of a manifest's strings (its VARCHAR columns)
_YEAR_3000 = 32_503_680_000.0  # a creation time past this is not one (the column is a date)


class EvidenceInfo(BaseModel):
    """One stored bundle, as listed (the bundle itself is ``GET /api/v1/evidence/{id}``)."""

    model_config = ConfigDict(extra="ignore")

    id: int
    device_serial: str
    campaign_id: int | None = None
    received_at: datetime
    created_at: datetime | None = None  # when the agent wrote it (the bundle's manifest)
    outcome: str
    running_version: str = ""
    sha256: str
    size_bytes: int
    uploaded_by: str = ""  # the credential's name: a gateway's, or the filing operator's
    filed_by: str = "gateway"  # "gateway": its agent's upload; "operator": filed by hand

    @property
    def provenance(self) -> str:
        """Who put it there, for people: 'uploaded by gateway depot-gw' (its agent, after
        an update over the air) or 'filed by operator tech-anna' (an update on site)."""
        name = self.uploaded_by.removeprefix(f"{self.filed_by}:")
        verb = "filed" if self.filed_by == "operator" else "uploaded"
        return f"{verb} by {self.filed_by} {name}"


@dataclass(frozen=True)
class CheckedBundle:
    """What the server takes from a bundle that passed :func:`check_upload`."""

    serial: str
    outcome: str
    running_version: str
    created_at: float | None
    manifest: dict[str, Any]


def _text(value: Any) -> str:
    return value[:_MAX_TEXT] if isinstance(value, str) else ""


def check_upload(data: bytes) -> CheckedBundle:
    """Verify ``data`` as ``bmsfw evidence verify`` does; refuse with E690 otherwise."""
    from bmsfw.evidence.bundle import verify_bundle  # python-can: only when a bundle comes

    try:
        verified = verify_bundle(data)
    except BmsfwError as exc:
        raise EvidenceRejectedError(
            f"evidence bundle refused ({exc.code}): {exc.message}", evidence_code=exc.code
        ) from exc
    manifest = dict(verified.manifest)
    device = manifest.get("device")
    serial = _text(device.get("serial")) if isinstance(device, dict) else ""
    if not serial or not serial.isprintable():
        raise EvidenceRejectedError(
            "evidence bundle refused: its manifest names no device serial", evidence_code=""
        )
    raw = manifest.get("created_at")
    created: float | None = None
    if isinstance(raw, int | float) and math.isfinite(raw) and 0 <= raw < _YEAR_3000:
        created = float(raw)
    return CheckedBundle(
        serial=serial,
        outcome=_text(manifest.get("outcome")) or "unknown",
        running_version=_text(manifest.get("running_version")),
        created_at=created,
        manifest=manifest,
    )
