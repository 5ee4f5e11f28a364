"""Root command group; each subcommand family lives in its own module."""

from __future__ import annotations

import logging
import sys

import click

from bmsfw import __version__
from bmsfw.errors import (
    BmsfwError,
    DeviceError,
    FleetError,
    PackageError,
    PreflightError,
    TransportError,
    UpdateError,
    UsageError,
)

EXIT_CODES: dict[type[BmsfwError], int] = {
    UsageError: 2,
    PackageError: 3,
    DeviceError: 4,
    TransportError: 5,
    PreflightError: 6,
    UpdateError: 7,
    FleetError: 8,
}


def exit_code_for(error: BmsfwError) -> int:
    for family, code in EXIT_CODES.items():
        if isinstance(error, family):
            return code
    return 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmsfw")
@click.option("-v", "--verbose", count=True, help="-v: info log, -vv: debug and frame log.")
def cli(verbose: int) -> None:
    """Safe firmware updates for smart battery management systems."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register_subcommands() -> None:
    # Each family registers itself; imported here so `bmsfw --help` lists them all.
    from bmsfw.cli import _registry

    _registry.register_all(cli)


def main(argv: list[str] | None = None) -> None:
    _register_subcommands()
    try:
        cli.main(args=argv, prog_name="bmsfw", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except BmsfwError as exc:
        from bmsfw.cli._render import print_error

        print_error(exc)
        sys.exit(exit_code_for(exc))
