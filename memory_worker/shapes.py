"""What the public calls return, as types a caller can check against (SPEC §5, §6).

``fetch_thread_context`` and ``afetch_thread_context`` return ``(context, meta)``:
``context`` is one of the view shapes below (``None`` when nothing is returned),
``meta`` a ``ReadMeta``. ``enqueue_message`` returns ``enqueue.EnqueueResult``.
"""

# No `from __future__ import annotations`: TypedDict reads NotRequired at run time.

from typing import Literal, NotRequired, TypedDict

from memory_worker.zep import ContextMessage

View = Literal["summary", "recent", "facts"]
Source = Literal["zep", "disabled", "write_only_forced", "negative_cache", "rate_limited",
                 "error"]
ModeName = Literal["read_write", "write_only", "read_only", "off"]


class SummaryView(TypedDict):
    """``view="summary"``: Zep's summary and context block, and the last 4 messages."""

    summary: str | None
    context: str | None
    messages: list[ContextMessage]


class RecentView(TypedDict):
    """``view="recent"``: the last ``MEMORY_RECENT_LASTN`` messages, oldest first."""

    messages: list[ContextMessage]


class FactsView(TypedDict):
    """``view="facts"``: facts as plain sentences."""

    facts: list[str]


ThreadContext = SummaryView | RecentView | FactsView


class ReadMeta(TypedDict):
    """How a read went: always these keys, ``until`` only when a forced record blocked it."""

    mode: ModeName  # the effective mode
    used: bool  # True exactly when context is returned
    cached: bool
    source: Source
    took_ms: float
    reason: str | None  # why nothing was returned, or what forced the mode
    until: NotRequired[float]  # the forced record's end of hold (epoch seconds)


__all__ = ["ContextMessage", "FactsView", "ModeName", "ReadMeta", "RecentView", "Source",
           "SummaryView", "ThreadContext", "View"]
