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

The server is not trusted for authenticity: the agent must still verify the
package signature end to end (``bmsfw.package.verify_release``) before it
touches a BMS. The digest check here only catches corruption and truncation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from bmsfw.errors import FleetError
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

__all__ = ["ClientConfig", "DownloadResult", "FleetClient"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
API = "/api/v1"


@dataclass(frozen=True)
class ClientConfig:
    server_url: str
    token: str
    ca_file: Path | None = None  # None: the system trust store
    timeout_s: float = 30.0
    allow_insecure_http: bool = False


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

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._auth, **kwargs.pop("headers", {})}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise FleetTimeoutError(f"{method} {path}: no answer in time ({exc})") from exc
        except httpx.TransportError as exc:
            raise _transport_error(self.config.server_url, exc) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _model(self, model: type[M], method: str, path: str, body: BaseModel) -> M:
        data = self._json(method, path, json=body.model_dump(mode="json"))
        return model.model_validate(data)

    # ---- agent ----------------------------------------------------------

    def check_in(self, body: CheckIn) -> CheckInResponse:
        return self._model(CheckInResponse, "POST", f"{API}/agent/check-in", body)

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

    def list_device_backups(self, serial: str) -> list[BackupInfo]:
        data = self._json("GET", f"{API}/devices/{quote(serial, safe='')}/backups")
        return [BackupInfo.model_validate(item) for item in data]

    def get_backup(self, backup_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"{API}/backups/{backup_id}")
        return result

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

    def download_url(
        self,
        url: str,
        dest: Path,
        *,
        size_bytes: int,
        sha256: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> DownloadResult:
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > size_bytes:
            part.unlink()  # cannot be a prefix of the announced file
            have = 0
        headers = {}
        if 0 < have < size_bytes:
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'}
        started = time.monotonic()
        resumed_from = have
        transferred = 0
        if have < size_bytes:
            try:
                with self._http.stream("GET", url, headers={**self._auth, **headers}) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error_from(response)
                    if response.status_code == 200 and have:
                        log.info("server ignored the range for %s; downloading from 0", url)
                        have = resumed_from = 0
                    elif response.status_code == 206:
                        _check_content_range(response, have, size_bytes)
                    mode = "ab" if have else "wb"
                    with part.open(mode) as handle:
                        for chunk in response.iter_bytes():  # as it arrives: a break keeps it
                            if have + len(chunk) > size_bytes:
                                handle.close()
                                part.unlink(missing_ok=True)
                                raise DownloadTooLargeError(
                                    f"{url}: server sent more than the announced {size_bytes} "
                                    "bytes; the partial file was discarded"
                                )
                            handle.write(chunk)
                            have += len(chunk)
                            transferred += len(chunk)
                            if progress is not None:
                                progress(have, size_bytes)
                        handle.flush()
                        os.fsync(handle.fileno())
            except httpx.TimeoutException as exc:
                raise FleetTimeoutError(
                    f"download of {url} stalled at {have} of {size_bytes} bytes; it resumes "
                    "from there"
                ) from exc
            except httpx.TransportError as exc:
                raise FleetUnreachableError(
                    f"download of {url} broke off at {have} of {size_bytes} bytes ({exc}); "
                    "it resumes from there"
                ) from exc
        elapsed = time.monotonic() - started
        if have != size_bytes:
            raise FleetUnreachableError(
                f"download of {url} ended at {have} of {size_bytes} bytes; it resumes from there"
            )
        digest = _sha256_file(part)
        if digest != sha256:
            part.unlink()
            raise DownloadDigestMismatchError(
                f"{url}: SHA-256 {digest}, offer announced {sha256}; the file was discarded"
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

    def post(self, path: str, body: Any = None) -> Any:
        return self._json("POST", f"{API}/{path.lstrip('/')}", json=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self._json("PUT", f"{API}/{path.lstrip('/')}", json=body)


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


def _transport_error(url: str, exc: httpx.TransportError) -> FleetError:
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return TlsVerificationError(f"{url}: {text}")
    return FleetUnreachableError(f"{url}: {text or type(exc).__name__}")


def _error_from(response: httpx.Response) -> FleetError:
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    if not code:
        detail = response.text[:300]
        return FleetServerError(f"HTTP {response.status_code} from {response.url}: {detail}")
    cls = fleet_error_for_code(code)
    if cls is ReleaseRejectedError:
        return ReleaseRejectedError(message, package_code=str(error.get("package_code", "")))
    if cls is None:
        return FleetServerError(f"HTTP {response.status_code}: {code}: {message}")
    return cls(message)
