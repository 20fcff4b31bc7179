"""memory_worker: a chat application's Zep memory, safe to depend on.

``celery -A memory_worker worker|beat`` finds the Celery application here.
"""

from __future__ import annotations

from memory_worker.logs import install as _install_logging

_install_logging()

from memory_worker.celery_app import app  # noqa: E402
from memory_worker.enqueue import EnqueueResult  # noqa: E402
from memory_worker.exposition import metrics_asgi_app, metrics_wsgi_app  # noqa: E402
from memory_worker.runtime import (  # noqa: E402
    aenqueue_message,
    afetch_thread_context,
    enqueue_message,
    fetch_thread_context,
)
from memory_worker.shapes import (  # noqa: E402
    ContextMessage,
    FactsView,
    ReadMeta,
    RecentView,
    SummaryView,
    ThreadContext,
)

__all__ = [
    "ContextMessage", "EnqueueResult", "FactsView", "ReadMeta", "RecentView", "SummaryView",
    "ThreadContext", "aenqueue_message", "afetch_thread_context", "app", "enqueue_message",
    "fetch_thread_context", "metrics_asgi_app", "metrics_wsgi_app",
]
