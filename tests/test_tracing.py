"""OpenTelemetry: one trace from a web request through the task to Zep, and nothing without it.

The test process traces into the SDK's ``InMemorySpanExporter``; the worker
(a real prefork ``celery worker``) into a file of JSON lines
(``tests.otel_span_file``), against the Zep simulator and a real Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer

from memory_worker import (
    aenqueue_message,
    afetch_thread_context,
    enqueue_message,
    fetch_thread_context,
    logs,
    runtime,
    tracing,
)
from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.modes import ForcedRecord, record_ttl_ms
from memory_worker.zep import Written, ZepClient
from memory_worker.zep_sim import ZepSimulator
from tests.otel_span_file import span_line
from tests.processes import ROOT, celery_process, wait_for, worker_args

SECRET = "my secret plan: call 0533 123 45 67"  # content that must reach no span
MEMORY = "*/sessions/*/memory"


@dataclasses.dataclass
class Traced:
    """The test process's tracing: its provider's tracer (the web framework's part) and
    every span finished in it."""

    tracer: Tracer
    exporter: InMemorySpanExporter

    def spans(self) -> list[dict[str, Any]]:
        return [span_line(s) for s in self.exporter.get_finished_spans()]


def _traced_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def traced() -> Iterator[Traced]:
    """Tracing on in this process, as a web application turns it on (its own provider)."""
    provider, exporter = _traced_provider()
    assert tracing.instrument(provider)
    yield Traced(provider.get_tracer("web"), exporter)
    tracing.uninstrument()
    provider.shutdown()


@contextmanager
def installed(settings: Settings) -> Iterator[runtime.Runtime]:
    """This process's runtime built from ``settings`` (after tracing was turned on)."""
    previous = runtime._default
    rt = runtime.configure(settings)
    try:
        yield rt
    finally:
        rt.zep.close()
        runtime._default = previous


@pytest.fixture
def web_runtime(env: dict[str, str], conn: redis.Redis) -> Iterator[runtime.Runtime]:
    """The web process's runtime: the worker's broker, Redis and simulator."""
    with installed(Settings.from_env(env)) as rt:
        yield rt


def seed(sim: ZepSimulator, thread_id: str) -> None:
    client = ZepClient(sim.url, "test-key")
    client.add_session(thread_id)
    message = {"uuid": "00000000-0000-4000-8000-000000000001", "role": "user",
               "role_type": "user", "content": SECRET, "metadata": None}
    assert isinstance(client.add_messages(thread_id, [message]), Written)  # type: ignore[list-item]
    client.close()


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def the(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [found] = by_name(spans, name)
    return found


def read_span_file(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_one_trace_runs_from_the_web_request_through_the_task_to_the_zep_post(
    traced: Traced, web_runtime: runtime.Runtime, env: dict[str, str], sim: ZepSimulator,
    tmp_path: Path,
) -> None:
    """web request → enqueue_message → Celery publish → (worker) task run → mirror → Zep add."""
    # Given a worker whose pool processes trace into a file
    span_file = tmp_path / "worker-spans.jsonl"
    worker_env = {**env, "MEMORY_TEST_SPAN_FILE": str(span_file)}
    args = [*worker_args("traced"), "--include", "tests.otel_span_file"]
    with celery_process(args, worker_env, tmp_path / "worker.log"):
        # When a web request enqueues a message
        with traced.tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as web:
            result = enqueue_message("t-otel", "user", SECRET, "otel-1")
        assert not (result.duplicate or result.skipped or result.spooled)
        # Then the worker's task continues the request's trace, down to the Zep add
        wait_for(lambda: any(s["name"] == "run/memory.mirror_message"
                             for s in read_span_file(span_file)), 60, "the task's span")
    trace_id = f"{web.get_span_context().trace_id:032x}"
    local, remote = traced.spans(), read_span_file(span_file)

    request = the(local, "POST /chat")
    enqueue = the(local, "memory.enqueue_message")
    publish = the(local, "apply_async/memory.mirror_message")
    run = the(remote, "run/memory.mirror_message")
    mirror = the(remote, "memory.mirror_message")
    adds = by_name(remote, "zep.add_messages")
    assert {s["trace_id"] for s in [*local, *remote]} == {trace_id}
    assert enqueue["parent_span_id"] == request["span_id"]
    assert publish["parent_span_id"] == enqueue["span_id"] and publish["kind"] == "PRODUCER"
    assert run["parent_span_id"] == publish["span_id"] and run["kind"] == "CONSUMER"
    assert mirror["parent_span_id"] == run["span_id"]
    assert adds and all(a["parent_span_id"] == mirror["span_id"] for a in adds)

    assert enqueue["attributes"] == {
        "memory.role": "user", "memory.task_id": result.task_id, "memory.duplicate": False,
        "memory.skipped": False, "memory.spooled": False, "memory.redacted": 1}
    assert mirror["attributes"]["memory.outcome"] == "stored"
    stored = adds[-1]
    assert stored["attributes"] == {
        "zep.operation": "add_messages", "zep.api_version": "v2", "zep.messages": 1,
        "memory.outcome": "stored"}
    assert stored["status"] == "UNSET"
    # Each add span stands for one POST Zep received: here a 404 (no session yet; the
    # writer creates it) and then the add that was taken
    posts = [r for r in sim.requests("POST", MEMORY) if r.carries("otel-1")]
    assert [p.status for p in posts] == [404, 200]
    assert [a["attributes"].get("http.response.status_code") for a in adds] == [404, None]
    assert adds[0]["attributes"]["memory.reason"] == "session_not_found"
    assert adds[0]["status"] == "UNSET"  # an answer the writer acts on, not a fault
    assert the(remote, "zep.add_session")["parent_span_id"] == mirror["span_id"]
    assert "secret" not in json.dumps([*local, *remote])


def test_a_read_span_carries_view_source_cached_reason_and_mode_never_content(
    traced: Traced, read_settings: Settings, sim: ZepSimulator, conn: redis.Redis,
) -> None:
    """A miss (with its zep.get_memory span), then a cache hit: what the read did, not what
    it read."""
    seed(sim, "t-read")
    with installed(read_settings), traced.tracer.start_as_current_span("GET /chat"):
        miss, _ = fetch_thread_context("t-read", "recent")
        hit, hit_meta = fetch_thread_context("t-read", "recent")
    assert miss is not None and hit == miss and hit_meta["cached"] is True
    spans = traced.spans()
    first, second = by_name(spans, "memory.fetch_thread_context")
    assert first["attributes"] == {
        "memory.view": "recent", "memory.source": "zep", "memory.cached": False,
        "memory.mode": "read_write", "memory.used": True}
    assert second["attributes"]["memory.cached"] is True
    zep = the(spans, "zep.get_memory")
    assert zep["parent_span_id"] == first["span_id"]
    assert zep["attributes"] == {"zep.operation": "get_memory", "zep.api_version": "v2",
                                 "memory.outcome": "ok"}
    assert "secret" not in json.dumps(spans) and "test-key" not in json.dumps(spans)


def test_a_failed_read_names_its_reason_and_the_zep_status(
    traced: Traced, read_settings: Settings, sim: ZepSimulator, conn: redis.Redis,
) -> None:
    """A 503 from Zep: the read's reason and the Zep call's status code, marked an error."""
    from memory_worker.zep_sim import Fault

    sim.add_fault(Fault(method="GET", path=MEMORY, status=503))
    with installed(read_settings):
        context, meta = fetch_thread_context("t-down", "summary")
    assert context is None and meta["reason"] == "server_error"
    spans = traced.spans()
    read = the(spans, "memory.fetch_thread_context")
    assert read["attributes"]["memory.source"] == "error"
    assert read["attributes"]["memory.reason"] == "server_error"
    zep = the(spans, "zep.get_memory")
    assert zep["attributes"]["http.response.status_code"] == 503
    assert zep["attributes"]["memory.reason"] == "server_error" and zep["status"] == "ERROR"


def test_the_async_calls_trace_like_the_sync_ones(
    traced: Traced, web_runtime: runtime.Runtime, sim: ZepSimulator,
) -> None:
    """afetch_thread_context and aenqueue_message: the same spans, the publish inside the
    enqueue span although a pool thread sends it."""
    seed(sim, "t-async")

    async def handler() -> None:
        with traced.tracer.start_as_current_span("POST /chat"):
            await afetch_thread_context("t-async", "summary")
            await aenqueue_message("t-async", "user", SECRET, "otel-async-1")

    asyncio.run(handler())
    spans = traced.spans()
    request = the(spans, "POST /chat")
    read = the(spans, "memory.fetch_thread_context")
    enqueue = the(spans, "memory.enqueue_message")
    publish = the(spans, "apply_async/memory.mirror_message")
    assert read["parent_span_id"] == enqueue["parent_span_id"] == request["span_id"]
    assert the(spans, "zep.get_memory")["parent_span_id"] == read["span_id"]
    assert publish["parent_span_id"] == enqueue["span_id"]
    assert "secret" not in json.dumps(spans)


def test_a_json_log_line_written_inside_a_span_carries_its_trace_id(
    traced: Traced, read_settings: Settings, conn: redis.Redis, keys: Keys,
) -> None:
    """A read blocked by a forced mode logs zep_read_blocked_forced_mode inside its span:
    the line names that span's trace and span id, in JSON and in the console format."""
    now = time.time()
    record = ForcedRecord.new(reason="maintenance", source="ops", now=now, hold_seconds=300)
    conn.set(keys.forced, record.to_json(), px=record_ttl_ms(300, read_settings.grace_seconds))
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(logs.ROOT_LOGGER)
    logger.addHandler(handler)
    try:
        with installed(read_settings):
            with traced.tracer.start_as_current_span("GET /chat"):
                _, meta = fetch_thread_context("t-blocked", "summary")
            logs.log_event(logging.getLogger("memory_worker.test"), "outside_any_span")
    finally:
        logger.removeHandler(handler)
    assert meta["source"] == "write_only_forced"
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    [blocked] = [x for x in lines if x["event"] == "zep_read_blocked_forced_mode"]
    read = the(traced.spans(), "memory.fetch_thread_context")
    assert (blocked["trace_id"], blocked["span_id"]) == (read["trace_id"], read["span_id"])
    [outside] = [x for x in lines if x["event"] == "outside_any_span"]
    assert "trace_id" not in outside and "span_id" not in outside

    with traced.tracer.start_as_current_span("any") as current:
        event = logging.LogRecord("memory_worker.test", logging.INFO, __file__, 1, "e", None,
                                  None)
        console = logs.ConsoleFormatter().format(event)
    assert f"trace_id={current.get_span_context().trace_id:032x}" in console


def test_span_attributes_pass_an_allow_list_and_carry_one_word_of_text() -> None:
    """Content, keys and free text cannot reach a span, whatever a call site passes."""
    assert tracing.attributes(
        content=SECRET, api_key="test-key", thread_id="t-1", user_id="u-1",
        reason="invalid_payload: " + SECRET, source="zep", cached=False, status_code=503,
        view=None,
    ) == {"memory.reason": "invalid_payload", "memory.source": "zep", "memory.cached": False,
          "http.response.status_code": 503}


def test_without_a_provider_nothing_is_traced_and_everything_works(
    web_runtime: runtime.Runtime, sim: ZepSimulator,
) -> None:
    """No tracer provider: instrument() declines, spans are no-ops, the Zep client is bare;
    turned off again after use, not even Celery's publish span is recorded."""
    assert not tracing.provider_set() and tracing.instrument() is False
    assert not tracing.enabled()
    with tracing.span("memory.fetch_thread_context", view="summary") as current:
        assert current is None
    assert type(web_runtime.zep) is ZepClient
    provider, exporter = _traced_provider()
    assert tracing.instrument(provider)
    tracing.uninstrument()
    seed(sim, "t-plain")
    context, meta = fetch_thread_context("t-plain", "summary")
    result = enqueue_message("t-plain", "user", "hello", "plain-1")
    assert context is not None and meta["source"] == "zep" and result.task_id
    assert exporter.get_finished_spans() == ()


def test_the_library_imports_and_works_without_opentelemetry(redis_url: str) -> None:
    """opentelemetry not importable: memory_worker imports, a read answers, the pool-process
    hook and a span are no-ops, a log line is written without ids."""
    code = """
import logging, sys
sys.modules["opentelemetry"] = None  # any import of opentelemetry now fails
import memory_worker
from memory_worker import celery_app, logs, tracing
assert not tracing.available() and tracing.instrument() is False
celery_app._trace_pool_process()
with tracing.span("memory.enqueue_message", role="user") as current:
    assert current is None
context, meta = memory_worker.fetch_thread_context("t-1", "summary")
assert context is None and meta["source"] == "disabled", meta
record = logging.LogRecord("memory_worker.x", logging.INFO, "f", 1, "e", None, None)
assert "trace_id" not in logs.JsonFormatter().format(record)
assert not any(name.startswith("opentelemetry") and sys.modules[name] is not None
               for name in sys.modules)
print("ok")
"""
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "MEMORY_LOG_FORMAT": "json"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
