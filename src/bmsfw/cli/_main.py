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
    from bmsfw.cli._render import SafeLogFormatter

    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler()  # stderr; log lines carry device text too
    handler.setFormatter(SafeLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if verbose < 2:
        # smpclient and bumble log a failed connect or pairing with a traceback; bmsfw
        # reports it as its own code (E313, E391) with diagnosis and remedy. -vv shows them.
        for noisy in ("smpclient", "bumble"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)


def _register_subcommands() -> None:
    # Each family registers itself; imported here so `bmsfw --help` lists them all.
    from bmsfw.cli import _registry

    _registry.register_all(cli)


def _wants_json(args: list[str]) -> bool:
    """``--json`` among the options (before a ``--``): errors then print JSON too."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Every error ends here, as one coded error (docs/troubleshooting.md)
    with its exit code (docs/cli.md); with ``--json`` also as a JSON document on stdout
    unless the command printed its own document already."""
    from bmsfw.cli._errors import BadArgumentValueError, from_click
    from bmsfw.cli._render import json_written, print_error, print_error_json, reset_output_state

    _register_subcommands()
    reset_output_state()
    args = sys.argv[1:] if argv is None else list(argv)
    error: BmsfwError
    try:
        for arg in args:  # no shell passes a NUL; os calls would raise ValueError
            if "\x00" in arg:
                raise BadArgumentValueError(f"the argument {arg!r} contains a NUL character")
        cli.main(args=args, prog_name="bmsfw", standalone_mode=False)
        return
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # `bmsfw` or `bmsfw GROUP` alone: the help text, not an error
        sys.exit(2)
    except click.ClickException as exc:
        error = from_click(exc)
    except BmsfwError as exc:
        error = exc
    except Exception as exc:  # a bug: still a coded error, the traceback with -v
        logging.getLogger("bmsfw.cli").info("internal error", exc_info=True)
        error = BmsfwError(f"internal error {type(exc).__name__}: {exc}")
    code = exit_code_for(error)
    print_error(error)
    if _wants_json(args) and not json_written():
        print_error_json(error, code)
    sys.exit(code)
