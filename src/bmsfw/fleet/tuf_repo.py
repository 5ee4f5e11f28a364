"""TUF repository metadata for the releases the fleet server serves (python-tuf's API).

The agents trust no offer before they verified this metadata with ``tuf.ngclient``
(:mod:`bmsfw.fleet.agent_tuf`). The roles:

* **root** — names the keys of every role and their thresholds. Made *offline* by
  :func:`new_root` with the root keys (threshold of e.g. 2 of 3, kept off the server)
  and handed to the server as files ``1.root.json``, ``2.root.json``, ...; a rotation
  is a new version signed by a threshold of the old *and* the new root keys.
* **targets** — every release the server may offer over the air (safety-critical ones
  are never listed): path ``releases/<sha256>.bmsfw``, length, SHA-256, and custom
  fields ``product``, ``version``, ``security_counter``, ``release_id``, ``hardware``
  (model, revisions), ``min_bootloader``.
* **snapshot** — the version of targets (against mix-and-match).
* **timestamp** — the version of snapshot, **short-lived** (1 h by default), re-signed
  every ``timestamp_period_s`` (10 min): an agent whose timestamp expires knows the
  server is frozen or replaying.

targets, snapshot and timestamp are signed *online* with one key the server holds
(the server adds releases as operators upload them). The vendor's package signature
remains the end-to-end authority on the image; what TUF adds is signed freshness,
rollback protection and consistency of what the server offers (docs/agent.md,
docs/threat-model.md).

**Stateless and deterministic**, so any number of server processes serve the same
bytes with no shared state but the database: a version number encodes what the
file holds, ``(period << 20) | C`` where ``C`` is the highest release id in the
database (releases are never deleted, so "the OTA releases with id <= C" is a fixed
set) and ``period`` is ``floor(time / period_s)`` of the role; Ed25519 signatures are
deterministic. The root says ``consistent_snapshot``, so an agent asks for
``<version>.snapshot.json`` and ``<version>.targets.json`` and gets exactly the
files the timestamp it holds names, whichever process answers. The processes'
clocks must agree (NTP) within a small part of a period.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from bmsfw.fleet.errors import FleetConfigError
from bmsfw.fleet.releases import ReleaseFacts

__all__ = [
    "TufRelease",
    "TufRepository",
    "TufSettings",
    "generate_key",
    "new_root",
    "public_key_of",
    "tuf_releases",
]

_C_BITS = 20  # release ids below 2**20 (a million releases)
_C_MASK = (1 << _C_BITS) - 1
_ONLINE_ROLES = ("targets", "snapshot", "timestamp")
_FILE = re.compile(r"(?:(\d{1,19})\.)?(root|timestamp|snapshot|targets)\.json")
_SERIALIZER = JSONSerializer(compact=True)


def generate_key() -> bytes:
    """A new Ed25519 private key, PEM (PKCS#8, unencrypted: keep root keys offline)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _signer(private_pem: bytes) -> CryptoSigner:
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise FleetConfigError("TUF keys are Ed25519 (see bmsfw.fleet.tuf_repo.generate_key)")
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))


def public_key_of(private_pem: bytes) -> SSlibKey:
    return _signer(private_pem).public_key


def new_root(
    root_keys: Sequence[bytes],
    threshold: int,
    online_key: SSlibKey,
    expires: datetime,
    *,
    previous: bytes | None = None,
    previous_keys: Sequence[bytes] = (),
) -> bytes:
    """Root metadata (the offline ceremony): ``root_keys`` (private PEM, at least
    ``threshold``) become the root role; ``online_key`` signs targets, snapshot and
    timestamp. With ``previous`` (the current root.json) this is a rotation: version
    + 1, signed by the new keys and by ``previous_keys`` (a threshold of the old ones).
    """
    if not 1 <= threshold <= len(root_keys):
        raise FleetConfigError(f"threshold {threshold} with {len(root_keys)} root key(s)")
    signers = [_signer(pem) for pem in root_keys]
    version = 1
    if previous is not None:
        version = Metadata[Root].from_bytes(previous).signed.version + 1
    root = Root(version=version, expires=expires, consistent_snapshot=True)
    root.roles["root"] = Role([], threshold)
    for signer in signers:
        root.add_key(signer.public_key, "root")
    for role in _ONLINE_ROLES:
        root.add_key(online_key, role)
    metadata = Metadata(root)
    for signer in [*signers, *(_signer(pem) for pem in previous_keys)]:
        metadata.sign(signer, append=True)
    # What an agent checks: a threshold of the new keys, and for a rotation of the old.
    trusted = [root] if previous is None else [Metadata[Root].from_bytes(previous).signed, root]
    for delegator in trusted:
        try:
            delegator.verify_delegate("root", metadata.signed_bytes, metadata.signatures)
        except UnsignedMetadataError as exc:
            which = "the current root's" if delegator is not root else "the new root's"
            raise FleetConfigError(f"not signed by a threshold of {which} keys: {exc}") from exc
    return metadata.to_bytes(_SERIALIZER)


@dataclass(frozen=True)
class TufSettings:
    """The server's part: the root history (made offline) and the online key."""

    roots: tuple[bytes, ...]  # root.json versions 1..N, in order
    online_key_pem: bytes
    timestamp_period_s: int = 600  # a new timestamp this often
    timestamp_lifetime_s: int = 3600  # each one valid this long from its period's start
    targets_period_s: int = 86_400  # targets and snapshot re-signed this often
    targets_lifetime_s: int = 7 * 86_400

    @classmethod
    def load(cls, root_dir: Path, online_key: Path) -> TufSettings:
        """``root_dir`` holds ``1.root.json``, ``2.root.json``, ... (the ceremony's output)."""
        try:
            names = sorted(
                (p for p in root_dir.glob("*.root.json") if p.name.split(".")[0].isdigit()),
                key=lambda p: int(p.name.split(".")[0]),
            )
            roots = tuple(p.read_bytes() for p in names)
            key = online_key.read_bytes()
        except OSError as exc:
            raise FleetConfigError(f"TUF files: {exc}") from exc
        return cls(roots, key)


@dataclass(frozen=True)
class TufRelease:
    """What the targets metadata says about one release."""

    id: int
    facts: ReleaseFacts  # as the server verified it at upload (sha256 and size included)

    @property
    def ota_allowed(self) -> bool:
        return self.facts.safety_class == "standard"


class TufRepository:
    """Serves ``N.root.json``, ``timestamp.json``, ``V.snapshot.json``, ``V.targets.json``."""

    def __init__(self, settings: TufSettings, *, clock: Callable[[], float] = time.time) -> None:
        if not settings.roots:
            raise FleetConfigError("TUF: no root.json given")
        if settings.targets_period_s % settings.timestamp_period_s:
            raise FleetConfigError("TUF: targets_period_s must be a multiple of the timestamp's")
        if settings.timestamp_lifetime_s <= settings.timestamp_period_s:
            raise FleetConfigError("TUF: a timestamp must outlive its period")
        self.settings = settings
        self._clock = clock
        self._signer = _signer(settings.online_key_pem)
        try:
            latest = Metadata[Root].from_bytes(settings.roots[-1]).signed
        except Exception as exc:
            raise FleetConfigError(f"TUF: the last root.json is not root metadata: {exc}") from exc
        for role in _ONLINE_ROLES:
            if self._signer.public_key.keyid not in latest.roles[role].keyids:
                raise FleetConfigError(f"TUF: the online key is not the {role} key of the root")
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    # ---- files ---------------------------------------------------------------

    def file(self, name: str, releases: Callable[[], Sequence[TufRelease]]) -> bytes | None:
        """The metadata file ``name``, or None (404). ``releases`` reads the database."""
        match = _FILE.fullmatch(name)
        if match is None:
            return None
        number, role = match.group(1), match.group(2)
        if role == "root":
            index = int(number or len(self.settings.roots)) - 1
            return self.settings.roots[index] if 0 <= index < len(self.settings.roots) else None
        if role == "timestamp":
            return None if number else self._timestamp(releases())
        if number is None:
            return None  # consistent snapshots: snapshot and targets are asked by version
        version = int(number)
        period, top = version >> _C_BITS, version & _C_MASK
        known = releases()
        if period > self._period(self.settings.targets_period_s) or top > _top(known):
            return None  # not made yet
        if role == "snapshot":
            return self._cached("snapshot", version, lambda: self._snapshot(version))
        return self._cached("targets", version, lambda: self._targets(version, known))

    # ---- the roles -------------------------------------------------------------

    def _period(self, period_s: int) -> int:
        return int(self._clock() // period_s)

    def _expires(self, period: int, period_s: int, lifetime_s: int) -> datetime:
        return datetime.fromtimestamp(period * period_s + lifetime_s, UTC)

    def _timestamp(self, releases: Sequence[TufRelease]) -> bytes:
        s = self.settings
        top = _top(releases)
        period = self._period(s.timestamp_period_s)
        version = (period << _C_BITS) | top
        targets_period = period * s.timestamp_period_s // s.targets_period_s
        snapshot_version = (targets_period << _C_BITS) | top
        return self._cached(
            "timestamp",
            version,
            lambda: self._sign(
                Timestamp(
                    version=version,
                    expires=self._expires(period, s.timestamp_period_s, s.timestamp_lifetime_s),
                    snapshot_meta=MetaFile(version=snapshot_version),
                )
            ),
        )

    def _snapshot(self, version: int) -> bytes:
        s = self.settings
        expires = self._expires(version >> _C_BITS, s.targets_period_s, s.targets_lifetime_s)
        return self._sign(
            Snapshot(version=version, expires=expires, meta={"targets.json": MetaFile(version)})
        )

    def _targets(self, version: int, releases: Sequence[TufRelease]) -> bytes:
        s = self.settings
        top = version & _C_MASK
        targets = Targets(
            version=version,
            expires=self._expires(version >> _C_BITS, s.targets_period_s, s.targets_lifetime_s),
        )
        for release in releases:
            if release.ota_allowed and release.id <= top:
                facts = release.facts
                path = f"releases/{facts.sha256}.bmsfw"
                targets.targets[path] = TargetFile(
                    facts.size_bytes,
                    {"sha256": facts.sha256},
                    path,
                    {
                        "custom": {
                            "release_id": release.id,
                            "product": facts.product,
                            "version": facts.version,
                            "security_counter": facts.security_counter,
                            "hardware": {
                                "model": facts.hw_model,
                                "revisions": list(facts.hw_revisions),
                            },
                            "min_bootloader": facts.min_bootloader,
                        }
                    },
                )
        return self._sign(targets)

    def _sign(self, signed: Timestamp | Snapshot | Targets) -> bytes:
        metadata: Metadata[Any] = Metadata(signed)
        metadata.sign(self._signer)
        return metadata.to_bytes(_SERIALIZER)

    def _cached(self, role: str, version: int, make: Callable[[], bytes]) -> bytes:
        key = (role, version)
        data = self._cache.get(key)
        if data is None:
            data = self._cache[key] = make()
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return data


def tuf_releases(records: Sequence[Mapping[str, Any]]) -> list[TufRelease]:
    """The releases as the targets metadata needs them, from the server's release records."""
    return [
        TufRelease(
            int(r["id"]),
            ReleaseFacts(
                product=str(r["product"]),
                version=str(r["version"]),
                security_counter=int(r["security_counter"]),
                hw_model=str(r["hw_model"]),
                hw_revisions=tuple(str(v) for v in r["hw_revisions"]),
                min_bootloader=str(r["min_bootloader"]),
                safety_class=str(r["safety_class"]),
                components=tuple(r["components"]),
                release_notes=str(r["release_notes"]),
                sha256=str(r["sha256"]),
                size_bytes=int(r["size_bytes"]),
            ),
        )
        for r in records
    ]


def _top(releases: Sequence[TufRelease]) -> int:
    top = max((r.id for r in releases), default=0)
    if top > _C_MASK:
        raise FleetConfigError(f"TUF: release id {top} above {_C_MASK}")
    return top
