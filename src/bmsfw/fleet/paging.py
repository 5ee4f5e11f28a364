"""Cursor paging for the API's list routes.

A client asks for a page with ``limit`` (1 to :data:`MAX_PAGE_SIZE`, default
:data:`DEFAULT_PAGE_SIZE`) and ``cursor`` (taken from the previous page's answer).
The answer's body is the page (a JSON array, as before paging existed); when more
rows follow, the ``Link`` header names the next page (RFC 8288, ``rel="next"``) and
``X-Next-Cursor`` carries its cursor.

The cursor is opaque to clients: URL-safe base64 of a small JSON array naming the
list and the sort key of the last row sent. Pages are keyset pages (``WHERE key >
last ORDER BY key LIMIT n+1``): one index range scan per page however deep, no
OFFSET, and stable while rows are added. A cursor of another list, or anything that
does not decode to one, is refused with BMSFW-E642 before any query runs.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bmsfw.fleet.errors import InvalidCursorError

if TYPE_CHECKING:  # types only: the agent imports the page bounds (schemas) without SQLAlchemy
    from sqlalchemy import Select
    from sqlalchemy.orm import QueryableAttribute

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "EVERYTHING",
    "MAX_CURSOR_CHARS",
    "MAX_PAGE_SIZE",
    "Key",
    "Listing",
    "PageRequest",
    "decode_cursor",
    "encode_cursor",
    "keyset",
    "listing",
]

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# A cursor holds a list name and one key of at most 120 characters (UTF-8, up to 4 bytes
# each, base64: under 700 characters).
MAX_CURSOR_CHARS = 1024

Key = int | str
T = TypeVar("T")
Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")


@dataclass(frozen=True)
class PageRequest:
    """One page: at most ``limit`` rows (None: all, for callers inside the server only)
    after the row whose sort key is ``after`` (None: from the start)."""

    limit: int | None = DEFAULT_PAGE_SIZE
    after: Key | None = None


EVERYTHING = PageRequest(limit=None)


@dataclass(frozen=True)
class Listing:
    """A page of rows and the sort key of its last row when more rows follow."""

    items: list[dict[str, Any]]
    next_after: Key | None = None


def encode_cursor(kind: str, key: Key) -> str:
    raw = json.dumps([kind, key], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, key_type: type[int] | type[str]) -> Key:
    """The sort key inside ``cursor``; E642 unless it is a cursor of list ``kind``."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursorError(f"the cursor is {len(cursor)} characters long; not one of ours")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursorError("the cursor does not decode") from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[1], key_type)
        or isinstance(value[1], bool)
    ):
        raise InvalidCursorError("the cursor does not decode to a position in a list")
    if value[0] != kind:
        raise InvalidCursorError(f"the cursor belongs to another list, not to the {kind} list")
    key: Key = value[1]
    if isinstance(key, int) and not 0 <= key < 1 << 63:
        raise InvalidCursorError("the cursor's position is out of range")
    if isinstance(key, str) and len(key) > 200:
        raise InvalidCursorError("the cursor's position is out of range")
    return key


def keyset(
    query: Q, column: QueryableAttribute[Any], page: PageRequest, *, descending: bool = False
) -> Q:
    """``query`` ordered by ``column`` (unique), from after ``page.after``, one row beyond
    ``page.limit`` (so :func:`listing` sees whether more follow)."""
    if page.after is not None:
        query = query.where(column < page.after if descending else column > page.after)
    query = query.order_by(column.desc() if descending else column.asc())
    return query if page.limit is None else query.limit(page.limit + 1)


def listing(
    rows: Sequence[T],
    page: PageRequest,
    key: Callable[[T], Key],
    render: Callable[[T], dict[str, Any]],
) -> Listing:
    """The page among ``rows`` (fetched by :func:`keyset`) and where the next one starts."""
    if page.limit is None or len(rows) <= page.limit:
        return Listing([render(r) for r in rows])
    kept = rows[: page.limit]
    return Listing([render(r) for r in kept], key(kept[-1]))
