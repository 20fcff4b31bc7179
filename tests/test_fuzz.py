"""Fuzzing the public calls and the state they read: only the documented outcomes come out.

``enqueue_message`` returns an ``EnqueueResult`` or raises ``InvalidMessage`` (and then
publishes nothing); ``fetch_thread_context`` returns ``(context, meta)`` or raises
``InvalidRequest``; garbage in any Redis key the read path reads, or any body Zep
sends, never turns into another exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_worker.config import Settings
from memory_worker.enqueue import EnqueueResult, Publisher
from memory_worker.errors import InvalidMessage, InvalidRequest
from memory_worker.keys import Keys
from memory_worker.runtime import Runtime
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import FakeClock

SHARED = settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300),
                     st.binary(max_size=50), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3))
ids = st.one_of(st.from_regex(r"[A-Za-z0-9._:@-]{1,40}", fullmatch=True), anything)


class Broker:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, task_id: str, kwargs: dict[str, Any]) -> None:
        self.sent.append(kwargs)


@pytest.fixture
def runtime(read_settings: Settings, conn: redis.Redis) -> Iterator[Runtime]:
    rt = Runtime(read_settings, clock=FakeClock())
    yield rt
    rt.zep.close()


@SHARED
@given(thread_id=ids, role=st.one_of(st.sampled_from(["user", "assistant", "robot"]), anything),
       content=st.one_of(st.text(max_size=400), anything), client_msg_id=ids,
       user_id=st.one_of(st.none(), ids), metadata=st.one_of(st.none(), anything))
def test_enqueue_gives_a_result_or_invalid_message_and_nothing_half_written(
    settings: Settings, conn: redis.Redis, tmp_path: Path, thread_id: Any, role: Any,
    content: Any, client_msg_id: Any, user_id: Any, metadata: Any,
) -> None:
    """Any arguments: EnqueueResult, or InvalidMessage with no publish and no marker."""
    conn.flushdb()
    broker = Broker()
    publisher = Publisher(dataclasses.replace(settings, spool_dir=str(tmp_path / "spool")),
                          conn, broker, clock=FakeClock())
    try:
        result = publisher.enqueue(thread_id, role, content, client_msg_id, user_id, metadata)
    except InvalidMessage:
        assert broker.sent == [] and conn.dbsize() == 0
        assert publisher.outbox.pending() == 0
        return
    assert isinstance(result, EnqueueResult)
    assert len(broker.sent) == 1 and not result.spooled


@SHARED
@given(thread_id=ids, view=st.one_of(st.sampled_from(["summary", "recent", "facts"]), anything))
def test_fetch_gives_a_result_or_invalid_request(
    runtime: Runtime, sim: ZepSimulator, thread_id: Any, view: Any
) -> None:
    """Any arguments: (context, meta) with the documented keys, or InvalidRequest."""
    try:
        context, meta = runtime.fetch(thread_id, view)
    except InvalidRequest:
        return
    assert context is None or isinstance(context, dict)
    assert {"mode", "used", "cached", "source", "took_ms", "reason"} <= set(meta)
    assert meta["used"] is (context is not None)


@SHARED
@given(garbage=st.one_of(st.text(max_size=200), st.binary(max_size=50).map(repr)),
       which=st.sampled_from(["forced", "context", "pause", "counter", "since", "latency",
                              "probe_failures"]))
def test_garbage_in_any_key_the_read_path_reads_is_never_raised(
    runtime: Runtime, sim: ZepSimulator, conn: redis.Redis, keys: Keys, garbage: str,
    which: str,
) -> None:
    """A corrupt value (or a value of the wrong type) ends in a documented outcome."""
    conn.flushdb()
    key = {"forced": keys.forced, "context": keys.context("t", "summary"),
           "pause": keys.rate_limited_until, "counter": keys.consecutive_failures,
           "since": keys.failure_window_start, "latency": keys.read_latencies,
           "probe_failures": keys.probe_failures}[which]
    conn.set(key, garbage)
    sim.seed("t", summary="s")
    sim.add_fault(Fault(method="GET", path="*/memory", status=503, times=1))
    for _ in range(2):  # a failure (guard scripts) then a success (cache scripts)
        _, meta = runtime.fetch("t", "summary")
        assert meta["source"] in {"zep", "error", "negative_cache", "write_only_forced",
                                  "rate_limited"}


@pytest.mark.parametrize("record", [
    '{"reason": "auth", "forced_at": 1, "until": NaN}',
    '{"reason": "auth", "forced_at": 1, "until": Infinity, "hold_seconds": 1}',
    '{"reason": ["x"], "forced_at": 1, "until": 2}',
    '{"reason": "auth", "forced_at": 1, "until": 2, "hold_seconds": "lots"}',
])
def test_a_forced_record_with_impossible_values_reads_as_none(
    runtime: Runtime, conn: redis.Redis, keys: Keys, record: str
) -> None:
    """NaN, infinity or wrong types in the record: ignored, never a crash in status or reads."""
    from memory_worker.status import read_status

    conn.set(keys.forced, record)
    assert read_status(conn, runtime.settings, keys, now=runtime.clock()).forced is None
    assert runtime.fetch("t", "summary")[1]["source"] != "write_only_forced"


@SHARED
@given(status=st.sampled_from([200, 404, 429, 500, 502]),
       body=st.text(max_size=200), retry_after=st.text(max_size=30))
def test_garbage_bodies_and_headers_from_zep_are_never_raised(
    runtime: Runtime, sim: ZepSimulator, conn: redis.Redis, status: int, body: str,
    retry_after: str,
) -> None:
    """Any body, any Retry-After: a result or a failure reason, never an exception."""
    conn.flushdb()
    sim.clear_faults()
    headers = {"Retry-After": retry_after} if retry_after.isprintable() and retry_after else {}
    sim.add_fault(Fault(method="GET", path="*/memory", status=status, raw_body=body,
                        headers=headers, times=1))
    context, meta = runtime.fetch("t", "recent")
    if context is None:
        assert meta["reason"] in {"not_found", "rate_limited", "server_error", "client_error",
                                  "auth", "timeout", "connection_error"}
    pause = conn.get(runtime.keys.rate_limited_until)
    if pause is not None:  # Retry-After: 0 asks for no pause at all
        assert status == 429 and 0 <= float(pause) - runtime.clock() <= 300
