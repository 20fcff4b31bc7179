"""The metrics helper as a Django view: ``path("metrics/", metrics)``.

It serves ``memory_worker.exposition.metrics_wsgi_app`` built from the settings
``ready()`` configured: this process's metrics (every process's of
``PROMETHEUS_MULTIPROC_DIR`` when it is set) plus the effective mode and the
dead-letter size read from Redis at scrape time.
"""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.types import WSGIApplication

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from memory_worker.exposition import metrics_wsgi_app
from memory_worker.runtime import default_runtime

_app: WSGIApplication | None = None
_lock = threading.Lock()


def _metrics_app() -> WSGIApplication:
    global _app
    with _lock:
        if _app is None:
            _app = metrics_wsgi_app(default_runtime().settings)
        return _app


@require_GET  # type: ignore[untyped-decorator]  # django ships no types
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text (or OpenMetrics, as the scraper asks), answered by the WSGI helper."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        answer.update(status=int(status.split()[0]), headers=headers)
        return lambda data: None

    environ = {"PATH_INFO": request.path_info, "QUERY_STRING": "", **request.META}
    body = b"".join(_metrics_app()(environ, start_response))
    response = HttpResponse(body, status=answer["status"])
    for name, value in answer["headers"]:
        response[name] = value
    return response
