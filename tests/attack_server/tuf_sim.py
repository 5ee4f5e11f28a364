"""A TUF repository for the hostile server, made with python-tuf's Metadata API directly
(not with bmsfw's server module), so the agent is shown to accept standard TUF metadata
and each attack can be built by hand: expired, older, forged, mixed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from .hostile import HostileServer


@dataclass
class Published:
    """The bytes of one repository state, by file name (as the agent asks for them)."""

    files: dict[str, bytes] = field(default_factory=dict)
    version: int = 0


class TufSim:
    def __init__(self) -> None:
        self.root_key = CryptoSigner.generate_ed25519()
        self.online_key = CryptoSigner.generate_ed25519()
        root = Root(expires=datetime.now(UTC) + timedelta(days=365), consistent_snapshot=True)
        root.add_key(self.root_key.public_key, "root")
        for role in ("targets", "snapshot", "timestamp"):
            root.add_key(self.online_key.public_key, role)
        metadata = Metadata(root)
        metadata.sign(self.root_key)
        self.root = metadata.to_bytes()

    def state(
        self,
        version: int,
        releases: dict[str, tuple[bytes, dict[str, Any]]],
        *,
        expires_in: timedelta = timedelta(hours=1),
        signer: CryptoSigner | None = None,
    ) -> Published:
        """Repository state ``version``: ``releases`` maps a target path to (data, custom)."""
        expires = datetime.now(UTC) + expires_in
        signer = signer or self.online_key
        targets = Targets(version=version, expires=expires)
        for path, (data, custom) in releases.items():
            targets.targets[path] = TargetFile(
                len(data), {"sha256": hashlib.sha256(data).hexdigest()}, path, {"custom": custom}
            )
        snapshot = Snapshot(
            version=version, expires=expires, meta={"targets.json": MetaFile(version)}
        )
        timestamp = Timestamp(version=version, expires=expires, snapshot_meta=MetaFile(version))
        published = Published(version=version)
        published.files["1.root.json"] = self.root
        for name, signed in (
            (f"{version}.targets.json", targets),
            (f"{version}.snapshot.json", snapshot),
            ("timestamp.json", timestamp),
        ):
            metadata: Metadata[Any] = Metadata(signed)
            metadata.sign(signer)
            published.files[name] = metadata.to_bytes()
        return published

    @staticmethod
    def serve(server: HostileServer, *states: Published) -> None:
        """The files of ``states`` (later ones win for the same name)."""
        server.tuf_files = {}
        for state in states:
            server.tuf_files.update(state.files)
