"""HTTP routes of the evidence store (:mod:`bmsfw.fleet.evidence`): a gateway files the
bundle of each update it ran, an operator files the bundle of an update done on site;
operators list a device's bundles and download one.

Registered by :func:`bmsfw.fleet.app.create_app` through the same guarded ``_route``
as every other route (roles in the OpenAPI spec, no anonymous access).
"""

from __future__ import annotations

import tempfile
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRouter
from starlette.concurrency import run_in_threadpool

from bmsfw.fleet.app import (
    API,
    GATEWAY,
    OPERATOR,
    IdPath,
    SerialPath,
    _principal,
    _route,
    _service,
)
from bmsfw.fleet.evidence import EvidenceInfo
from bmsfw.fleet.protocol import INT32_MAX

__all__ = ["EVIDENCE_FILE_PATH", "EVIDENCE_UPLOAD_PATH", "evidence_routes"]

EVIDENCE_UPLOAD_PATH = f"{API}/agent/evidence"
EVIDENCE_FILE_PATH = f"{API}/evidence"

_ZIP = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
_UPLOAD_BODY = {
    "required": True,
    "description": "the evidence bundle (.zip) exactly as `bmsfw.evidence` wrote it",
    # Declared as octet-stream (what the agent sends; any media type is read as bytes).
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


async def _body(request: Request) -> bytes:
    """The bundle, spooled while it arrives (the edge stops it at the route's limit, 413),
    then read back once: it is verified as a whole."""
    with tempfile.SpooledTemporaryFile(max_size=1 << 20, prefix="bmsfw-evidence-") as spool:
        async for chunk in request.stream():
            await run_in_threadpool(spool.write, chunk)
        spool.seek(0)
        return await run_in_threadpool(spool.read)


def evidence_routes(router: APIRouter) -> None:
    @_route(
        router,
        "POST",
        "/agent/evidence",
        GATEWAY,
        status_code=201,
        openapi_extra={"requestBody": _UPLOAD_BODY},
        responses={
            200: {"model": EvidenceInfo, "description": "uploaded before: that record"},
            201: {"model": EvidenceInfo, "description": "verified and stored"},
        },
    )
    async def upload_evidence(
        request: Request,
        campaign_id: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
    ) -> JSONResponse:
        """The evidence bundle of one update on one of this gateway's devices (the device
        is the one its manifest names); verified as `bmsfw evidence verify` does (E690)."""
        data = await _body(request)
        info, created = await run_in_threadpool(
            _service(request).store_evidence, _principal(request), data, campaign_id
        )
        return JSONResponse(info.model_dump(mode="json"), status_code=201 if created else 200)

    @_route(
        router,
        "POST",
        "/evidence",
        OPERATOR,
        status_code=201,
        openapi_extra={"requestBody": _UPLOAD_BODY},
        responses={
            200: {"model": EvidenceInfo, "description": "filed before: that record"},
            201: {"model": EvidenceInfo, "description": "verified and stored"},
        },
    )
    async def file_evidence(
        request: Request,
        serial: Annotated[str | None, Query(min_length=1, max_length=120)] = None,
    ) -> JSONResponse:
        """The evidence bundle of an update done on site (`bmsfw update --evidence DIR`),
        filed by an operator: verified as a gateway's upload is (E690); the device is the
        one its manifest names, which must be `serial` when given (E695) and a device of
        the fleet (E696). Recorded as filed by this operator."""
        data = await _body(request)
        info, created = await run_in_threadpool(
            _service(request).file_evidence, _principal(request), data, serial
        )
        return JSONResponse(info.model_dump(mode="json"), status_code=201 if created else 200)

    @_route(
        router,
        "GET",
        "/devices/{serial}/evidence",
        OPERATOR,
        response_model=list[EvidenceInfo],
    )
    def list_evidence(request: Request, serial: SerialPath) -> list[EvidenceInfo]:
        """The device's update record: one evidence bundle per update, newest first."""
        return _service(request).list_evidence(serial)

    @_route(
        router,
        "GET",
        "/evidence/{evidence_id}",
        OPERATOR,
        response_class=Response,
        responses={200: {"description": "the bundle as uploaded", "content": _ZIP}},
    )
    def download_evidence(request: Request, evidence_id: IdPath) -> Response:
        """One evidence bundle, byte for byte as the gateway uploaded it (check it with
        `bmsfw evidence verify`); its SHA-256 is in X-Content-SHA256."""
        info, data = _service(request).get_evidence(evidence_id)
        name = f"evidence_{evidence_id}_{info.sha256[:12]}.zip"
        return Response(
            data,
            media_type="application/zip",
            headers={
                "X-Content-SHA256": info.sha256,
                "Content-Disposition": f'attachment; filename="{name}"',
            },
        )
