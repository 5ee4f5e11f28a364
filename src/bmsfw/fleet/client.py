"""HTTP client for the fleet server: what the gateway agent (and the CLI) use.

* TLS: the server certificate is verified against the CA bundle in
  :class:`ClientConfig` (``ca_file``); plain ``http://`` is refused unless
  ``allow_insecure_http`` is set (tests against the in-process app).
* Errors come back as the same :class:`~bmsfw.errors.FleetError` subclass the
  server raised (matched by code); a rejected upload carries the package's code.
* :meth:`FleetClient.download` resumes a partial download with HTTP Range
  (``If-Range`` on the artifact's ETag, so a changed file restarts from zero),
  never writes more than the announced size, checks the SHA-256 before the file
  gets its final name, and measures the throughput (for the bandwidth floor).
* Every answer is bounded (:class:`ClientLimits`): its size (answers and error
  bodies are read as a stream and cut off at the limit, never loaded whole), its
  overall time (a server that drips bytes is cut off at the deadline, however
  alive the connection looks), and its form (anything but the documented JSON,
  a redirect included, is :class:`~bmsfw.fleet.agent_errors.MalformedAnswerError`).
  An artifact must arrive within ``download_grace_s`` plus its size at
  ``min_download_rate_bps``.
* The server picks no host: an artifact URL must resolve to the server's own
  origin (the bearer token goes only there) or to an origin named in
  ``ClientConfig.artifact_origins`` (HTTPS, no token sent); redirects are never
  followed.

The server is not trusted for authenticity: the agent must still verify the
package signature end to end (``bmsfw.package.verify_release``) before it
touches a BMS. The digest check here only catches corruption and truncation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from bmsfw.errors import FleetError
from bmsfw.fleet.agent_errors import (
    AnswerTooLargeError,
    AnswerTooSlowError,
    ArtifactLocationRefusedError,
    MalformedAnswerError,
)
from bmsfw.fleet.errors import (
    DownloadDigestMismatchError,
    DownloadTooLargeError,
    FleetConfigError,
    FleetServerError,
    FleetTimeoutError,
    FleetUnreachableError,
    ReleaseRejectedError,
    TlsVerificationError,
    fleet_error_for_code,
)
from bmsfw.fleet.evidence import EvidenceInfo
from bmsfw.fleet.protocol import (
    BackupInfo,
    BackupUpload,
    CheckIn,
    CheckInResponse,
    Offer,
    OperatorBackupUpload,
    StateReport,
    StateReportResponse,
    backup_sha256,
)

__all__ = [
    "CheckInAnswer",
    "ClientConfig",
    "ClientLimits",
    "DownloadResult",
    "FleetClient",
    "RefusedOffer",
]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
API = "/api/v1"
_ERROR_BODY_BYTES = 64 * 1024  # an error answer is read this far, the rest is dropped
_IDENTITY = {"Accept-Encoding": "identity"}  # no compressed answers (see _raw_chunks)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True)
class ClientLimits:
    """Bounds on what one server answer may cost the agent (docs/agent.md, 'Bounds')."""

    max_answer_bytes: int = 2 * 1024 * 1024  # a check-in answer, report answer, ...
    max_operator_answer_bytes: int = 64 * 1024 * 1024  # listings for an operator's CLI
    answer_deadline_s: float = 60.0  # first byte sent to last byte received
    min_download_rate_bps: float = 8_000.0  # artifact: average over the whole attempt
    download_grace_s: float = 60.0  # allowed on top of size / min rate (TLS, slow start)

    def download_deadline_s(self, remaining_bytes: int) -> float:
        return self.download_grace_s + remaining_bytes * 8 / self.min_download_rate_bps


@dataclass(frozen=True)
class ClientConfig:
    server_url: str
    token: str
    ca_file: Path | None = None  # None: the system trust store
    timeout_s: float = 30.0  # connect, and each read: a silent server is cut off after this
    allow_insecure_http: bool = False
    # Other origins ("https://cdn.example.com") artifacts may come from; no token goes there.
    artifact_origins: tuple[str, ...] = ()
    limits: ClientLimits = field(default_factory=ClientLimits)


@dataclass(frozen=True)
class RefusedOffer:
    """An offer of a check-in answer that failed validation (the others are used)."""

    campaign_id: int | None
    device_serial: str | None
    error: MalformedAnswerError


@dataclass(frozen=True)
class CheckInAnswer:
    """The check-in answer as the agent uses it: valid offers, and the refused ones."""

    poll_interval_s: float
    offers: tuple[Offer, ...]
    refused: tuple[RefusedOffer, ...] = ()
    gateway: str = ""
    telemetry_interval_s: float | None = None  # None: the server named none


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size_bytes: int
    sha256: str
    resumed_from: int  # bytes already on disk before this call
    transferred_bytes: int  # bytes received in this call
    elapsed_s: float

    @property
    def throughput_bps(self) -> float:
        """Bits per second over this call's transfer (0 when nothing moved)."""
        if self.transferred_bytes == 0 or self.elapsed_s <= 0:
            return 0.0
        return self.transferred_bytes * 8 / self.elapsed_s


class FleetClient:
    """One credential's view of the fleet server (gateway token or operator token)."""

    def __init__(self, config: ClientConfig, *, http: httpx.Client | None = None) -> None:
        self.config = config
        if http is None:
            if config.server_url.startswith("http://") and not config.allow_insecure_http:
                raise FleetConfigError(
                    f"{config.server_url} is plain HTTP; use https:// (or allow_insecure_http "
                    "for a local test server)"
                )
            verify: ssl.SSLContext | bool = True
            if config.ca_file is not None:
                try:
                    verify = ssl.create_default_context(cafile=str(config.ca_file))
                except (OSError, ssl.SSLError) as exc:
                    raise FleetConfigError(f"cannot load CA file {config.ca_file}: {exc}") from exc
            http = httpx.Client(base_url=config.server_url, verify=verify, timeout=config.timeout_s)
        self._http = http
        self._auth = {"Authorization": f"Bearer {config.token}"}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- plumbing -------------------------------------------------------

    @contextlib.contextmanager
    def _transport_errors(self, timed_out: str) -> Iterator[None]:
        """httpx's timeouts as E618 (``timed_out``, the cause appended), its other
        transport failures as E617/E619 (:func:`_transport_error`)."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise FleetTimeoutError(f"{timed_out} ({exc})") from exc
        except httpx.TransportError as exc:
            raise _transport_error(self.config.server_url, exc) from exc

    def _exchange(
        self, method: str, path: str, *, max_bytes: int, **kwargs: Any
    ) -> tuple[httpx.Response, bytes]:
        """One request to the server; the answer's body read within the size and time bounds."""
        limits = self.config.limits
        headers = {**self._auth, **_IDENTITY, **kwargs.pop("headers", {})}
        what = f"{method} {path}"
        with (
            self._transport_errors(f"{what}: no answer in time"),
            self._http.stream(method, path, headers=headers, **kwargs) as response,
        ):
            deadline = time.monotonic() + limits.answer_deadline_s
            if response.status_code >= 400:
                body = _read_capped(response, _ERROR_BODY_BYTES, deadline, what, cut=True)
                raise _error_from(response, body)
            body = _read_capped(response, max_bytes, deadline, what)
        if not 200 <= response.status_code < 300:
            location = _printable(response.headers.get("location", ""), 200)
            raise MalformedAnswerError(
                f"{what}: HTTP {response.status_code} {location}".rstrip()
                + " (the agent follows no redirect)"
            )
        return response, body

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response, _ = self._exchange(
            method, path, max_bytes=self.config.limits.max_answer_bytes, **kwargs
        )
        return response

    def _json(self, method: str, path: str, *, max_bytes: int | None = None, **kwargs: Any) -> Any:
        limit = max_bytes or self.config.limits.max_operator_answer_bytes
        _, body = self._exchange(method, path, max_bytes=limit, **kwargs)
        return _parse_json(body, f"{method} {path}")

    def _model(self, model: type[M], method: str, path: str, body: BaseModel) -> M:
        data = self._json(
            method,
            path,
            max_bytes=self.config.limits.max_answer_bytes,
            json=body.model_dump(mode="json"),
        )
        return _validate(model, data, f"{method} {path}")

    # ---- agent ----------------------------------------------------------

    def check_in(self, body: CheckIn) -> CheckInAnswer:
        """Check in; a malformed answer raises E675, a malformed offer in it is refused alone."""
        what = f"POST {API}/agent/check-in"
        data = self._json(
            "POST",
            f"{API}/agent/check-in",
            max_bytes=self.config.limits.max_answer_bytes,
            json=body.model_dump(mode="json", exclude_defaults=not body.problems),
        )
        return _decode_check_in(data, what)

    def report_state(self, report: StateReport) -> StateReportResponse:
        return self._model(StateReportResponse, "POST", f"{API}/agent/reports", report)

    def upload_backup(self, backup: BackupUpload) -> BackupInfo:
        return self._model(BackupInfo, "POST", f"{API}/agent/backups", backup)

    # ---- operator ---------------------------------------------------------

    def upload_device_backup(
        self, serial: str, config: dict[str, Any], reason: str = ""
    ) -> BackupInfo:
        """File a backup of device ``serial`` (operator token; the device must be in the
        inventory). The answer's ``sha256`` is that of the canonical JSON of ``config``."""
        body = OperatorBackupUpload(reason=reason, config=config)
        info = self._model(
            BackupInfo, "POST", f"{API}/devices/{quote(serial, safe='')}/backups", body
        )
        # The server hashes what it stored: a different digest means it stored
        # something other than what was sent, and the server copy cannot be trusted.
        sent = backup_sha256(config)
        if info.sha256 != sent:
            raise FleetServerError(
                f"server stored backup {info.id} of {serial} with sha256 {info.sha256}, "
                f"but the document sent has sha256 {sent}"
            )
        return info

    def _models(self, model: type[M], path: str) -> list[M]:
        """``GET path``: a JSON list, each item validated as ``model`` (E675 otherwise)."""
        what = f"GET {API}/{path}"
        return [
            _validate(model, item, what)
            for item in _a_list(self._json("GET", f"{API}/{path}"), what)
        ]

    def list_device_backups(self, serial: str) -> list[BackupInfo]:
        return self._models(BackupInfo, f"devices/{quote(serial, safe='')}/backups")

    def get_backup(self, backup_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"{API}/backups/{backup_id}")
        return result

    # ---- evidence bundles (bmsfw.fleet.evidence) -------------------------------

    def upload_evidence(self, data: bytes, campaign_id: int | None = None) -> EvidenceInfo:
        """File one update's evidence bundle (gateway token); the server verifies it (E690)."""
        params = {"campaign_id": campaign_id} if campaign_id is not None else None
        return self._post_evidence("agent/evidence", data, params)

    def file_evidence(self, data: bytes, serial: str | None = None) -> EvidenceInfo:
        """File the bundle of an update done on site (operator token): verified as a
        gateway's upload (E690), of ``serial`` when given (E695), a fleet device (E696)."""
        return self._post_evidence("evidence", data, {"serial": serial} if serial else None)

    def _post_evidence(self, path: str, data: bytes, params: dict[str, Any] | None) -> EvidenceInfo:
        what = f"POST {API}/{path}"
        answer = self._json(
            "POST",
            f"{API}/{path}",
            max_bytes=self.config.limits.max_answer_bytes,
            content=data,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )
        info = _validate(EvidenceInfo, answer, what)
        sent = hashlib.sha256(data).hexdigest()
        if info.sha256 != sent:
            raise FleetServerError(
                f"server stored evidence {info.id} with sha256 {info.sha256}, sent {sent}"
            )
        return info

    def list_device_evidence(self, serial: str) -> list[EvidenceInfo]:
        """A device's evidence bundles, newest first (operator token)."""
        return self._models(EvidenceInfo, f"devices/{quote(serial, safe='')}/evidence")

    def download_evidence(self, evidence_id: int) -> bytes:
        """One bundle's bytes, checked against the SHA-256 the server announces (E621)."""
        path = f"{API}/evidence/{evidence_id}"
        response, body = self._exchange(
            "GET", path, max_bytes=self.config.limits.max_operator_answer_bytes
        )
        announced = response.headers.get("x-content-sha256", "")
        digest = hashlib.sha256(body).hexdigest()
        if digest != announced:
            raise DownloadDigestMismatchError(
                f"GET {path}: SHA-256 {digest}, server announced {_printable(announced, 80)!r}"
            )
        return body

    def download(
        self,
        offer: Offer,
        dest: Path,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> DownloadResult:
        """Fetch ``offer``'s artifact to ``dest``, resuming from ``dest + '.part'``."""
        return self.download_url(
            offer.artifact_url,
            dest,
            size_bytes=offer.size_bytes,
            sha256=offer.sha256,
            progress=progress,
        )

    def artifact_request(self, url: str, headers: dict[str, str]) -> httpx.Request:
        """The GET for an artifact ``url``, refused (E678) unless it stays on an allowed origin.

        The server's own origin gets the bearer token; an origin named in
        ``artifact_origins`` (HTTPS only) gets no credential; anything else is refused
        before a connection is made.
        """
        try:
            request = self._http.build_request("GET", url, headers={**_IDENTITY, **headers})
        except (httpx.InvalidURL, ValueError) as exc:
            raise MalformedAnswerError(f"artifact URL {_printable(url, 200)!r}: {exc}") from exc
        target = request.url
        own = _origin(self._http.base_url)
        if target.userinfo:
            raise ArtifactLocationRefusedError(
                f"artifact URL {_printable(str(target), 200)!r} carries credentials"
            )
        if _origin(target) == own and own[1]:
            request.headers.update(self._auth)
            return request
        allowed = {_origin(httpx.URL(o)) for o in self.config.artifact_origins}
        if target.scheme == "https" and _origin(target) in allowed:
            return request
        raise ArtifactLocationRefusedError(
            f"artifact URL {_printable(str(target), 200)!r} is not on the server's origin "
            f"{own[0]}://{own[1]}:{own[2]}"
            + (f" or {', '.join(self.config.artifact_origins)}" if allowed else "")
            + "; nothing was fetched and no credential sent"
        )

    def absolute_url(self, path: str) -> str:
        """``path`` on the server, as requests resolve it (the server URL's path kept)."""
        return str(self._http.build_request("GET", path).url)

    def open_stream(self, url: str) -> tuple[int, Iterator[bytes]]:
        """GET ``url`` on the server's own origin (or an artifact origin) as a stream.

        Returns the status and the body's chunks, read within the answer deadline
        (E677 when exceeded); the caller bounds the size (python-tuf's fetcher does).
        Any status but 200 returns no chunks.
        """
        request = self.artifact_request(url, {})
        deadline = time.monotonic() + self.config.limits.answer_deadline_s
        shown = _printable(str(request.url), 200)
        with self._transport_errors(f"GET {shown}: no answer in time"):
            response = self._http.send(request, stream=True)
        if response.status_code != 200:
            response.close()
            return response.status_code, iter(())

        def chunks() -> Iterator[bytes]:
            try:
                with self._transport_errors(f"GET {shown}: stalled"):
                    for chunk in _raw_chunks(response, shown):
                        yield chunk
                        if time.monotonic() > deadline:
                            raise AnswerTooSlowError(f"GET {shown}: not complete by its deadline")
            finally:
                response.close()

        return response.status_code, chunks()

    def download_url(
        self,
        url: str,
        dest: Path,
        *,
        size_bytes: int,
        sha256: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> DownloadResult:
        """Fetch ``url`` (bounded by ``size_bytes`` and its deadline) into ``dest``.

        Resumes from ``dest + '.part'``; the file gets its final name only once the
        SHA-256 matches.
        """
        if not re.fullmatch(r"[0-9a-f]{64}", sha256) or size_bytes < 1:
            raise MalformedAnswerError(f"artifact digest or size not valid ({size_bytes} bytes)")
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > size_bytes:
            part.unlink()  # cannot be a prefix of the announced file
            have = 0
        headers = {}
        if 0 < have < size_bytes:
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'}
        request = self.artifact_request(url, headers)
        shown = _printable(str(request.url), 200)
        started = time.monotonic()
        deadline = started + self.config.limits.download_deadline_s(size_bytes - have)
        resumed_from = have
        transferred = 0
        if have < size_bytes:
            try:
                response = self._http.send(request, stream=True)
                try:
                    if response.status_code >= 400:
                        body = _read_capped(response, _ERROR_BODY_BYTES, deadline, shown, cut=True)
                        raise _error_from(response, body)
                    if response.status_code not in (200, 206):
                        raise MalformedAnswerError(
                            f"{shown}: HTTP {response.status_code} (the agent follows no redirect)"
                        )
                    if response.status_code == 200 and have:
                        log.info("server ignored the range for %s; downloading from 0", shown)
                        have = resumed_from = 0
                    elif response.status_code == 206:
                        _check_content_range(response, have, size_bytes)
                    mode = "ab" if have else "wb"
                    with part.open(mode) as handle:
                        # As it arrives (a break keeps it), as sent: never decompressed.
                        for chunk in _raw_chunks(response, shown):
                            if have + len(chunk) > size_bytes:
                                handle.close()
                                part.unlink(missing_ok=True)
                                raise DownloadTooLargeError(
                                    f"{shown}: server sent more than the announced {size_bytes} "
                                    "bytes; the partial file was discarded"
                                )
                            handle.write(chunk)
                            have += len(chunk)
                            transferred += len(chunk)
                            if progress is not None:
                                progress(have, size_bytes)
                            if time.monotonic() > deadline and have < size_bytes:
                                raise AnswerTooSlowError(
                                    f"{shown}: {transferred} bytes in "
                                    f"{time.monotonic() - started:.0f} s, below the minimum "
                                    f"average of {self.config.limits.min_download_rate_bps:g} "
                                    f"bit/s; stopped at {have} of {size_bytes} bytes (kept "
                                    "for resume)"
                                )
                        handle.flush()
                        os.fsync(handle.fileno())
                finally:
                    response.close()
            except httpx.TimeoutException as exc:
                raise FleetTimeoutError(
                    f"download of {shown} stalled at {have} of {size_bytes} bytes; it resumes "
                    "from there"
                ) from exc
            except httpx.TransportError as exc:
                raise FleetUnreachableError(
                    f"download of {shown} broke off at {have} of {size_bytes} bytes ({exc}); "
                    "it resumes from there"
                ) from exc
        elapsed = time.monotonic() - started
        if have != size_bytes:
            raise FleetUnreachableError(
                f"download of {shown} ended at {have} of {size_bytes} bytes; it resumes from there"
            )
        digest = _sha256_file(part)
        if digest != sha256:
            part.unlink()
            raise DownloadDigestMismatchError(
                f"{shown}: SHA-256 {digest}, offer announced {sha256}; the file was discarded"
            )
        os.replace(part, dest)
        return DownloadResult(dest, size_bytes, digest, resumed_from, transferred, elapsed)

    # ---- operator -------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"{API}/whoami")
        return result

    def upload_release(self, data: bytes, filename: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST",
            f"{API}/releases",
            content=data,
            params={"filename": filename},
            headers={"Content-Type": "application/octet-stream"},
        )
        return result

    def get(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>`` (operator reads: campaigns, devices, flags, audit...)."""
        return self._json("GET", f"{API}/{path.lstrip('/')}", params=params or None)

    def get_page(self, path: str, **params: Any) -> tuple[list[Any], str | None]:
        """One page of the list route ``path`` and the cursor of the next (None: the last)."""
        what = f"GET {API}/{path.lstrip('/')}"
        response, body = self._exchange(
            "GET",
            f"{API}/{path.lstrip('/')}",
            max_bytes=self.config.limits.max_operator_answer_bytes,
            params=params or None,
        )
        rows = _a_list(_parse_json(body, what), what)
        cursor = response.headers.get("x-next-cursor")
        return rows, (_printable(cursor, 1024) if cursor else None)

    def get_all(self, path: str, **params: Any) -> list[Any]:
        """Every row of the list route ``path``, page after page (``limit`` rows each)."""
        params = {"limit": 1000, **params}
        rows, cursor = self.get_page(path, **params)
        while cursor is not None:
            page, cursor = self.get_page(path, **params, cursor=cursor)
            rows.extend(page)
        return rows

    def post(self, path: str, body: Any = None) -> Any:
        return self._json("POST", f"{API}/{path.lstrip('/')}", json=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self._json("PUT", f"{API}/{path.lstrip('/')}", json=body)


def _a_list(data: Any, what: str) -> list[Any]:
    """The answer of a list route (E675 when it is not a JSON list)."""
    if not isinstance(data, list):
        raise MalformedAnswerError(f"{what}: expected a JSON list")
    return data


def _check_content_range(response: httpx.Response, start: int, size_bytes: int) -> None:
    value = response.headers.get("content-range", "")
    expected_prefix = f"bytes {start}-"
    if not value.startswith(expected_prefix) or not value.endswith(f"/{size_bytes}"):
        raise FleetServerError(
            f"server answered range {value!r}, expected {expected_prefix}.../{size_bytes}"
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    port = url.port or {"https": 443, "http": 80}.get(url.scheme, 0)
    return (url.scheme, url.host, port)


def _printable(text: str, limit: int) -> str:
    """Server-supplied text for a message or log: no control characters, bounded."""
    text = _CONTROL.sub("?", text)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_capped(
    response: httpx.Response, limit: int, deadline: float, what: str, *, cut: bool = False
) -> bytes:
    """The body, streamed, at most ``limit`` bytes and done by ``deadline`` (monotonic).

    More than ``limit`` bytes: E676, or with ``cut`` the first ``limit`` bytes (error
    bodies: the status already says what happened).
    """
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit and not cut:
        raise AnswerTooLargeError(f"{what}: answer of {int(length)} bytes, limit {limit}")
    chunks: list[bytes] = []
    size = 0
    for chunk in _raw_chunks(response, what):
        size += len(chunk)
        if size > limit:
            if cut:
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            raise AnswerTooLargeError(f"{what}: answer longer than the limit of {limit} bytes")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise AnswerTooSlowError(f"{what}: answer not complete by its deadline ({size} bytes)")
    return b"".join(chunks)


def _raw_chunks(response: httpx.Response, what: str) -> Iterator[bytes]:
    """The body as sent. The agent asks for ``identity``: a compressed body is refused
    unread (decompressing is how a small answer becomes a gigabyte)."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise MalformedAnswerError(
            f"{what}: a {_printable(encoding, 40)!r}-encoded answer; the agent asks for identity"
        )
    if response.is_stream_consumed:  # built in memory (a mock transport), not streamed
        return iter((response.content,))
    return response.iter_raw()


def _parse_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        start = _printable(body[:60].decode("utf-8", "replace"), 60)
        raise MalformedAnswerError(f"{what}: the answer is not JSON (starts {start!r})") from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "answer"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _validate(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MalformedAnswerError(f"{what}: {_printable(_describe(exc), 500)}") from exc


def _check_in_body(body: CheckIn) -> dict[str, Any]:
    data = body.model_dump(mode="json")
    if not data["problems"]:
        del data["problems"]  # a server from before the field would refuse the check-in
    return data


def _decode_check_in(data: Any, what: str) -> CheckInAnswer:
    """The check-in answer; each offer validated on its own, so one bad offer stops no other."""
    if not isinstance(data, dict):
        raise MalformedAnswerError(f"{what}: expected a JSON object, got {type(data).__name__}")
    raw_offers = data.get("offers")
    if not isinstance(raw_offers, list):
        raise MalformedAnswerError(f"{what}: offers: expected a list")
    if len(raw_offers) > 4096:
        raise MalformedAnswerError(f"{what}: {len(raw_offers)} offers, at most 4096")
    intervals = {
        name: _interval(data.get(name)) for name in ("poll_interval_s", "telemetry_interval_s")
    }
    head = _validate(CheckInResponse, {**data, "offers": [], **intervals}, what)
    offers: list[Offer] = []
    refused: list[RefusedOffer] = []
    for index, item in enumerate(raw_offers):
        try:
            offers.append(_validate(Offer, item, f"{what}: offers.{index}"))
        except MalformedAnswerError as exc:
            campaign = item.get("campaign_id") if isinstance(item, dict) else None
            serial = item.get("device_serial") if isinstance(item, dict) else None
            refused.append(
                RefusedOffer(
                    campaign if type(campaign) is int and campaign > 0 else None,
                    _printable(serial, 120) if isinstance(serial, str) and serial else None,
                    exc,
                )
            )
    telemetry = head.telemetry_interval_s
    return CheckInAnswer(
        float(head.poll_interval_s),
        tuple(offers),
        tuple(refused),
        head.gateway,
        None if telemetry is None else float(telemetry),
    )


def _interval(value: Any) -> Any:
    """Any finite number is an interval (the agent clamps it to its documented range);
    anything else is left for the answer's validation to refuse."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and math.isfinite(value):
        return int(min(max(value, 0), 10**9))
    return value


def _transport_error(url: str, exc: httpx.TransportError) -> FleetError:
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return TlsVerificationError(f"{url}: {text}")
    return FleetUnreachableError(f"{url}: {text or type(exc).__name__}")


def _error_from(response: httpx.Response, body: bytes) -> FleetError:
    try:
        error = json.loads(body).get("error", {})
    except (ValueError, AttributeError, RecursionError):
        error = {}
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    message = _printable(str(error.get("message", "")), 1000) if isinstance(error, dict) else ""
    if not re.fullmatch(r"BMSFW-E\d{3}", code):
        detail = _printable(body[:300].decode("utf-8", "replace"), 300)
        return FleetServerError(f"HTTP {response.status_code} from {response.url}: {detail}")
    cls = fleet_error_for_code(code)
    if cls is ReleaseRejectedError:
        package_code = _printable(str(error.get("package_code", "")), 20)
        return ReleaseRejectedError(message, package_code=package_code)
    if cls is None:
        return FleetServerError(f"HTTP {response.status_code}: {code}: {message}")
    return cls(message)
