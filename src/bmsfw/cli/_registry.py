"""Puts the command families together: every command and where it hangs."""

from __future__ import annotations

import click


def register_all(root: click.Group) -> None:
    """Add every subcommand family to the root group (idempotent)."""
    from bmsfw.cli._agent import agent_command, sim_fleet_command
    from bmsfw.cli._demo import demo_command
    from bmsfw.cli._evidence import evidence_group
    from bmsfw.cli._field import FIELD_COMMANDS
    from bmsfw.cli._fleet import fleet_group
    from bmsfw.cli._keys import keys_group
    from bmsfw.cli._package import package_group
    from bmsfw.cli._sim import sim_group
    from bmsfw.cli._sim_provision import provision_command
    from bmsfw.cli._sim_rs485 import sim_rs485_command

    # Firmware engineer: keys, packages, simulators.
    root.add_command(keys_group)
    root.add_command(package_group)
    for command in (provision_command, sim_rs485_command, sim_fleet_command):
        sim_group.add_command(command)  # `sim can` and `sim set` live in _sim.py
    root.add_command(sim_group)
    # Service technician: scan, info, preflight, backup, restore, diff, update, rollback, ...
    for command in FIELD_COMMANDS:
        root.add_command(command)
    root.add_command(evidence_group)
    # Fleet operator: server and gateway agent.
    root.add_command(fleet_group)
    root.add_command(agent_command)
    root.add_command(demo_command)
