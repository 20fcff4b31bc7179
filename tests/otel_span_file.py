"""A test worker's tracer provider: ``celery -A memory_worker worker -I tests.otel_span_file``.

Imported by the worker's main process before it forks its pool, it sets the
process's tracer provider; each finished span is appended as one JSON line to
the file named by ``MEMORY_TEST_SPAN_FILE``, where the test reads it. A pool
process finds the provider at ``worker_process_init`` and turns tracing on, as
it would under ``opentelemetry-instrument``. Test-only: no OTLP collector needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


def span_line(span: ReadableSpan) -> dict[str, Any]:
    """What a test asks of a span, as JSON."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
    }


class SpanFile(SpanExporter):
    """Appends each span as a JSON line (one write per batch, so lines never interleave)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_line(s), default=str) + "\n" for s in spans)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(text)
        return SpanExportResult.SUCCESS


_path = os.environ.get("MEMORY_TEST_SPAN_FILE")
if _path:
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(SpanFile(_path)))
    trace.set_tracer_provider(_provider)
