"""A hostile fleet server: our own HTTPS server speaking the documented agent protocol.

Not the bmsfw fleet server: a small ``http.server`` over TLS whose every answer a
test scripts (:class:`Reply`), so it can send what a broken or compromised server
sends: HTML with status 200, redirects, ``null``, fields missing or extra,
endless or dripped bodies, offers with hostile fields, old or forged TUF metadata.
By default it behaves (docs/fleet.md, "agent protocol"): the check-in answers with
``offers``, reports and backups are acknowledged, artifacts are served with Range.

Every request is recorded (method, path, headers, JSON body) so a test can assert
what the agent sent, and to whom.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API = "/api/v1"


@dataclass
class Reply:
    """One scripted answer. ``body`` may be an iterable (streamed as it yields)."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay_s: float = 0.0  # between chunks of an iterable body (drip)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def endless(chunk: bytes = b"x" * 65536, limit_bytes: int = 512 * 1024 * 1024) -> Iterator[bytes]:
    """A body that does not end (up to ``limit_bytes``, so a broken test still finishes)."""
    sent = 0
    while sent < limit_bytes:
        yield chunk
        sent += len(chunk)


def drip(data: bytes) -> Iterator[bytes]:
    """``data`` one byte per chunk (with ``Reply.chunk_delay_s`` between them)."""
    for i in range(len(data)):
        yield data[i : i + 1]


Handler = Callable[[Seen], Reply | None]  # None: the default (well-behaved) answer


class HostileServer:
    """The server. ``script[route]`` overrides one route; routes: ``check-in``, ``reports``,
    ``backups``, ``artifact``, ``tuf`` (any ``/api/v1/tuf/...`` file), ``other``."""

    def __init__(self, tls_cert: Path, tls_key: Path) -> None:
        self.seen: list[Seen] = []
        self.script: dict[str, Handler] = {}
        self.offers: list[dict[str, Any]] = []
        self.artifacts: dict[int, bytes] = {}
        self.tuf_files: dict[str, bytes] = {}
        self.poll_interval_s: Any = 1
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls_cert), str(tls_key))
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---- what the agent sent -------------------------------------------------

    def requests(self, route: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if _route(s.path) == route]

    def check_ins(self) -> list[dict[str, Any]]:
        return [s.body for s in self.requests("check-in")]

    def reports(self) -> list[dict[str, Any]]:
        return [s.body for s in self.requests("reports")]

    # ---- the well-behaved answers ---------------------------------------------

    def check_in_answer(self) -> dict[str, Any]:
        return {
            "protocol_version": 1,
            "gateway": "gw-hostile",
            "server_time": datetime.now(UTC).isoformat(),
            "poll_interval_s": self.poll_interval_s,
            "offers": self.offers,
            "unknown_serials": [],
        }

    def _default(self, seen: Seen, route: str, handler: BaseHTTPRequestHandler) -> Reply:
        if route == "check-in":
            return Reply.json(self.check_in_answer())
        if route == "reports":
            body = seen.body or {}
            return Reply.json(
                {
                    "device_serial": body.get("device_serial", ""),
                    "campaign_id": body.get("campaign_id", 0),
                    "state": body.get("state", "pending"),
                    "campaign_status": "running",
                    "changed": True,
                }
            )
        if route == "backups":
            body = seen.body or {}
            return Reply.json(
                {
                    "id": len(self.requests("backups")),
                    "device_serial": body.get("device_serial", ""),
                    "created_at": datetime.now(UTC).isoformat(),
                    "reason": body.get("reason", ""),
                    "sha256": "0" * 64,
                    "size_bytes": 1,
                },
                status=201,
            )
        if route == "artifact":
            match = re.search(r"/releases/(\d+)/artifact", seen.path)
            data = self.artifacts.get(int(match.group(1))) if match else None
            if data is None:
                return Reply.json({"error": {"code": "BMSFW-E604", "message": "no"}}, 404)
            ranged = re.fullmatch(r"bytes=(\d+)-", seen.headers.get("range", ""))
            if ranged:
                start = int(ranged.group(1))
                return Reply(
                    206,
                    data[start:],
                    {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                )
            return Reply(200, data, {"Content-Type": "application/octet-stream"})
        if route == "tuf":
            name = seen.path.split("/tuf/", 1)[1]
            if name in self.tuf_files:
                return Reply(200, self.tuf_files[name], {"Content-Type": "application/json"})
            return Reply.json({"error": {"code": "BMSFW-E604", "message": "no"}}, 404)
        return Reply.json({"error": {"code": "BMSFW-E604", "message": "no route"}}, 404)

    # ---- plumbing ------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        headers = {k.lower(): v for k, v in handler.headers.items()}
        seen = Seen(method, handler.path, headers, body)
        with self._lock:
            self.seen.append(seen)
        route = _route(handler.path)
        script = self.script.get(route)
        reply = script(seen) if script is not None else None
        if reply is None:
            reply = self._default(seen, route, handler)
        self._send(handler, reply)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        try:
            handler.send_response(reply.status)
            for key, value in reply.headers.items():
                handler.send_header(key, value)
            if isinstance(reply.body, bytes):
                handler.send_header("Content-Length", str(len(reply.body)))
                handler.end_headers()
                handler.wfile.write(reply.body)
                return
            # Streamed: no length, the connection closes at the end.
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.close_connection = True
            for chunk in reply.body:
                handler.wfile.write(chunk)
                handler.wfile.flush()
                if reply.chunk_delay_s:
                    time.sleep(reply.chunk_delay_s)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            handler.close_connection = True  # the agent hung up: what it should do


def _route(path: str) -> str:
    path = path.split("?", 1)[0]
    if path == f"{API}/agent/check-in":
        return "check-in"
    if path == f"{API}/agent/reports":
        return "reports"
    if path == f"{API}/agent/backups":
        return "backups"
    if path.startswith(f"{API}/releases/") and path.endswith("/artifact"):
        return "artifact"
    if path.startswith(f"{API}/tuf/"):
        return "tuf"
    return "other"
