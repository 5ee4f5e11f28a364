"""The agent's TUF client: signed freshness and signed targets before any offer is trusted.

The fleet server publishes TUF repository metadata for the releases it serves
(:mod:`bmsfw.fleet.tuf_repo`, under ``/api/v1/tuf/``). Before the agent trusts an
offer it refreshes that metadata with python-tuf's ``tuf.ngclient.Updater`` (root
rotation, timestamp, snapshot, targets: signatures against the thresholds the root
names, expiry, version rollback, consistency, size limits), then checks that the
offer names a signed target with the same length, SHA-256, product, version,
security counter and release id (:meth:`TufTrust.check_offer`).

python-tuf is the trust core here; this module is only I/O around it: a fetcher
that goes through the agent's bounded HTTPS client (the server's own origin and
token, answer deadline), and a mapping of python-tuf's exceptions to the agent's
codes, so each attack fails with its own:

=========================  ==============================  ==========
what the server did        python-tuf says                 code
=========================  ==============================  ==========
freeze, stale replay       ExpiredMetadataError            BMSFW-E680
metadata rollback/replay   BadVersionNumberError ("New")   BMSFW-E681
arbitrary / forged         UnsignedMetadataError           BMSFW-E682
mix-and-match              BadVersionNumberError           BMSFW-E683
                           ("Expected"), LengthOrHash...
endless data               DownloadLengthMismatchError     BMSFW-E676
slow retrieval             our answer deadline             BMSFW-E677
offer not signed           (our check of the target)       BMSFW-E684
anything else              RepositoryError, DownloadError  BMSFW-E685
=========================  ==============================  ==========

The vendor's package signature remains the end-to-end authority on the image;
TUF decides what the server may offer and how fresh its view is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from bmsfw.errors import FleetError
from bmsfw.fleet.agent_errors import (
    AnswerTooLargeError,
    TufError,
    TufExpiredError,
    TufInconsistentError,
    TufOfferNotSignedError,
    TufRollbackError,
    TufSignatureError,
)
from bmsfw.fleet.protocol import Offer

if TYPE_CHECKING:
    from bmsfw.fleet.client import FleetClient

__all__ = ["TUF_PATH", "TufTrust", "target_path"]

log = logging.getLogger(__name__)

TUF_PATH = "/api/v1/tuf/"  # metadata base on the server (root, timestamp, snapshot, targets)


def target_path(sha256: str) -> str:
    """The TUF target name of a release artifact: content-addressed by its SHA-256."""
    return f"releases/{sha256}.bmsfw"


class _ClientFetcher(FetcherInterface):
    """python-tuf's downloads through the agent's client: own origin, token, deadline."""

    def __init__(self, client: FleetClient) -> None:
        self._client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        status, chunks = self._client.open_stream(url)
        if status != 200:
            # python-tuf ends a root rotation walk on 404/403; anything else is an error.
            raise tuf_errors.DownloadHTTPError(f"HTTP {status} for {url[:200]}", status)
        return chunks


class TufTrust:
    """One gateway's view of the server's TUF repository (metadata kept in ``directory``)."""

    def __init__(self, root: bytes, directory: Path, client: FleetClient) -> None:
        self._root = root
        self._dir = directory
        self._fetcher = _ClientFetcher(client)
        self._base = client.absolute_url(TUF_PATH)
        directory.mkdir(parents=True, exist_ok=True)
        self._updater: Updater | None = None
        # Fail now on a root that is not TUF root metadata (configuration error).
        self._new_updater()

    def _new_updater(self) -> Updater:
        try:
            return Updater(
                metadata_dir=str(self._dir),
                metadata_base_url=self._base,
                fetcher=self._fetcher,
                config=UpdaterConfig(prefix_targets_with_hash=False),
                bootstrap=self._root,
            )
        except (tuf_errors.RepositoryError, ValueError) as exc:
            raise TufError(f"the trusted TUF root is not usable: {exc}") from exc

    def refresh(self) -> None:
        """Fetch and verify root (rotations), timestamp, snapshot and targets; or raise."""
        updater = self._new_updater()  # python-tuf: one refresh per Updater
        try:
            updater.refresh()
        except FleetError:
            raise
        except Exception as exc:
            raise _agent_error(exc) from exc
        self._updater = updater

    def check_offer(self, offer: Offer) -> TargetFile:
        """The signed target ``offer`` names; E684 unless every field agrees with it."""
        if self._updater is None:
            raise TufError("no verified TUF metadata yet")
        try:
            target = self._updater.get_targetinfo(target_path(offer.sha256))
        except FleetError:
            raise
        except Exception as exc:
            raise _agent_error(exc) from exc
        if target is None:
            raise TufOfferNotSignedError(
                f"release {offer.release_id} ({offer.version}, sha256 {offer.sha256[:16]}...) "
                "is not in the server's signed targets"
            )
        custom = target.custom if isinstance(target.custom, dict) else {}
        signed = {
            "size_bytes": target.length,
            "sha256": target.hashes.get("sha256"),
            "product": custom.get("product"),
            "version": custom.get("version"),
            "security_counter": custom.get("security_counter"),
            "release_id": custom.get("release_id"),
        }
        offered = {
            "size_bytes": offer.size_bytes,
            "sha256": offer.sha256,
            "product": offer.product,
            "version": offer.version,
            "security_counter": offer.security_counter,
            "release_id": offer.release_id,
        }
        differs = sorted(k for k in signed if signed[k] != offered[k])
        if differs:
            raise TufOfferNotSignedError(
                f"release {offer.release_id}: the offer's {', '.join(differs)} differ from the "
                f"signed target ({', '.join(f'{k}={signed[k]!r}' for k in differs)})"
            )
        return target


def _agent_error(exc: Exception) -> FleetError:
    """python-tuf's verdict as the agent's error, by cause (see the module's table)."""
    text = str(exc)[:300] or type(exc).__name__
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return TufExpiredError(f"signed metadata expired: {text}")
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        # "New timestamp version 3 must be >= 5", "New snapshot version must be >= ...",
        # and a snapshot listing targets.json at a lower version: a rollback. "Expected
        # snapshot version 4, got 3": files that do not belong together.
        if text.startswith("New ") or ".json version" in text:
            return TufRollbackError(f"metadata older than what the agent trusts: {text}")
        return TufInconsistentError(f"metadata versions do not match: {text}")
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        return TufInconsistentError(f"metadata length or hash not as listed: {text}")
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return TufSignatureError(f"metadata not signed by the root's keys: {text}")
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return AnswerTooLargeError(f"TUF metadata larger than its limit: {text}")
    if isinstance(exc, tuf_errors.DownloadHTTPError):
        return TufError(f"TUF metadata not served (HTTP {exc.status_code}): {text}")
    return TufError(f"TUF metadata not usable: {type(exc).__name__}: {text}")
