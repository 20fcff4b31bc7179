"""memory_worker: a chat application's Zep memory, safe to depend on.

``celery -A memory_worker worker|beat`` finds the Celery application here.
"""

from __future__ import annotations

from memory_worker.logs import install as _install_logging

_install_logging()

from memory_worker.celery_app import app  # noqa: E402
from memory_worker.runtime import (  # noqa: E402
    aenqueue_message,
    afetch_thread_context,
    enqueue_message,
    fetch_thread_context,
)

__all__ = ["aenqueue_message", "afetch_thread_context", "app", "enqueue_message",
           "fetch_thread_context"]
