"""The Zep v4 client: the real zep-cloud SDK against the simulator over HTTP, real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from memory_worker.config import Settings
from memory_worker.errors import ConfigError, InvalidRequest
from memory_worker.keys import Keys
from memory_worker.zep import (
    Failure,
    Memory,
    OutgoingMessage,
    ReadResult,
    Reason,
    WriteStatus,
    Written,
    connect,
)
from memory_worker.zep_sim import Fault, ZepSimulator
from memory_worker.zep_v4 import PROBE_THREAD, ZepV4Client
from memory_worker.zep_v4_identity import user_key
from memory_worker.zep_v4_messages import facts_of, idempotency_key
from tests.processes import silent_redis

KEY = "test-key"
BUDGET = 0.25
WRITE_BUDGET = 1.0
SLACK = 0.025  # the contract: a read returns within its budget + 25 ms
NOW = 1_800_000_000.0
THREAD = "thread-1"
ADD = "/api/v4/threads/*/messages"
KEYS = Keys("mem:")
WORST: dict[str, float] = {}  # the slowest read seen per test, reported on failure


def client(sim: ZepSimulator, conn: redis.Redis, api_key: str = KEY) -> ZepV4Client:
    return ZepV4Client(sim.url, api_key, conn, keys=KEYS, read_budget_seconds=BUDGET,
                       write_budget_seconds=WRITE_BUDGET, now=lambda: NOW)


@pytest.fixture
def zep(sim: ZepSimulator, conn: redis.Redis) -> Iterator[ZepV4Client]:
    made = client(sim, conn)
    yield made
    made.close()


def said(client_msg_id: str, content: str = "hello", chunk: int = 1, chunks: int = 1,
         role: str = "user") -> OutgoingMessage:
    return OutgoingMessage(uuid=f"{client_msg_id}-{chunk}", role=role, role_type=role,
                           content=content, metadata={"client_msg_id": client_msg_id,
                                                      "chunk": chunk, "chunks": chunks})


def failure(result: object) -> Failure:
    assert isinstance(result, Failure), result
    return result


def written(zep: ZepV4Client, thread_id: str = THREAD, user_id: str | None = "alice",
            *messages: OutgoingMessage) -> str:
    """A thread with ``messages`` in it, made the way the writer makes it; its uuid."""
    assert isinstance(zep.add_session(thread_id, user_id), Written)
    for message in messages:
        assert zep.add_messages(thread_id, [message]) == Written(WriteStatus.STORED)
    mapped = zep._ids.thread(thread_id, time.monotonic() + 1)
    assert mapped is not None
    return mapped


def wait_until(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    """Wait for a positive signal, failing when it never comes."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


Read = Callable[..., ReadResult]


@pytest.fixture(params=["sync", "async"])
def read(request: pytest.FixtureRequest, zep: ZepV4Client) -> Iterator[Read]:
    """Read the way the parameter says (blocking, or on an event loop), timing the read.

    The clients are built first, as in a process that has read before: building one
    (its TLS context above all) is paid once per process and once per event loop.
    """

    def timed(started: float) -> None:
        name = request.node.name
        WORST[name] = max(WORST.get(name, 0.0), time.monotonic() - started)

    zep._clients.sync()
    if request.param == "sync":
        def blocking(thread_id: str, view: str | None = "summary", lastn: int = 4,
                     budget: float | None = None) -> ReadResult:
            started = time.monotonic()
            try:
                return zep.get_memory(thread_id, lastn, budget, view)
            finally:
                timed(started)
        yield blocking
        return

    loop = asyncio.new_event_loop()

    async def built() -> None:
        zep._clients.for_loop()

    async def on_loop(thread_id: str, view: str | None, lastn: int,
                      budget: float | None) -> ReadResult:
        started = time.monotonic()
        try:
            return await zep.aget_memory(thread_id, lastn, budget, view)
        finally:
            timed(started)

    def run(thread_id: str, view: str | None = "summary", lastn: int = 4,
            budget: float | None = None) -> ReadResult:
        return loop.run_until_complete(on_loop(thread_id, view, lastn, budget))

    loop.run_until_complete(built())
    try:
        yield run
    finally:
        loop.run_until_complete(zep.aclose())
        loop.close()


def elapsed_of(request: pytest.FixtureRequest) -> float:
    return WORST[request.node.name]


# identity: users, threads and the mapping


def test_a_first_write_asks_for_the_thread_which_add_session_creates_and_maps(
    sim: ZepSimulator, zep: ZepV4Client, conn: redis.Redis
) -> None:
    """No mapping: session_not_found without a request; then a user, a thread, a durable key."""
    missing = failure(zep.add_messages(THREAD, [said("c1")]))
    assert missing.reason == Reason.SESSION_NOT_FOUND
    assert sim.requests() == []
    assert zep.add_session(THREAD, "alice") == Written(WriteStatus.CREATED)
    [thread] = sim.threads_of(user_id="alice")
    assert conn.get(KEYS.zep_thread(THREAD)) == thread["uuid"]
    assert conn.ttl(KEYS.zep_thread(THREAD)) == -1
    assert conn.get(KEYS.zep_user("alice")) == thread["user_uuid"]
    assert zep.add_messages(THREAD, [said("c1")]) == Written(WriteStatus.STORED)
    [stored] = sim.thread_messages(thread["uuid"])
    assert (stored["role"], stored["name"], stored["content"]) == ("user", "user", "hello")
    assert stored["metadata"] == {"client_msg_id": "c1", "chunk": 1, "chunks": 1,
                                  "thread_id": THREAD}


def test_the_steady_state_costs_no_extra_round_trip(sim: ZepSimulator, zep: ZepV4Client) -> None:
    """Once mapped, a write is one request and a recent read one request."""
    written(zep)
    sim.reset_requests()
    zep.add_messages(THREAD, [said("c1")])
    assert isinstance(zep.get_memory(THREAD, 4, view="recent"), Memory)
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in sim.requests()] == [
        ("POST", "messages"), ("GET", "messages")]


def test_a_thread_without_a_user_id_gets_a_user_of_its_own(
    sim: ZepSimulator, zep: ZepV4Client
) -> None:
    """The per-thread user is ``memory-worker-thread:{thread_id}``, hashed when too long."""
    assert zep.add_session(THREAD) == Written(WriteStatus.CREATED)
    assert len(sim.threads_of(user_id=f"memory-worker-thread:{THREAD}")) == 1
    long_id = "t" * 256
    assert zep.add_session(long_id) == Written(WriteStatus.CREATED)
    hashed = user_key(long_id, None)
    assert hashed.startswith("memory-worker-thread-sha256:") and len(hashed) <= 256
    assert len(sim.threads_of(user_id=hashed)) == 1


def test_an_existing_user_is_looked_up_not_duplicated(sim: ZepSimulator, zep: ZepV4Client) -> None:
    """A 409 on create means the user exists: lookup gives its uuid."""
    first = httpx.post(f"{sim.url}/api/v4/users", json={"user_id": "alice"},
                       headers={"Authorization": f"Api-Key {KEY}"}).json()
    assert zep.add_user("alice") == Written(WriteStatus.ALREADY_EXISTS)
    assert zep.add_session(THREAD, "alice") == Written(WriteStatus.CREATED)
    assert sim.threads_of(user_id="alice")[0]["user_uuid"] == first["uuid"]
    assert zep.add_user("bob") == Written(WriteStatus.CREATED)


def test_two_processes_creating_one_thread_at_once_make_one_zep_thread(
    sim: ZepSimulator, conn: redis.Redis
) -> None:
    """The creation lock: whoever loses waits for the winner's mapping."""
    sim.add_fault(Fault(method="POST", path="/api/v4/threads", latency_ms=100))
    workers = [client(sim, conn) for _ in range(4)]
    for zep in workers:
        zep._clients.sync()  # built, as in processes that have written before
    start = threading.Barrier(len(workers))

    def create(zep: ZepV4Client) -> object:
        start.wait()
        return zep.add_session(THREAD, "alice")

    try:
        with ThreadPoolExecutor(len(workers)) as pool:
            outcomes = list(pool.map(create, workers))
        mapped = {zep._ids.thread(THREAD, time.monotonic() + 1) for zep in workers}
    finally:
        for zep in workers:
            zep.close()
    assert sorted(str(o) for o in outcomes) == sorted(
        [str(Written(WriteStatus.CREATED))] + [str(Written(WriteStatus.ALREADY_EXISTS))] * 3)
    [thread] = sim.threads_of(user_id="alice")
    assert mapped == {thread["uuid"]}
    assert len(sim.requests("POST", "/api/v4/threads")) == 1


def test_after_redis_loses_the_mapping_the_next_write_finds_its_thread(
    sim: ZepSimulator, zep: ZepV4Client, conn: redis.Redis
) -> None:
    """Redis flushed between two writes: still one Zep thread, both messages in it."""
    thread_uuid = written(zep, THREAD, "alice", said("c1", "first"))
    conn.flushdb()
    sim.reset_requests()
    again = client(sim, conn)  # another process: nothing cached
    try:
        assert failure(again.add_messages(THREAD, [said("c2")])).reason == (
            Reason.SESSION_NOT_FOUND)
        assert again.add_session(THREAD, "alice") == Written(WriteStatus.ALREADY_EXISTS)
        assert again.add_messages(THREAD, [said("c2", "second")]) == Written(WriteStatus.STORED)
    finally:
        again.close()
    assert [t["uuid"] for t in sim.threads_of(user_id="alice")] == [thread_uuid]
    assert [m["content"] for m in sim.thread_messages(thread_uuid)] == ["first", "second"]
    assert conn.get(KEYS.zep_thread(THREAD)) == thread_uuid
    assert sim.requests("POST", "/api/v4/threads") == []


def test_a_rebuild_reads_each_of_a_users_threads_once(
    sim: ZepSimulator, zep: ZepV4Client, conn: redis.Redis
) -> None:
    """Every first message read is remembered for its own thread_id too."""
    uuids = {f"t-{i}": written(zep, f"t-{i}", "alice", said(f"c{i}")) for i in range(3)}
    conn.flushdb()
    sim.reset_requests()
    again = client(sim, conn)
    try:
        for thread_id in uuids:
            assert again.add_session(thread_id, "alice") == Written(WriteStatus.ALREADY_EXISTS)
    finally:
        again.close()
    firsts = [r for r in sim.requests("GET", ADD) if "page_size=1&" in r.query]
    assert len(firsts) == 3
    assert {t: conn.get(KEYS.zep_thread(t)) for t in uuids} == uuids


def test_a_thread_migrated_from_an_older_api_is_found_by_lookup(
    sim: ZepSimulator, zep: ZepV4Client, conn: redis.Redis
) -> None:
    """``thread.lookup`` resolves a migrated thread's developer id: nothing is created."""
    migrated = sim.add_migrated_thread("alice", THREAD)
    assert zep.add_session(THREAD, "alice") == Written(WriteStatus.ALREADY_EXISTS)
    assert conn.get(KEYS.zep_thread(THREAD)) == migrated["uuid"]
    assert sim.requests("POST", "/api/v4/threads") == []


def test_a_thread_zep_no_longer_has_is_forgotten_and_made_again(
    sim: ZepSimulator, zep: ZepV4Client, conn: redis.Redis
) -> None:
    """A 404 for a mapped uuid: forgotten (Redis and cache), add_session resolves afresh."""
    old = written(zep, THREAD, "alice", said("c1"))
    httpx.delete(f"{sim.url}/api/v4/threads/{old}", headers={"Authorization": f"Api-Key {KEY}"})
    result = failure(zep.add_messages(THREAD, [said("c2")]))
    assert (result.reason, result.status_code) == (Reason.SESSION_NOT_FOUND, 404)
    wait_until(lambda: conn.get(KEYS.zep_thread(THREAD)) is None)
    assert zep.add_session(THREAD, "alice") == Written(WriteStatus.CREATED)
    assert zep.add_messages(THREAD, [said("c2")]) == Written(WriteStatus.STORED)
    [thread] = sim.threads_of(user_id="alice")
    assert thread["uuid"] != old and conn.get(KEYS.zep_thread(THREAD)) == thread["uuid"]


def test_a_read_of_a_thread_zep_no_longer_has_is_not_found_and_forgets_it(
    sim: ZepSimulator, zep: ZepV4Client, conn: redis.Redis, read: Read
) -> None:
    """Reads answer not_found for a stale uuid and drop it."""
    old = written(zep, THREAD, "alice", said("c1"))
    httpx.delete(f"{sim.url}/api/v4/threads/{old}", headers={"Authorization": f"Api-Key {KEY}"})
    result = failure(read(THREAD, "recent"))
    assert (result.reason, result.status_code) == (Reason.NOT_FOUND, 404)
    wait_until(lambda: conn.get(KEYS.zep_thread(THREAD)) is None)
    sim.reset_requests()
    assert failure(read(THREAD, "recent")).reason == Reason.NOT_FOUND
    assert sim.requests() == []


def test_a_read_of_an_unmapped_thread_is_not_found_without_a_request(
    sim: ZepSimulator, read: Read
) -> None:
    """No mapping: not_found, and Zep is not asked."""
    assert failure(read("never-written")).reason == Reason.NOT_FOUND
    assert sim.requests() == []


# reads: views


def seeded(sim: ZepSimulator, zep: ZepV4Client) -> str:
    thread_uuid = written(zep, THREAD, "alice",
                          *(said(f"c{i}", f"turn {i}", role=("user", "assistant")[i % 2])
                            for i in range(6)))
    sim.seed_thread(thread_uuid, summary="They talked.", facts=["Alice likes tea",
                                                               "Bob plays chess"])
    sim.reset_requests()
    return thread_uuid


def test_the_summary_view_holds_context_summary_and_the_last_messages(
    sim: ZepSimulator, zep: ZepV4Client, read: Read
) -> None:
    """Three calls at once: context, summary, the last 4 messages (oldest first)."""
    thread_uuid = seeded(sim, zep)
    memory = read(THREAD, "summary")
    assert isinstance(memory, Memory)
    assert memory.summary == "They talked."
    assert memory.context is not None and "Alice likes tea" in memory.context
    assert memory.facts == ("Alice likes tea", "Bob plays chess")
    assert memory.messages == tuple(
        {"role": r, "role_type": r, "content": f"turn {i}"}
        for i, r in ((i, ("user", "assistant")[i % 2]) for i in range(2, 6)))
    assert [m["client_msg_id"] for m in memory.metadata if m] == ["c2", "c3", "c4", "c5"]
    assert sorted((r.path, r.query) for r in sim.requests()) == [
        (f"/api/v4/threads/{thread_uuid}/context", ""),
        (f"/api/v4/threads/{thread_uuid}/messages", "page_size=4&order_by=created_at&order=desc"),
        (f"/api/v4/threads/{thread_uuid}/summary", ""),
    ]


def test_no_view_reads_like_the_summary_view(
    sim: ZepSimulator, zep: ZepV4Client, read: Read
) -> None:
    seeded(sim, zep)
    memory = read(THREAD, None)
    assert isinstance(memory, Memory) and memory.summary == "They talked."
    assert len(sim.requests()) == 3


def test_the_recent_view_is_one_call_for_the_last_messages(
    sim: ZepSimulator, zep: ZepV4Client, read: Read
) -> None:
    """One list, newest first, turned oldest first."""
    thread_uuid = seeded(sim, zep)
    memory = read(THREAD, "recent", 5)
    assert isinstance(memory, Memory)
    assert [m["content"] for m in memory.messages] == [f"turn {i}" for i in range(1, 6)]
    assert (memory.summary, memory.context) == (None, None)
    assert [(r.path, r.query) for r in sim.requests()] == [
        (f"/api/v4/threads/{thread_uuid}/messages", "page_size=5&order_by=created_at&order=desc")]


def test_the_facts_view_is_the_context_blocks_facts(
    sim: ZepSimulator, zep: ZepV4Client, read: Read
) -> None:
    """One call, get_context; its facts section split into items."""
    thread_uuid = seeded(sim, zep)
    memory = read(THREAD, "facts")
    assert isinstance(memory, Memory)
    assert memory.facts == ("Alice likes tea", "Bob plays chess")
    assert memory.messages == ()
    assert [r.path for r in sim.requests()] == [f"/api/v4/threads/{thread_uuid}/context"]


def test_facts_are_read_from_zeps_tagged_context_block() -> None:
    """Zep's own block: items between <FACTS> tags, their date ranges cut."""
    block = (
        "FACTS and ENTITIES represent relevant context to the current conversation.\n\n"
        "# These are the most relevant facts and their valid date ranges\n"
        "<FACTS>\n"
        "  - Alice likes tea. (2024-11-14 02:13:19+00:00 - present)\n"
        "  - Bob moved to Nicosia. (Date range: 2023-01-01 - 2024-02-02)\n"
        "</FACTS>\n\n<ENTITIES>\n  - Alice: a person\n</ENTITIES>\n"
    )
    assert facts_of(block) == ("Alice likes tea.", "Bob moved to Nicosia.")
    assert facts_of("SUMMARY:\nnothing") == ()
    assert facts_of(None) == ()


def test_the_summary_views_calls_are_made_at_once_within_one_budget(
    sim: ZepSimulator, zep: ZepV4Client, read: Read, request: pytest.FixtureRequest
) -> None:
    """Each call takes 150 ms: one after another they would overrun 250 ms, together not."""
    seeded(sim, zep)
    sim.add_fault(Fault(method="GET", path="/api/v4/threads/*", latency_ms=150))
    memory = read(THREAD, "summary")
    assert isinstance(memory, Memory) and memory.summary == "They talked."
    assert 0.15 <= elapsed_of(request) <= BUDGET + SLACK
    assert len(sim.requests()) == 3


def test_a_synchronous_reads_calls_are_made_without_a_hop_to_a_call_thread(
    sim: ZepSimulator, zep: ZepV4Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call (recent) is made in the reader's thread, several (summary) each in the
    waiter thread that runs it: never handed on again to a call thread."""
    seeded(sim, zep)

    def no_hop(*args: object) -> None:
        raise AssertionError("a read's call was handed to a call thread")

    monkeypatch.setattr("memory_worker.zep_v4.call_on_pool", no_hop)
    assert isinstance(zep.get_memory(THREAD, 4, view="recent"), Memory)
    assert isinstance(zep.get_memory(THREAD, 4, view="summary"), Memory)


# requests: retries off, the Idempotency-Key


@pytest.mark.parametrize("fault", [Fault(method="POST", path=ADD, status=500),
                                   Fault(method="POST", path=ADD, status=503),
                                   Fault(method="POST", path=ADD, drop=True)],
                         ids=["500", "503", "drop"])
def test_the_sdk_sends_each_request_once(
    sim: ZepSimulator, zep: ZepV4Client, fault: Fault
) -> None:
    """The SDK's own retries are off: one failed add is one request."""
    written(zep)
    sim.reset_requests()
    sim.add_fault(fault)
    assert isinstance(zep.add_messages(THREAD, [said("c1")]), Failure)
    assert len(sim.requests_carrying("c1")) == 1


def test_a_read_that_fails_is_one_request(sim: ZepSimulator, zep: ZepV4Client) -> None:
    written(zep)
    sim.reset_requests()
    sim.add_fault(Fault(method="GET", status=502))
    assert failure(zep.get_memory(THREAD, 4, view="recent")).reason == Reason.SERVER_ERROR
    assert len(sim.requests()) == 1


def test_the_idempotency_key_is_derived_and_the_same_on_every_attempt(
    sim: ZepSimulator, zep: ZepV4Client
) -> None:
    """Stored then failed: the resend carries the same key; another chunk range another."""
    written(zep)
    sim.add_fault(Fault(method="POST", path=ADD, status=500, process_first=True, times=1))
    first = [said("c1", chunk=1, chunks=3), said("c1", chunk=2, chunks=3)]
    assert failure(zep.add_messages(THREAD, first)).reason == Reason.SERVER_ERROR
    assert zep.add_messages(THREAD, first) == Written(WriteStatus.STORED)
    assert zep.add_messages(THREAD, [said("c1", chunk=3, chunks=3)]) == Written(
        WriteStatus.STORED)
    keys = [r.idempotency_key for r in sim.requests_carrying("c1")]
    assert keys[0] == keys[1] == idempotency_key(first)
    assert keys[0] == str(uuid.UUID(keys[0])) and keys[2] != keys[0]


def test_a_2xx_is_stored_even_for_a_repeat(sim: ZepSimulator, zep: ZepV4Client) -> None:
    """v4 refuses no repeat: both adds are ``stored`` (``landed`` is the writer's check)."""
    thread_uuid = written(zep, THREAD, "alice", said("c1"))
    assert zep.add_messages(THREAD, [said("c1")]) == Written(WriteStatus.STORED)
    assert len(sim.thread_messages(thread_uuid)) == 2


# failures


WRITE_FAULTS = [
    (Fault(status=401), Reason.AUTH, 401),
    (Fault(status=403), Reason.AUTH, 403),
    (Fault(status=404), Reason.SESSION_NOT_FOUND, 404),
    (Fault(status=408), Reason.TIMEOUT, 408),
    (Fault(status=500), Reason.SERVER_ERROR, 500),
    (Fault(status=502, raw_body="<html>bad gateway</html>"), Reason.SERVER_ERROR, 502),
    (Fault(status=202, raw_body="not json"), Reason.SERVER_ERROR, 202),
    (Fault(status=400), Reason.CLIENT_ERROR, 400),
    (Fault(status=422), Reason.CLIENT_ERROR, 422),
    (Fault(drop=True), Reason.CONNECTION_ERROR, None),
    (Fault(reset=True), Reason.CONNECTION_ERROR, None),
    (Fault(latency_ms=3000), Reason.TIMEOUT, None),
]
IDS = ["401", "403", "404", "408", "500", "502-raw", "2xx-raw", "400", "422", "drop", "reset",
       "stall"]


@pytest.mark.parametrize(("fault", "reason", "status"), WRITE_FAULTS, ids=IDS)
def test_each_failed_write_has_the_v2_reason_and_status(
    sim: ZepSimulator, zep: ZepV4Client, fault: Fault, reason: Reason, status: int | None
) -> None:
    """The write table of SPEC §6, as on v2."""
    written(zep)
    sim.add_fault(dataclasses.replace(fault, method="POST", path=ADD))
    started = time.monotonic()
    result = failure(zep.add_messages(THREAD, [said("c1")], budget_seconds=0.3))
    assert time.monotonic() - started <= 0.3 + SLACK
    assert (result.reason, result.status_code) == (reason, status)


@pytest.mark.parametrize(("fault", "reason", "status"), WRITE_FAULTS, ids=IDS)
def test_each_failed_read_has_the_v2_reason_and_status(
    sim: ZepSimulator, zep: ZepV4Client, read: Read, fault: Fault, reason: Reason,
    status: int | None,
) -> None:
    """The read table of SPEC §5, as on v2 (a 404 is ``not_found``)."""
    written(zep)
    if status == 202:
        fault = dataclasses.replace(fault, status=200)
        status = 200
    sim.add_fault(dataclasses.replace(fault, method="GET"))
    result = failure(read(THREAD, "recent"))
    expected = Reason.NOT_FOUND if reason is Reason.SESSION_NOT_FOUND else reason
    assert (result.reason, result.status_code) == (expected, status)


@pytest.mark.parametrize(("retry_after", "seconds"),
                         [("7", 7.0), (None, 5.0), ("86400", 300.0), ("soon", 5.0)],
                         ids=["seconds", "absent", "capped", "garbage"])
def test_a_429_says_how_long_to_wait(
    sim: ZepSimulator, zep: ZepV4Client, read: Read, retry_after: str | None, seconds: float
) -> None:
    """Retry-After from the SDK's error headers, read as on v2."""
    written(zep)
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    sim.add_fault(Fault(status=429, headers=headers))
    for result in (read(THREAD, "summary"), zep.add_messages(THREAD, [said("c1")])):
        assert (failure(result).reason, failure(result).status_code) == (Reason.RATE_LIMITED, 429)
        assert failure(result).retry_after_seconds == pytest.approx(seconds)


def test_a_wrong_key_is_auth_and_is_never_shown(sim: ZepSimulator, conn: redis.Redis) -> None:
    """401 on every call; the key is in no repr and no outcome."""
    wrong = client(sim, conn, api_key="wrong-key-123")
    try:
        outcomes = [wrong.add_session(THREAD, "alice"), wrong.probe(),
                    wrong.add_user("alice")]
    finally:
        wrong.close()
    for outcome in outcomes:
        assert (failure(outcome).reason, failure(outcome).status_code) == (Reason.AUTH, 401)
        assert "wrong-key-123" not in repr(outcome)
    assert "wrong-key-123" not in repr(wrong) and "wrong-key-123" not in repr(wrong._clients)


def test_a_refused_connection_is_a_connection_error(conn: redis.Redis) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    zep = ZepV4Client(f"http://127.0.0.1:{port}", KEY, conn, keys=KEYS)
    try:
        result = failure(zep.add_session(THREAD, "alice"))
    finally:
        zep.close()
    assert (result.reason, result.status_code) == (Reason.CONNECTION_ERROR, None)


# deadlines


DEADLINE_FAULTS = [
    Fault(method="GET", trickle_bytes=1, trickle_interval_ms=20),
    Fault(method="GET", latency_ms=3000),
    Fault(method="GET", trickle_bytes=1, trickle_interval_ms=3000),
    Fault(method="GET", latency_ms=150, reset=True),
]


@pytest.mark.parametrize("view", ["summary", "recent", "facts"])
@pytest.mark.parametrize("fault", DEADLINE_FAULTS,
                         ids=["trickle", "stall", "headers-then-trickle", "late-reset"])
def test_a_read_returns_within_its_budget_whatever_the_server_does(
    sim: ZepSimulator, zep: ZepV4Client, read: Read, fault: Fault, view: str,
    request: pytest.FixtureRequest,
) -> None:
    """A timeout (or the reset's connection error) within budget + 25 ms, sync and async."""
    written(zep, THREAD, "alice", said("c1"))
    sim.add_fault(fault)
    result = failure(read(THREAD, view))
    assert result.reason in (Reason.TIMEOUT, Reason.CONNECTION_ERROR)
    assert elapsed_of(request) <= BUDGET + SLACK, elapsed_of(request)


def test_a_mapping_lookup_that_would_outlast_the_budget_is_a_timeout(
    sim: ZepSimulator, request: pytest.FixtureRequest
) -> None:
    """Redis that never answers: the read is a timeout within its budget, sync and async."""
    with silent_redis() as url:
        hung = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
        zep = ZepV4Client(sim.url, KEY, hung, keys=KEYS, read_budget_seconds=BUDGET)

        async def on_loop() -> ReadResult:
            return await zep.aget_memory(THREAD, 4)

        try:
            readings: list[Callable[[], ReadResult]] = [
                lambda: zep.get_memory(THREAD, 4), lambda: asyncio.run(on_loop())]
            for reading in readings:
                started = time.monotonic()
                result = failure(reading())
                assert time.monotonic() - started <= BUDGET + SLACK
                assert result.reason == Reason.TIMEOUT
        finally:
            zep.close()
    assert sim.requests() == []


def test_a_write_to_a_stalled_zep_ends_within_the_write_budget(
    sim: ZepSimulator, zep: ZepV4Client
) -> None:
    written(zep)
    sim.add_fault(Fault(method="POST", path=ADD, trickle_bytes=1, trickle_interval_ms=3000))
    started = time.monotonic()
    assert failure(zep.add_messages(THREAD, [said("c1")])).reason == Reason.TIMEOUT
    assert time.monotonic() - started <= WRITE_BUDGET + SLACK


# landed and the probe


def test_landed_finds_the_chunks_of_a_message(sim: ZepSimulator, zep: ZepV4Client) -> None:
    """The chunks of one client_msg_id among the latest messages; others' are not counted."""
    written(zep, THREAD, "alice", said("c1", chunk=1, chunks=3), said("c2"),
            said("c1", chunk=3, chunks=3))
    assert zep.landed(THREAD, "c1") == frozenset({1, 3})
    assert zep.landed(THREAD, "c9") == frozenset()


def test_landed_of_an_unknown_or_deleted_thread_is_nothing(
    sim: ZepSimulator, zep: ZepV4Client
) -> None:
    assert zep.landed("never-written", "c1") == frozenset()
    assert sim.requests() == []
    old = written(zep, THREAD, "alice", said("c1"))
    httpx.delete(f"{sim.url}/api/v4/threads/{old}", headers={"Authorization": f"Api-Key {KEY}"})
    assert zep.landed(THREAD, "c1") == frozenset()


def test_landed_reports_a_failure(sim: ZepSimulator, zep: ZepV4Client) -> None:
    written(zep, THREAD, "alice", said("c1"))
    sim.add_fault(Fault(method="GET", status=503))
    assert failure(zep.landed(THREAD, "c1")).reason == Reason.SERVER_ERROR


def test_the_probe_is_one_request_and_a_404_is_an_answer(
    sim: ZepSimulator, zep: ZepV4Client
) -> None:
    zep._clients.sync()  # built, as in a process that has called Zep before
    assert zep.probe() is None
    assert [(r.method, r.path, r.status) for r in sim.requests()] == [
        ("GET", f"/api/v4/threads/{PROBE_THREAD}", 404)]
    sim.reset_requests()
    sim.add_fault(Fault(status=503))
    assert failure(zep.probe()).reason == Reason.SERVER_ERROR
    assert len(sim.requests()) == 1


# arguments and construction


@pytest.mark.parametrize("thread_id", ["", "a/b", "..", "x" * 257, "é"])
def test_unsafe_ids_are_refused_before_any_request(
    sim: ZepSimulator, zep: ZepV4Client, thread_id: str
) -> None:
    for call in (lambda: zep.get_memory(thread_id, 1), lambda: zep.add_session(thread_id),
                 lambda: zep.add_messages(thread_id, [said("c1")]),
                 lambda: zep.landed(thread_id, "c1"),
                 lambda: asyncio.run(zep.aget_memory(thread_id, 1))):
        with pytest.raises(InvalidRequest):
            call()
    assert sim.requests() == []


def test_a_message_with_an_unknown_role_is_refused(zep: ZepV4Client) -> None:
    with pytest.raises(InvalidRequest):
        zep.add_messages(THREAD, [said("c1", role="narrator")])


def test_connect_builds_the_v4_client_from_settings(
    sim: ZepSimulator, conn: redis.Redis, settings: Settings
) -> None:
    """ZEP_API_VERSION=v4: budgets in ms, the key prefix, the key out of the repr."""
    chosen = dataclasses.replace(settings, zep_api_version="v4", zep_api_url=sim.url,
                                 read_timeout_ms=200, zep_timeout_ms=900, probe_timeout_ms=100,
                                 key_prefix="other:")
    zep = connect(chosen, conn)
    try:
        assert isinstance(zep, ZepV4Client)
        assert (zep.read_budget_seconds, zep.write_budget_seconds,
                zep.probe_budget_seconds) == (0.2, 0.9, 0.1)
        assert KEY not in repr(zep)
        assert zep.add_session(THREAD, "alice") == Written(WriteStatus.CREATED)
        assert conn.get(f"other:zep:v4:thread:{THREAD}") is not None
    finally:
        zep.close()


@pytest.mark.parametrize(("missing", "variable"),
                         [("zep_api_url", "ZEP_API_URL"), ("zep_api_key", "ZEP_API_KEY")])
def test_settings_without_url_or_key_cannot_build_a_client(
    conn: redis.Redis, missing: str, variable: str
) -> None:
    given: dict[str, str | None] = {"zep_api_url": "http://127.0.0.1:9", "zep_api_key": KEY}
    given[missing] = None
    settings = Settings(zep_api_url=given["zep_api_url"], zep_api_key=given["zep_api_key"])
    with pytest.raises(ConfigError) as excinfo:
        ZepV4Client.from_settings(settings, conn)
    assert excinfo.value.variable == variable
