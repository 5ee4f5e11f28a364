"""Configuration backups on the dashboard: download one, compare two (operator and above,
as on the API). A comparison is a unified diff of the two configurations as sorted,
indented JSON; the text is shown escaped like everything else."""

from __future__ import annotations

import difflib
import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from bmsfw.fleet.auth import Principal
from bmsfw.fleet.errors import FleetNotFoundError

if TYPE_CHECKING:
    from bmsfw.fleet.web.app import _Pages

__all__ = ["add_backup_routes", "config_diff"]


def _backup_id(text: str) -> int:
    if not (text.isdigit() and len(text) < 11 and 0 < int(text) < 2**31):
        raise FleetNotFoundError(f"no backup with id {text[:20]!r}")
    return int(text)


def _pretty(config: Any) -> list[str]:
    return json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def config_diff(a: Any, b: Any, name_a: str, name_b: str) -> list[tuple[str, str]]:
    """(kind, line) of the unified diff from ``a`` to ``b``; kind is one of
    ``add``, ``del``, ``hunk``, ``file`` or ``same``."""
    kinds = {"+": "add", "-": "del", "@": "hunk"}
    lines = []
    for line in difflib.unified_diff(_pretty(a), _pretty(b), name_a, name_b, lineterm="", n=3):
        kind = "file" if line.startswith(("+++", "---")) else kinds.get(line[:1], "same")
        lines.append((kind, line))
    return lines


def add_backup_routes(web: FastAPI, pages: _Pages) -> None:
    @web.get("/backups/{backup_id}/download")
    def download(request: Request, backup_id: str) -> Response:
        principal, _session = pages.signed_in(request, "operator")
        number = _backup_id(backup_id)
        backup = pages.service.get_backup(principal, number)
        body = json.dumps(backup["config"], indent=2, sort_keys=True, ensure_ascii=False)
        return Response(
            body.encode(),
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="backup-{number}.json"'},
        )

    @web.get("/devices/{serial}/backups/diff")
    def diff(request: Request, serial: str) -> Response:
        def build(principal: Principal) -> dict[str, Any]:
            first = _backup_id(request.query_params.get("a", ""))
            second = _backup_id(request.query_params.get("b", ""))
            a = pages.service.get_backup(principal, first)
            b = pages.service.get_backup(principal, second)
            for backup in (a, b):
                if backup["device_serial"] != serial:
                    raise FleetNotFoundError(f"backup {backup['id']} is not one of {serial!r}")
            return {
                "serial": serial,
                "a": a,
                "b": b,
                "lines": config_diff(
                    a["config"], b["config"], f"backup {first}", f"backup {second}"
                ),
            }

        return pages.view(request, "backup_diff.html", build, minimum="operator")
