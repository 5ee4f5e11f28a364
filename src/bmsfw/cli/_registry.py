"""Collects the subcommand groups. Each module adds one line here."""

from __future__ import annotations

import click


def register_all(root: click.Group) -> None:
    """Add every subcommand family to the root group (idempotent)."""
    del root  # families are added below as they are built
