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
    for command in _field_commands():  # scan, info, preflight, backup, update, ... (issue 5)
        root.add_command(command)
    root.add_command(fleet_group)
    root.add_command(__import__("bmsfw.cli._sim", fromlist=["sim_group"]).sim_group)
    __import__("bmsfw.cli._sim_rs485", fromlist=["register"]).register(root)
    _sim_group(root).add_command(
        __import__("bmsfw.cli._sim_provision").cli._sim_provision.provision_command
    )
    __import__("bmsfw.cli._agent", fromlist=["register"]).register(root)  # agent, sim fleet


def _field_commands() -> tuple[click.Command, ...]:
    from bmsfw.cli._field import FIELD_COMMANDS

    return FIELD_COMMANDS


def _sim_group(root: click.Group) -> click.Group:
    group = root.commands["sim"]
    assert isinstance(group, click.Group)
    return group
