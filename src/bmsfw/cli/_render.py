"""Shared rendering: errors, tables and JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from bmsfw.errors import BmsfwError

err_console = Console(stderr=True)
console = Console()


def print_error(error: BmsfwError) -> None:
    """Print an error with its code, diagnosis and remedy to stderr."""
    err_console.print(f"[bold red]error[/] {error.code}: {error.message}", highlight=False)
    err_console.print(f"  diagnosis: {error.diagnosis}", highlight=False)
    err_console.print(f"  remedy:    {error.remedy}", highlight=False)


def print_json(data: Any) -> None:
    """Write one JSON document to stdout (for ``--json``)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
