"""Usage errors of the command line (BMSFW-E002..E004, exit 2).

click finds a missing option or a bad value before our code runs; :func:`from_click`
turns its exception into one of ours, so that every error the CLI reports has a
code, a diagnosis and a remedy, and prints as JSON with ``--json``.
"""

from __future__ import annotations

import click

from bmsfw.errors import UsageError

__all__ = [
    "BadArgumentValueError",
    "MissingArgumentError",
    "TesterCredentialsRequiredError",
    "from_click",
]


class MissingArgumentError(UsageError):
    """A required option or argument was not given."""

    code = "BMSFW-E002"
    diagnosis = "A required option or argument is missing from the command line."
    remedy = (
        "Add the option or argument the message names (its meaning is quoted there); "
        "`bmsfw COMMAND --help` lists them all."
    )


class BadArgumentValueError(UsageError):
    """An option or argument has a value of the wrong kind, or names no existing file."""

    code = "BMSFW-E003"
    diagnosis = "An option or argument has a value the command cannot use."
    remedy = (
        "Correct the value the message names (a number, one of the listed choices, or the "
        "path of an existing file); `bmsfw COMMAND --help` shows what each option takes."
    )


class TesterCredentialsRequiredError(UsageError):
    """A command that writes to a BMS was given no tester certificate and key."""

    code = "BMSFW-E004"
    diagnosis = (
        "The BMS only accepts firmware, a rollback or a configuration write from an "
        "authenticated tester; no tester certificate and key were given."
    )
    remedy = (
        "Pass --tester-cert TESTER.crt --tester-key TESTER.key; the holder of the vendor "
        "PKI issues them with `bmsfw keys issue-tester` (see docs/packages.md)."
    )


def _explain(param: click.Parameter | None) -> str:
    """What a missing option is for, from its help text (and its environment variable)."""
    if not isinstance(param, click.Option) or not param.help:
        return ""
    text = param.help.strip().rstrip(".")
    if param.envvar and "env " not in param.help:
        text += f" [env {param.envvar}]"
    return f": {text}"


def from_click(exc: click.ClickException) -> UsageError:
    """Our usage error for click's (the message keeps click's wording and names the
    command's ``--help``)."""
    ctx = getattr(exc, "ctx", None)
    where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
    if isinstance(exc, click.MissingParameter):
        message = exc.format_message().rstrip(".")
        return MissingArgumentError(f"{message}{_explain(exc.param)}{where}")
    if isinstance(exc, click.BadParameter):
        return BadArgumentValueError(f"{exc.format_message().rstrip('.')}{where}")
    return UsageError(f"{exc.format_message().rstrip('.')}{where}")
