"""Release upload from the browser (release manager and above, as on the API).

A plain HTML form (``multipart/form-data``: works without JavaScript) carrying the
session's CSRF token and the ``.bmsfw`` file. The file is verified and stored exactly as
an API upload is (:meth:`FleetService.ingest_release`: signature, certificate chain to
the trust root with revocation, every component's SHA-256; a rejection is audited and
stores nothing), and the answer page shows what was verified: the signer chain, the
security counter, the hardware it is for, the safety class and whether OTA may
install it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from bmsfw.fleet.errors import RequestInvalidError
from bmsfw.fleet.releases import TrustRoot
from bmsfw.fleet.web.errors import CsrfRefusedError

if TYPE_CHECKING:
    from bmsfw.fleet.web.app import _Pages

__all__ = ["add_upload_routes"]

_MAX_FIELDS = 4


def add_upload_routes(web: FastAPI, pages: _Pages, trust: TrustRoot) -> None:
    @web.post("/releases/upload")
    async def upload(request: Request) -> Response:
        principal, session = await run_in_threadpool(pages.signed_in, request, "release_manager")
        try:
            async with request.form(max_files=1, max_fields=_MAX_FIELDS) as form:
                csrf = form.get("csrf")
                if not isinstance(csrf, str) or not session.csrf_matches(csrf):
                    raise CsrfRefusedError("the form's CSRF token is missing or wrong")
                file = form.get("release")
                if not isinstance(file, UploadFile) or not file.filename:
                    raise RequestInvalidError("choose a .bmsfw release file to upload")
                release, created, facts = await run_in_threadpool(
                    pages.service.ingest_release, principal, trust, file.file, file.filename
                )
        except MultiPartException as exc:
            raise RequestInvalidError(f"the upload form could not be read: {exc}") from exc
        return pages.render(
            request,
            "release_uploaded.html",
            principal=principal,
            session=session,
            r=release,
            created=created,
            facts=facts,
            status=201 if created else 200,
        )
