"""Collects the subcommand groups. Each module adds one line here."""

from __future__ import annotations

import click


def register_all(root: click.Group) -> None:
    """Add every subcommand family to the root group (idempotent)."""
    from bmsfw.cli._demo import demo_command
    from bmsfw.cli._fleet import fleet_group
    from bmsfw.cli._keys import keys_group
    from bmsfw.cli._package import package_group

    root.add_command(keys_group)
    root.add_command(package_group)
    root.add_command(demo_command)
    root.add_command(fleet_group)
