"""Exactly once on Zep v4, where Zep refuses no repeated message: the writer's own check.

The same Writer as on v2 (``tests/test_writer.py``), over the real ``zep-cloud``
SDK against the simulator's v4 side, which stores every add it is sent. What
was sent is counted from the simulator's request log, per message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from memory_worker.config import Settings
from memory_worker.messages import Payload, zep_messages
from memory_worker.writer import Done, Retry, Writer
from memory_worker.zep_sim import Fault, ZepSimulator
from memory_worker.zep_v4 import ZepV4Client
from tests.conftest import FakeClock
from tests.processes import accepted_adds, wait_for

ADD = "/api/v4/threads/*/messages"


def upper(a: float, b: float) -> float:
    return b


@pytest.fixture(autouse=True)
def no_settling(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Attempts here follow each other on an injected clock that does not move; the wait
    before looking at what an earlier attempt stored has tests of its own."""
    if "settling" not in request.node.name:
        monkeypatch.setattr(Writer, "_settle_seconds", lambda self: 0.0)


@pytest.fixture
def zep(sim: ZepSimulator, conn: redis.Redis) -> Iterator[ZepV4Client]:
    client = ZepV4Client(sim.url, "test-key", conn, write_budget_seconds=0.3)
    yield client
    client.close()


@pytest.fixture
def writer(conn: redis.Redis, read_settings: Settings, zep: ZepV4Client, clock: FakeClock
           ) -> Writer:
    v4 = dataclasses.replace(read_settings, zep_api_version="v4")
    return Writer(conn, v4, zep, clock=clock, rand=upper)


def payload(cmid: str, content: str = "Looking for a 2+1", thread: str = "t-v4") -> Payload:
    return Payload(thread_id=thread, role="user", content=content, client_msg_id=cmid)


def stored(sim: ZepSimulator, thread_id: str) -> list[dict[str, Any]]:
    """The messages of every v4 thread that holds ``thread_id`` (one thread, if all is well)."""
    found = []
    for thread in sim.threads_of():
        messages = sim.thread_messages(thread["uuid"])
        if any((m.get("metadata") or {}).get("thread_id") == thread_id for m in messages):
            found.append(messages)
    assert len(found) <= 1, f"{thread_id} is split over {len(found)} Zep threads"
    return found[0] if found else []


@pytest.mark.parametrize("fault", [
    Fault(method="POST", path=ADD, process_first=True, status=500, times=1),
    Fault(method="POST", path=ADD, process_first=True, latency_ms=3000, times=1),
    Fault(method="POST", path=ADD, process_first=True, reset=True, times=1),
], ids=["store-then-500", "store-then-timeout", "store-then-reset"])
def test_stored_then_failed_is_stored_once_though_zep_accepts_repeats(
    writer: Writer, sim: ZepSimulator, fault: Fault,
) -> None:
    """Zep v4 stores the add and the answer is lost: the retry finds the message and
    sends nothing, where a resend would store a second copy."""
    assert writer.deliver(payload("m-1")) == Done("stored")  # the thread exists now
    sim.add_fault(fault)
    first = writer.deliver(payload("m-2"))
    assert isinstance(first, Retry)
    assert writer.deliver(payload("m-2"), failures=1) == Done("stored")
    wait_for(lambda: len(sim.requests_carrying("m-2")) >= 1 or fault.reset, 10,
             "the stalled add to be logged")
    assert [m["content"] for m in stored(sim, "t-v4")] == ["Looking for a 2+1"] * 2
    assert len(sim.requests("POST", ADD)) == 2  # m-1 and the one add of m-2


def test_a_message_whose_chunks_partly_landed_converges_to_every_chunk_once_in_order(
    writer: Writer, zep: ZepV4Client, sim: ZepSimulator, conn: redis.Redis, keys: Any,
) -> None:
    """An earlier attempt stored chunks 1-2 of 5 and then failed: only 3-5 are sent."""
    content = "".join(f"word{i:05d} " for i in range(1100))  # 11,000 characters: 5 chunks
    message = payload("part", content=content)
    assert writer.deliver(payload("m-0")) == Done("stored")  # the thread exists
    zep.add_messages("t-v4", zep_messages(message)[:2])  # what the failed attempt stored
    conn.set(keys.write_attempted("part"), "1")  # ...and the mark its start left

    assert writer.deliver(message) == Done("stored")

    chunks = [m for m in stored(sim, "t-v4") if m["metadata"].get("client_msg_id") == "part"]
    assert [m["metadata"]["chunk"] for m in chunks] == [1, 2, 3, 4, 5]
    assert "".join(m["content"] for m in chunks) == content
    assert [accepted_adds_of(sim, "part", n) for n in range(1, 6)] == [1, 1, 1, 1, 1]


def accepted_adds_of(sim: ZepSimulator, client_msg_id: str, chunk: int) -> int:
    return sum(1 for r in sim.requests_carrying(client_msg_id, chunk)
               if r.status is not None and 200 <= r.status < 300)


def test_redis_flushed_between_two_writes_of_a_thread_still_gives_one_zep_thread(
    writer: Writer, zep: ZepV4Client, sim: ZepSimulator, conn: redis.Redis,
    read_settings: Settings, clock: FakeClock,
) -> None:
    """The mapping thread_id → Zep thread is lost with Redis; the next write finds the
    thread it already has in Zep instead of creating a second one."""
    assert writer.deliver(payload("f-1")) == Done("stored")
    conn.flushdb()
    # A new process: nothing cached in memory either.
    fresh_zep = ZepV4Client(sim.url, "test-key", conn)
    try:
        fresh = Writer(conn, dataclasses.replace(read_settings, zep_api_version="v4"),
                       fresh_zep, clock=clock, rand=upper)
        assert fresh.deliver(payload("f-2", content="second turn")) == Done("stored")
    finally:
        fresh_zep.close()
    assert [m["content"] for m in stored(sim, "t-v4")] == ["Looking for a 2+1", "second turn"]
    assert len(sim.threads_of()) == 1
    assert accepted_adds(sim, "f-1") == accepted_adds(sim, "f-2") == 1
