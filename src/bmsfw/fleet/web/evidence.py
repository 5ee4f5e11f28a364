"""Evidence bundles on the dashboard: the device page lists its update record (one
bundle per update its gateway ran) and an operator downloads a bundle as it was
uploaded, to check it with `bmsfw evidence verify` (operator and above, as on the API:
a bundle holds the device's configuration)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response

from bmsfw.fleet.errors import FleetNotFoundError

if TYPE_CHECKING:
    from bmsfw.fleet.web.app import _Pages

__all__ = ["add_evidence_routes"]


def add_evidence_routes(web: FastAPI, pages: _Pages) -> None:
    @web.get("/evidence/{evidence_id}/download")
    def download(request: Request, evidence_id: str) -> Response:
        pages.signed_in(request, "operator")
        if not (evidence_id.isdigit() and len(evidence_id) < 11 and 0 < int(evidence_id) < 2**31):
            raise FleetNotFoundError(f"no evidence bundle with id {evidence_id[:20]!r}")
        info, data = pages.service.get_evidence(int(evidence_id))
        name = f"evidence_{info.id}_{info.sha256[:12]}.zip"
        return Response(
            data,
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Content-SHA256": info.sha256,
            },
        )
