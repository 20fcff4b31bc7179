"""Cursor pages of the v4 lists, in the shape the SDK's pager follows.

A page is ``{"items": [...], "total_size": n}`` plus ``"next_cursor"`` while
more rows remain; the SDK asks for the next page with ``cursor=<next_cursor>``
and the same other parameters, and stops when the cursor is absent.

The cursor is opaque to clients: it names the last row returned (its sort
value and its place in creation order), so a page never repeats or skips a row
that was there before, even while rows are added between pages. A cursor made
for one ``order_by``/``order`` is refused for another.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

Row = TypeVar("Row")
SortValue = float | str


@dataclass(frozen=True)
class PageRequest:
    """The paging parameters of one list request, checked."""

    size: int
    order_by: str
    descending: bool
    after: tuple[SortValue, int] | None  # the last row of the previous page

    @classmethod
    def from_query(
        cls, query: Mapping[str, list[str]], order_bys: Sequence[str], default_order: str = "asc"
    ) -> PageRequest:
        """Read ``page_size``, ``cursor``, ``order_by`` and ``order``; a bad one is a ValueError."""
        size = _one(query, "page_size")
        order_by = _one(query, "order_by") or order_bys[0]
        order = _one(query, "order") or default_order
        if order_by not in order_bys:
            raise ValueError("order_by must be one of " + ", ".join(order_bys))
        if order not in ("asc", "desc"):
            raise ValueError("order must be asc or desc")
        try:
            count = DEFAULT_PAGE_SIZE if size is None else int(size)
        except ValueError:
            raise ValueError("page_size must be a whole number") from None
        if not 1 <= count <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        cursor = _one(query, "cursor")
        after = None if not cursor else _decode(cursor, order_by, order)
        return cls(count, order_by, order == "desc", after)

    def page(
        self, rows: Sequence[Row], value: Callable[[Row, str], SortValue],
        seq: Callable[[Row], int], shown: Callable[[Row], dict[str, Any]],
    ) -> dict[str, Any]:
        """The page of ``rows`` after the cursor, each row shown as JSON."""

        def key(row: Row) -> tuple[SortValue, int]:
            return value(row, self.order_by), seq(row)

        ordered = sorted(rows, key=key, reverse=self.descending)
        after = self.after
        if after is not None:
            ordered = [
                row for row in ordered
                if (key(row) < after if self.descending else key(row) > after)
            ]
        taken = ordered[:self.size]
        body: dict[str, Any] = {"items": [shown(row) for row in taken], "total_size": len(rows)}
        if len(ordered) > self.size:
            last_value, last_seq = key(taken[-1])
            body["next_cursor"] = _encode(
                self.order_by, "desc" if self.descending else "asc", last_value, last_seq
            )
        return body


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _encode(order_by: str, order: str, value: SortValue, seq: int) -> str:
    raw = json.dumps([order_by, order, value, seq]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, order_by: str, order: str) -> tuple[SortValue, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_by, made_order, value, seq = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("cursor is not valid") from None
    if (made_by, made_order) != (order_by, order):
        raise ValueError("cursor was made for another order_by or order")
    if not isinstance(value, float | int | str) or isinstance(value, bool) or not isinstance(
        seq, int
    ):
        raise ValueError("cursor is not valid")
    return (float(value) if isinstance(value, int) else value), seq
