"""What a tester puts on the wire for a component: its stored bytes or its decoded image.

A release package holds each component as *stored* bytes (compressed, a delta
patch, or ciphertext; ``Component.encoding`` / ``is_delta`` / ``encryption``).
A session that decodes on the device (``accepts_stored``; the UDS session does,
see docs/uds.md "Encoded transfers") can be given those stored bytes directly:
fewer bytes on the wire, and the only way for delta and encrypted components,
which the host cannot turn into the flash image.
"""

from __future__ import annotations

import hashlib
import io
import zipfile

from bmsfw.package import Manifest
from bmsfw.package.errors import HashMismatchError, MalformedPackageError

__all__ = ["stored_component"]


def stored_component(package: bytes, manifest: Manifest, name: str = "app") -> bytes:
    """The stored bytes of component ``name``, checked against ``manifest`` (size, SHA-256).

    Pass the manifest of a *verified* release (``verify_release(...).manifest``):
    then these bytes are exactly what the vendor signed.
    """
    component = manifest.component(name)
    try:
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            info = archive.getinfo(component.member)
            if info.file_size != component.stored_size:
                raise HashMismatchError(
                    f"component {name!r}: {info.file_size} stored bytes, the manifest says "
                    f"{component.stored_size}"
                )
            with archive.open(info) as member:
                stored = member.read(component.stored_size + 1)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise MalformedPackageError(
            f"component {name!r} unreadable in the package: {exc}"
        ) from None
    if (
        len(stored) != component.stored_size
        or hashlib.sha256(stored).digest() != component.stored_sha256
    ):
        raise HashMismatchError(f"component {name!r}: stored bytes differ from the manifest")
    return stored
