"""OpenTelemetry spans, optional: ``pip install 'memory-worker[otel]'``.

Without OpenTelemetry, or until tracing is turned on, every ``span`` is a no-op
and the public calls check one module global before doing anything else. It is
turned on once per process, against a tracer provider that is already set:

- a web process: the application sets its ``TracerProvider``, then calls
  ``instrument()`` (Celery's publishing is instrumented too, so the trace
  travels in the task's headers);
- a worker: each pool process, at ``worker_process_init``, when the process has
  a tracer provider by then (``opentelemetry-instrument celery -A memory_worker
  worker``, or a module the worker imports with ``--include`` that sets one);
  the task then continues the trace of the request that enqueued it.

Spans (``memory.*`` attributes, never message content, a user or thread id or a
key; names pass the allow-list ``ATTRIBUTES`` and a text value is cut to its
first word of ``[A-Za-z0-9_.-]``):

    memory.fetch_thread_context   view, source, cached, reason, mode, used
    memory.enqueue_message        role, task_id, duplicate, skipped, spooled, redacted
    apply_async/memory.mirror_message, run/memory.mirror_message   (Celery's instrumentation)
    memory.mirror_message         failures, retries, outcome, reason, status_code
    zep.<operation>               operation, api_version, outcome, reason, status_code, messages

A log line written inside a recording span carries its ``trace_id`` and
``span_id`` (``logs``), whoever started the span.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from memory_worker.zep import (
    Failure,
    Landed,
    Memory,
    OutgoingMessage,
    ReadResult,
    WriteResult,
    Written,
    ZepApi,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from memory_worker.enqueue import EnqueueResult

log = logging.getLogger("memory_worker.tracing")

Value = str | bool | int | float | None

# Keyword → attribute name. Nothing else reaches a span.
ATTRIBUTES: Mapping[str, str] = {
    "view": "memory.view",
    "source": "memory.source",
    "cached": "memory.cached",
    "reason": "memory.reason",
    "mode": "memory.mode",
    "used": "memory.used",
    "role": "memory.role",
    "task_id": "memory.task_id",
    "duplicate": "memory.duplicate",
    "skipped": "memory.skipped",
    "spooled": "memory.spooled",
    "redacted": "memory.redacted",
    "failures": "memory.failures",
    "retries": "memory.retries",
    "outcome": "memory.outcome",
    "status_code": "http.response.status_code",
    "operation": "zep.operation",
    "api_version": "zep.api_version",
    "messages": "zep.messages",
    "error": "error.type",
}
_WORD = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Failures that are answers, not faults: the writer creates what is missing.
_NOT_ERRORS = frozenset({"not_found", "session_not_found", "user_not_found"})

_tracer: Tracer | None = None
_celery_instrumented = False
_lock = threading.Lock()


def available() -> bool:
    """The OpenTelemetry API can be imported."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def provider_set(tracer_provider: TracerProvider | None = None) -> bool:
    """A real tracer provider is set (given, or the process's global one)."""
    if not available():
        return False
    from opentelemetry import trace

    provider = tracer_provider or trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def enabled() -> bool:
    """Spans are being made in this process (the check every call site makes first)."""
    return _tracer is not None


def instrument(tracer_provider: TracerProvider | None = None) -> bool:
    """Turn tracing on in this process: the library's spans, and Celery's publish and
    run spans with the trace carried in the task headers. ``tracer_provider``: the
    global one when not given. False, and nothing changed, when OpenTelemetry is not
    installed or no provider is set. Idempotent."""
    global _tracer, _celery_instrumented
    if not provider_set(tracer_provider):
        return False
    from opentelemetry import trace

    provider = tracer_provider or trace.get_tracer_provider()
    with _lock:
        try:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor
        except ImportError:
            log.warning("memory_tracing_without_celery: opentelemetry-instrumentation-celery "
                        "is not installed; traces stop at the broker")
        else:
            instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=provider)
                _celery_instrumented = True
        _tracer = provider.get_tracer("memory_worker")
    return True


def uninstrument() -> None:
    """Turn tracing off again (tests); Celery's instrumentation too, if this module added it."""
    global _tracer, _celery_instrumented
    with _lock:
        _tracer = None
        if _celery_instrumented:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
            _celery_instrumented = False


def attributes(**values: Value) -> dict[str, str | bool | int | float]:
    """The span attributes of ``values``: allowed names only, text reduced to one word."""
    clean: dict[str, str | bool | int | float] = {}
    for key, value in values.items():
        name = ATTRIBUTES.get(key)
        if name is None or value is None:
            continue
        if isinstance(value, str):
            word = _WORD.match(value)
            if word is None:
                continue
            value = word.group()
        elif not isinstance(value, bool | int | float):
            continue
        clean[name] = value
    return clean


def record(current: Span | None, **values: Value) -> None:
    """Add attributes to ``current`` when it records (``span`` yields None when off)."""
    if current is not None and current.is_recording():
        current.set_attributes(attributes(**values))


@contextmanager
def span(name: str, **values: Value) -> Iterator[Span | None]:
    """A span around the block, current inside it; None and nothing done when off.

    An exception leaving the block marks the span as an error by its type's name
    only: exception messages may quote what they refused.
    """
    tracer = _tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, record_exception=False,
                                      set_status_on_exception=False) as current:
        record(current, **values)
        try:
            yield current
        except BaseException as exc:
            _failed(current, type(exc).__name__)
            raise


def record_read(current: Span | None, meta: Mapping[str, Any]) -> None:
    """What a read returned, without what it read."""
    if current is not None and current.is_recording():
        current.set_attributes(attributes(
            source=meta.get("source"), cached=meta.get("cached"),
            reason=meta.get("reason"), mode=meta.get("mode"), used=meta.get("used")))


def record_enqueue(current: Span | None, result: EnqueueResult) -> None:
    """What an enqueue did, without the message."""
    if current is not None and current.is_recording():
        current.set_attributes(attributes(
            task_id=result.task_id, duplicate=result.duplicate, skipped=result.skipped,
            spooled=result.spooled, redacted=sum(result.redactions.values())))


def _failed(current: Span, kind: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    if current.is_recording():
        current.set_attributes(attributes(error=kind))
        current.set_status(Status(StatusCode.ERROR, kind))


def traced_zep(client: ZepApi, api_version: str) -> ZepApi:
    """``client`` with a span around each call when tracing is on; ``client`` itself when not."""
    return TracedZep(client, api_version) if enabled() else client


class TracedZep:
    """A ``ZepApi`` whose every call to Zep is a ``zep.<operation>`` span."""

    def __init__(self, client: ZepApi, api_version: str) -> None:
        self.client = client
        self.api_version = api_version

    def __repr__(self) -> str:
        return f"TracedZep({self.client!r})"

    def __getattr__(self, name: str) -> Any:  # what the project's clients have beyond ZepApi
        return getattr(self.client, name)

    def get_memory(self, session_id: str, lastn: int, budget_seconds: float | None = None,
                   view: str | None = None) -> ReadResult:
        with self._span("get_memory") as current:
            result = self.client.get_memory(session_id, lastn, budget_seconds, view)
            _outcome(current, result)
            return result

    async def aget_memory(self, session_id: str, lastn: int,
                          budget_seconds: float | None = None,
                          view: str | None = None) -> ReadResult:
        with self._span("get_memory") as current:
            result = await self.client.aget_memory(session_id, lastn, budget_seconds, view)
            _outcome(current, result)
            return result

    def probe(self, budget_seconds: float | None = None) -> Failure | None:
        with self._span("probe") as current:
            result = self.client.probe(budget_seconds)
            _outcome(current, result)
            return result

    def add_messages(self, session_id: str, messages: Sequence[OutgoingMessage],
                     budget_seconds: float | None = None) -> WriteResult:
        with self._span("add_messages", messages=len(messages)) as current:
            result = self.client.add_messages(session_id, messages, budget_seconds)
            _outcome(current, result)
            return result

    def add_session(self, session_id: str, user_id: str | None = None,
                    budget_seconds: float | None = None) -> WriteResult:
        with self._span("add_session") as current:
            result = self.client.add_session(session_id, user_id, budget_seconds)
            _outcome(current, result)
            return result

    def add_user(self, user_id: str, budget_seconds: float | None = None) -> WriteResult:
        with self._span("add_user") as current:
            result = self.client.add_user(user_id, budget_seconds)
            _outcome(current, result)
            return result

    def landed(self, session_id: str, client_msg_id: str,
               budget_seconds: float | None = None) -> Landed | Failure:
        with self._span("landed") as current:
            result = self.client.landed(session_id, client_msg_id, budget_seconds)
            _outcome(current, result)
            return result

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        await self.client.aclose()

    def _span(self, operation: str, messages: int | None = None
              ) -> AbstractContextManager[Span | None]:
        return span(f"zep.{operation}", operation=operation, api_version=self.api_version,
                    messages=messages)


def _outcome(current: Span | None, result: object) -> None:
    if current is None or not current.is_recording():
        return
    if isinstance(result, Failure):
        current.set_attributes(attributes(outcome="failure", reason=result.reason,
                                          status_code=result.status_code))
        if result.reason not in _NOT_ERRORS:
            _failed(current, str(result.reason))
    elif isinstance(result, Written):
        current.set_attributes(attributes(outcome=result.status))
    elif isinstance(result, Memory | frozenset) or result is None:
        current.set_attributes(attributes(outcome="ok"))
