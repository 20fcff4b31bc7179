"""memory_worker: a chat application's Zep memory, safe to depend on.

``celery -A memory_worker worker|beat`` finds the Celery application here.

Importing the package installs the project's log handler and nothing else: the
public names below are loaded on first use. So ``memory_worker.cli`` and the
``memory-worker`` entry point can report a broken environment (a metrics
directory that cannot hold the metric files, which prometheus_client opens when
the metrics are defined) in one line instead of failing at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memory_worker.logs import install as _install_logging

_install_logging()

if TYPE_CHECKING:
    from memory_worker.celery_app import app
    from memory_worker.enqueue import EnqueueResult
    from memory_worker.exposition import metrics_asgi_app, metrics_wsgi_app
    from memory_worker.runtime import (
        aenqueue_message,
        afetch_thread_context,
        enqueue_message,
        fetch_thread_context,
    )
    from memory_worker.shapes import (
        ContextMessage,
        FactsView,
        ReadMeta,
        RecentView,
        SummaryView,
        ThreadContext,
    )

_HOMES = {
    "app": "memory_worker.celery_app",
    "EnqueueResult": "memory_worker.enqueue",
    "metrics_asgi_app": "memory_worker.exposition",
    "metrics_wsgi_app": "memory_worker.exposition",
    "aenqueue_message": "memory_worker.runtime",
    "afetch_thread_context": "memory_worker.runtime",
    "enqueue_message": "memory_worker.runtime",
    "fetch_thread_context": "memory_worker.runtime",
    **{name: "memory_worker.shapes" for name in (
        "ContextMessage", "FactsView", "ReadMeta", "RecentView", "SummaryView", "ThreadContext")},
}

__all__ = [
    "ContextMessage", "EnqueueResult", "FactsView", "ReadMeta", "RecentView", "SummaryView",
    "ThreadContext", "aenqueue_message", "afetch_thread_context", "app", "enqueue_message",
    "fetch_thread_context", "metrics_asgi_app", "metrics_wsgi_app",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'memory_worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
