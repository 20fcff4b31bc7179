"""The public surface: what `memory_worker` exports, with types a caller can check against."""

from __future__ import annotations

import typing

import memory_worker
from memory_worker.shapes import ReadMeta, SummaryView


def test_the_package_exports_the_calls_the_types_and_the_metrics_helpers() -> None:
    """One import for a web application: reads, writes, their shapes, /metrics helpers."""
    for name in ("fetch_thread_context", "afetch_thread_context", "enqueue_message",
                 "aenqueue_message", "EnqueueResult", "ReadMeta", "SummaryView", "RecentView",
                 "FactsView", "ThreadContext", "ContextMessage", "metrics_wsgi_app",
                 "metrics_asgi_app"):
        assert hasattr(memory_worker, name), name
        assert name in memory_worker.__all__


def test_read_meta_names_every_key_of_the_contract() -> None:
    """SPEC §5: mode, used, cached, source, took_ms, reason always; until when forced."""
    assert ReadMeta.__required_keys__ == {"mode", "used", "cached", "source", "took_ms",
                                          "reason"}
    assert ReadMeta.__optional_keys__ == {"until"}
    assert SummaryView.__required_keys__ == {"summary", "context", "messages"}


def test_the_read_calls_are_annotated_with_the_shapes() -> None:
    """A type checker sees ThreadContext | None and ReadMeta, not bare dicts."""
    hints = typing.get_type_hints(memory_worker.fetch_thread_context)
    assert hints["return"] == tuple[memory_worker.ThreadContext | None, ReadMeta]
