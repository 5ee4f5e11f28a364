"""``bmsfw fleet tuf-keygen`` and ``bmsfw fleet tuf-root``: the offline TUF root ceremony.

Run on an offline machine with the root key holders (docs/agent.md, "Keys: the root
ceremony and rotation"). ``tuf-root`` writes ``N.root.json`` into ``--out``: version 1,
or with ``--previous`` the next version, signed by the new root keys and by the
``--previous-key`` keys (a threshold of the old root's), which is what an agent needs
to follow the rotation.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from bmsfw.errors import UsageError

__all__ = ["tuf_keygen_command", "tuf_root_command"]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc


@click.command("tuf-keygen")
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
def tuf_keygen_command(key_file: Path) -> None:
    """Write a new Ed25519 TUF key (PEM, unencrypted: keep root keys offline)."""
    from bmsfw.fleet.tuf_repo import generate_key, public_key_of

    if key_file.exists():
        raise UsageError(f"{key_file} exists; a key is never overwritten")
    pem = generate_key()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    click.echo(f"{key_file}: keyid {public_key_of(pem).keyid}")


@click.command("tuf-root")
@click.option(
    "--root-key",
    "root_keys",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="A root key (private PEM) of the new root; repeat for each holder.",
)
@click.option("--threshold", type=click.IntRange(1), required=True, help="Root keys needed.")
@click.option(
    "--online-key",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The server's online key (targets, snapshot, timestamp).",
)
@click.option("--expires-days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option(
    "--previous",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The current root.json: write its successor (a rotation).",
)
@click.option(
    "--previous-key",
    "previous_keys",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="With --previous: a key of the current root (a threshold of them must sign).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory of N.root.json files (the server's --tuf-root-dir).",
)
def tuf_root_command(  # noqa: PLR0917 - one parameter per click option
    root_keys: tuple[Path, ...],
    threshold: int,
    online_key: Path,
    expires_days: int,
    previous: Path | None,
    previous_keys: tuple[Path, ...],
    out: Path,
) -> None:
    """Write root metadata version 1, or the next version of --previous (rotation)."""
    from bmsfw.fleet.tuf_repo import new_root, public_key_of

    if previous_keys and previous is None:
        raise UsageError("--previous-key needs --previous")
    if previous is not None and not previous_keys:
        raise UsageError("a rotation must be signed by the current root's keys (--previous-key)")
    old = _read(previous, "previous root") if previous is not None else None
    data = new_root(
        [_read(path, "root key") for path in root_keys],
        threshold,
        public_key_of(_read(online_key, "online key")),
        datetime.now(UTC) + timedelta(days=expires_days),
        previous=old,
        previous_keys=[_read(path, "previous root key") for path in previous_keys],
    )
    version = json.loads(data)["signed"]["version"]
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{version}.root.json"
    if target.exists():
        raise UsageError(f"{target} exists; a root version is never overwritten")
    target.write_bytes(data)
    click.echo(f"{target}: root version {version}, {len(root_keys)} key(s), threshold {threshold}")
