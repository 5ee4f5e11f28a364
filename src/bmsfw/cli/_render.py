"""Everything the CLI shows goes through here: one rendering rule for untrusted text.

Text from a package (zip entry names, release notes), a BMS (serial, model,
versions), a fleet server, an audit log or the command line is shown exactly
as it is and never acts on the terminal:

* **No markup.** The two consoles (:data:`console` for stdout, :data:`err_console`
  for stderr) never interpret rich markup or emoji codes in any string they are
  given, so ``[/]`` cannot crash a command and ``[link=...]`` or ``[bold]`` print as
  typed. Our own colours are given as styles (:func:`styled`, :func:`line`), never
  as markup inside a string.
* **No control characters.** Every string the consoles turn into text, and every
  segment they write, is passed through :func:`safe_text`: C0 and C1 controls (ESC,
  CSI, OSC, BEL, CR, backspace, DEL, ``\\x9b``...), Unicode bidi overrides, line
  separators and lone surrogates become visible escapes (``\\x1b``, ``\\u202e``), so
  a device cannot clear the screen, set the window title or overwrite a line.
  Newlines and tabs in our own multi-line text survive; :func:`one_line` (and
  :func:`clean` for whole records) also escapes them in a value put into such a
  text, and every table cell (:class:`Table`) is one line, so a serial cannot forge
  a line of a report, an error or a table.
* **JSON** (``--json``) is written with ``ensure_ascii``: every control character
  and non-ASCII character is a ``\\uXXXX`` escape, so stdout stays one valid document.
* **Log lines** (``-v``) go through :class:`SafeLogFormatter`.
* **Errors** are printed in one place (:func:`print_error`, :func:`print_error_json`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from rich import table as rich_table
from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from bmsfw.errors import BmsfwError

__all__ = [
    "SafeConsole",
    "SafeLogFormatter",
    "Table",
    "clean",
    "console",
    "err_console",
    "json_written",
    "line",
    "one_line",
    "paragraph",
    "print_error",
    "print_error_json",
    "print_json",
    "reset_output_state",
    "safe_text",
    "styled",
]

# Characters a terminal may act on, or that hide what a text says: C0 controls
# (except tab and newline, handled by the caller's mode), DEL, C1 controls
# (0x80-0x9f: 0x9b is a one-byte CSI on some terminals), soft hyphen, Arabic letter
# mark, zero-width and bidi marks/overrides/isolates, line and paragraph separators,
# word joiner and invisible operators, BOM, interlinear annotations, and lone
# surrogates (undecodable bytes of a file name; writing them would raise).
_HIDDEN = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff"
)
_UNSAFE_MULTILINE = re.compile(f"[{_HIDDEN}]")
_UNSAFE_ONE_LINE = re.compile(f"[{_HIDDEN}\t\n]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x09:
        return "\\t"
    if code == 0x0A:
        return "\\n"
    if code == 0x0D:
        return "\\r"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object, *, multiline: bool = True) -> str:
    """``value`` as text that cannot act on a terminal (see the module docstring).

    Controls become visible escapes (ESC -> ``\\x1b``); a backslash itself is left
    alone (text shown to a person, not parsed back). With ``multiline`` newlines
    and tabs are kept, otherwise they are escaped too.
    """
    text = value if isinstance(value, str) else str(value)
    pattern = _UNSAFE_MULTILINE if multiline else _UNSAFE_ONE_LINE
    return pattern.sub(_escape, text)


def one_line(value: object) -> str:
    """A value shown inside our own text: controls, newlines and tabs escaped."""
    return safe_text(value, multiline=False)


def clean(data: Any) -> Any:
    """A copy of a record (dicts, lists, tuples, dataclasses) with every string
    :func:`one_line`-safe: for values that go into a text template (a report, a table).
    Other values (numbers, bools, None, exceptions) are returned as they are."""
    if isinstance(data, str):
        return one_line(data)
    if isinstance(data, Mapping):
        return {clean(key): clean(value) for key, value in data.items()}
    if isinstance(data, list):
        return [clean(item) for item in data]
    if isinstance(data, tuple):
        items = [clean(item) for item in data]
        return type(data)(*items) if hasattr(data, "_fields") else tuple(items)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {f.name: clean(getattr(data, f.name)) for f in dataclasses.fields(data) if f.init}
        return dataclasses.replace(data, **changes)
    return data


def styled(text: object, style: str | Style) -> Text:
    """Our own colour on a piece of text (the text is not markup and is made safe)."""
    return Text(safe_text(text), style=style)


def paragraph(text: object) -> Text:
    """A multi-line value that keeps its newlines (release notes) in a :class:`Table`
    cell or a print; every other control is escaped."""
    return Text(safe_text(text))


def line(*parts: str | Text | tuple[object, str | Style]) -> Text:
    """One line from plain pieces, :func:`styled` pieces or ``(text, style)`` pairs."""
    out = Text()
    for part in parts:
        if isinstance(part, Text):
            out.append_text(part)
        elif isinstance(part, tuple):
            out.append(safe_text(part[0]), style=part[1])
        else:
            out.append(safe_text(part))
    return out


class Table(rich_table.Table):
    """A rich table whose string cells are values: each shown on one line (newlines and
    tabs escaped too), so a device string cannot add a row of its own."""

    def add_row(self, *renderables: RenderableType | None, **kwargs: Any) -> None:
        cells = [one_line(cell) if isinstance(cell, str) else cell for cell in renderables]
        super().add_row(*cells, **kwargs)


class SafeConsole(Console):
    """A rich console that takes every string literally and writes no control characters.

    Markup, emoji codes and the repr highlighter are off whatever a caller passes;
    strings are made safe before layout (so widths are right) and every written
    segment once more (for text built elsewhere, e.g. a progress column). rich's own
    control segments (cursor moves of a live progress display) are left alone.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs.update(markup=False, emoji=False, highlight=False)
        return super().render_str(safe_text(text), **kwargs)

    def render(
        self, renderable: RenderableType, options: ConsoleOptions | None = None
    ) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control is None and _UNSAFE_MULTILINE.search(segment.text):
                yield Segment(safe_text(segment.text), segment.style)
            else:
                yield segment


class SafeLogFormatter(logging.Formatter):
    """Log lines (``-v``) under the same rule: a device string logged as it arrived
    cannot act on the terminal either."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record))


console = SafeConsole()
err_console = SafeConsole(stderr=True)


class _Stdout:
    """What this run of the CLI has written to stdout (reset by ``main`` per run)."""

    json_written = False


def json_written() -> bool:
    """Whether this run has written its ``--json`` document to stdout already."""
    return _Stdout.json_written


def reset_output_state() -> None:
    _Stdout.json_written = False


def print_json(data: Any) -> None:
    """Write one JSON document to stdout (for ``--json``); ASCII only, so no byte of a
    string in it can act on a terminal."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str, ensure_ascii=True)
    sys.stdout.write("\n")
    sys.stdout.flush()
    _Stdout.json_written = True


def print_error(error: BmsfwError) -> None:
    """Print an error with its code, diagnosis and remedy to stderr."""
    err_console.print(line(("error", "bold red"), f" {error.code}: {one_line(error.message)}"))
    err_console.print(f"  diagnosis: {one_line(error.diagnosis)}")
    err_console.print(f"  remedy:    {one_line(error.remedy)}")


def print_error_json(error: BmsfwError, exit_code: int) -> None:
    """The error as the ``--json`` document: ``{"error": {code, type, message,
    diagnosis, remedy}, "exit_code": N}`` (the same ``error`` record as in a report)."""
    print_json({"error": error.to_dict(), "exit_code": exit_code})
