"""The Zep adapter: every outcome of the real SDK against the simulator, in project terms."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest

from memory_worker.config import Settings
from memory_worker.errors import ConfigError, InvalidRequest
from memory_worker.zep import (
    Failure,
    Memory,
    OutgoingMessage,
    ReadResult,
    Reason,
    WriteStatus,
    Written,
    ZepClient,
)
from memory_worker.zep_sim import Fault, ZepSimulator

KEY = "test-key"
BUDGET = 0.25
SLACK = 0.025  # the contract: a call returns within its budget + 25 ms
NOW = 1_800_000_000.0
THREAD = "thread-1"


@pytest.fixture
def sim() -> Iterator[ZepSimulator]:
    with ZepSimulator(api_key=KEY) as simulator:
        yield simulator


@pytest.fixture
def zep(sim: ZepSimulator) -> Iterator[ZepClient]:
    client = ZepClient(sim.url, KEY, read_budget_seconds=BUDGET, write_budget_seconds=1.0,
                       now=lambda: NOW)
    yield client
    client.close()


@pytest.fixture(params=["sync", "async"])
def read(request: pytest.FixtureRequest, zep: ZepClient) -> Callable[[str], ReadResult]:
    """Read a thread's memory the way the parameter says: blocking, or on an event loop."""
    if request.param == "sync":
        return lambda thread_id: zep.get_memory(thread_id, lastn=4)

    async def on_loop(thread_id: str) -> ReadResult:
        try:
            return await zep.aget_memory(thread_id, lastn=4)
        finally:
            await zep.aclose()

    return lambda thread_id: asyncio.run(on_loop(thread_id))


def outgoing(uuid: str, content: str = "hello") -> OutgoingMessage:
    return OutgoingMessage(uuid=uuid, role="alice", role_type="user", content=content,
                           metadata={"client_msg_id": uuid})


def failure(result: object) -> Failure:
    assert isinstance(result, Failure), result
    return result


# reads


def test_a_read_returns_summary_context_messages_oldest_first_and_facts(
    sim: ZepSimulator, zep: ZepClient, read: Callable[[str], ReadResult]
) -> None:
    """A session's memory comes back in project terms."""
    sim.ensure_session(THREAD)
    zep.add_messages(THREAD, [outgoing(f"m-{i}", f"turn {i}") for i in range(6)])
    sim.seed(THREAD, summary="They talked.", facts=["Alice likes tea"])
    memory = read(THREAD)
    assert isinstance(memory, Memory)
    assert memory.summary == "They talked."
    assert memory.context is not None and "Alice likes tea" in memory.context
    assert memory.facts == ("Alice likes tea",)
    assert memory.messages == tuple(
        {"role": "alice", "role_type": "user", "content": f"turn {i}"} for i in range(2, 6)
    )


def test_a_read_of_an_unknown_session_is_not_found(read: Callable[[str], ReadResult]) -> None:
    """A 404 is ``not_found`` with its status."""
    result = failure(read("thread-404"))
    assert (result.reason, result.status_code) == (Reason.NOT_FOUND, 404)


def test_a_read_with_a_wrong_key_is_an_auth_failure(sim: ZepSimulator) -> None:
    """A 401 is ``auth``, and neither the key nor the outcome mentions it."""
    wrong = ZepClient(sim.url, "wrong-key")
    try:
        result = failure(wrong.get_memory(THREAD, lastn=4))
    finally:
        wrong.close()
    assert (result.reason, result.status_code) == (Reason.AUTH, 401)
    assert "wrong-key" not in repr(result) and "wrong-key" not in repr(wrong)


@pytest.mark.parametrize(
    ("fault", "reason", "status"),
    [
        (Fault(status=403), Reason.AUTH, 403),
        (Fault(status=408), Reason.TIMEOUT, 408),
        (Fault(status=500), Reason.SERVER_ERROR, 500),
        (Fault(status=503), Reason.SERVER_ERROR, 503),
        (Fault(status=502, raw_body="<html>bad gateway</html>"), Reason.SERVER_ERROR, 502),
        (Fault(status=500, raw_body="oops"), Reason.SERVER_ERROR, 500),
        (Fault(status=200, raw_body="not json"), Reason.SERVER_ERROR, 200),
        (Fault(status=404, raw_body="<html>no</html>"), Reason.NOT_FOUND, 404),
        (Fault(status=400), Reason.CLIENT_ERROR, 400),
        (Fault(status=422), Reason.CLIENT_ERROR, 422),
        (Fault(drop=True), Reason.CONNECTION_ERROR, None),
        (Fault(reset=True), Reason.CONNECTION_ERROR, None),
        (Fault(latency_ms=2000), Reason.TIMEOUT, None),
    ],
    ids=["403", "408", "500", "503", "502-raw", "500-raw", "200-raw", "404-raw", "400", "422",
         "drop", "reset", "latency"],
)
def test_each_failed_read_has_its_reason_and_status(
    sim: ZepSimulator,
    read: Callable[[str], ReadResult],
    fault: Fault,
    reason: Reason,
    status: int | None,
) -> None:
    """Every row of the read table, through the real SDK."""
    sim.ensure_session(THREAD)
    sim.add_fault(fault)
    result = failure(read(THREAD))
    assert (result.reason, result.status_code) == (reason, status)


def test_a_read_from_a_port_nobody_listens_on_is_a_connection_error() -> None:
    """A refused connection is ``connection_error``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    zep = ZepClient(f"http://127.0.0.1:{port}", KEY)
    try:
        result = failure(zep.get_memory(THREAD, lastn=4))
    finally:
        zep.close()
    assert (result.reason, result.status_code) == (Reason.CONNECTION_ERROR, None)


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [
        ("7", 7.0),
        (formatdate(NOW + 42, usegmt=True), 42.0),
        (formatdate(NOW - 42, usegmt=True), 0.0),
        ("86400", 300.0),
        (None, 5.0),
        ("soon", 5.0),
    ],
    ids=["seconds", "http-date", "date-past", "capped", "absent", "garbage"],
)
def test_a_rate_limited_read_says_how_long_to_wait(
    sim: ZepSimulator,
    read: Callable[[str], ReadResult],
    retry_after: str | None,
    seconds: float,
) -> None:
    """A 429 carries ``Retry-After`` in seconds or as an HTTP-date, capped at 300, else 5."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    sim.add_fault(Fault(status=429, headers=headers))
    result = failure(read(THREAD))
    assert (result.reason, result.status_code) == (Reason.RATE_LIMITED, 429)
    assert result.retry_after_seconds == pytest.approx(seconds)


def test_concurrent_calls_each_see_their_own_retry_after(sim: ZepSimulator, zep: ZepClient) -> None:
    """Headers are recorded per call, from many threads and many tasks at once."""
    for i in range(12):
        sim.add_fault(Fault(path=f"*/t-{i}/memory", status=429, headers={"Retry-After": str(i)}))
    with ThreadPoolExecutor(12) as threads:
        from_threads = list(threads.map(lambda i: zep.get_memory(f"t-{i}", lastn=1), range(12)))

    async def on_loop() -> list[ReadResult]:
        try:
            return list(await asyncio.gather(
                *(zep.aget_memory(f"t-{i}", lastn=1) for i in range(12))
            ))
        finally:
            await zep.aclose()

    from_tasks = asyncio.run(on_loop())
    for results in (from_threads, from_tasks):
        assert [failure(r).retry_after_seconds for r in results] == [float(i) for i in range(12)]


# the total deadline


@pytest.mark.parametrize(
    "fault",
    [
        Fault(trickle_bytes=1, trickle_interval_ms=20),
        Fault(latency_ms=5000),
        Fault(trickle_bytes=1, trickle_interval_ms=5000),
    ],
    ids=["trickle", "stall", "headers-then-stall"],
)
def test_a_read_returns_within_its_budget_whatever_the_server_does(
    sim: ZepSimulator, read: Callable[[str], ReadResult], fault: Fault
) -> None:
    """Against a trickling or stalled server, the read is a timeout within budget + 25 ms."""
    sim.ensure_session(THREAD)
    sim.add_fault(fault)
    started = time.monotonic()
    result = read(THREAD)
    elapsed = time.monotonic() - started
    assert failure(result).reason == Reason.TIMEOUT
    assert elapsed <= BUDGET + SLACK


def test_a_read_with_its_own_budget_keeps_to_it(sim: ZepSimulator, zep: ZepClient) -> None:
    """A shorter budget given per call (a probe's) bounds that call."""
    sim.add_fault(Fault(latency_ms=5000))
    started = time.monotonic()
    result = zep.get_memory(THREAD, lastn=1, budget_seconds=0.1)
    assert failure(result).reason == Reason.TIMEOUT
    assert time.monotonic() - started <= 0.1 + SLACK


def test_stalled_reads_run_in_the_callers_thread_and_end_there(sim: ZepSimulator) -> None:
    """A synchronous read is sent from the caller's own thread (no hand-off to a call
    thread), and a stalled one ends there at its deadline; a write goes to a call thread."""
    sim.add_fault(Fault(trickle_bytes=1, trickle_interval_ms=30))
    zep = ZepClient(sim.url, KEY, read_budget_seconds=0.05, write_budget_seconds=0.05)
    try:
        for _ in range(20):
            started = time.monotonic()
            assert failure(zep.get_memory(THREAD, lastn=1)).reason == Reason.TIMEOUT
            assert time.monotonic() - started <= 0.05 + SLACK
        after_reads = [t for t in threading.enumerate() if t.name.startswith("zep_")]
        zep.add_session("s-1")
        after_a_write = [t for t in threading.enumerate() if t.name.startswith("zep_")]
    finally:
        zep.close()
    assert after_reads == []
    assert len(after_a_write) == 1


def _resolving(monkeypatch: pytest.MonkeyPatch,
               answer: Callable[[str], list[str]]) -> list[str]:
    """``socket.getaddrinfo`` answering ``answer(host)`` for a name (an address stands
    for itself); the names asked, in order."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        if host[0].isdigit():
            addresses = [host]
        else:
            asked.append(host)
            addresses = answer(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_host_name_that_does_not_resolve_in_time_is_a_timeout_within_budget(
    sim: ZepSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``getaddrinfo`` has no timeout of its own: a resolver that does not answer must not
    hold a read past its budget."""
    answered = threading.Event()

    def slow(host: str) -> list[str]:
        answered.wait(5)
        return ["127.0.0.1"]

    asked = _resolving(monkeypatch, slow)
    zep = ZepClient(sim.url.replace("127.0.0.1", "zep.internal"), KEY,
                    read_budget_seconds=0.1)
    try:
        started = time.monotonic()
        result = zep.get_memory(THREAD, lastn=1)
        elapsed = time.monotonic() - started
    finally:
        answered.set()
        zep.close()
    assert failure(result).reason == Reason.TIMEOUT
    assert elapsed <= 0.1 + SLACK
    assert asked == ["zep.internal"]


def test_a_host_name_is_connected_at_the_first_of_its_addresses_that_answers(
    sim: ZepSimulator, zep: ZepClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each address of the name in the resolver's order, as ``socket.create_connection``:
    nothing listens at 127.0.0.2 on the simulator's port, so the read goes to 127.0.0.1."""
    sim.ensure_session(THREAD)
    asked = _resolving(monkeypatch, lambda host: ["127.0.0.2", "127.0.0.1"])
    named = ZepClient(sim.url.replace("127.0.0.1", "zep.internal"), KEY)
    try:
        assert isinstance(named.get_memory(THREAD, lastn=1), Memory)
    finally:
        named.close()
    assert asked == ["zep.internal"]
    assert len(sim.requests()) == 1


def test_a_host_name_without_any_address_that_answers_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    _resolving(monkeypatch, lambda host: ["127.0.0.2", "127.0.0.3"])
    zep = ZepClient(f"http://zep.internal:{port}", KEY)
    try:
        assert failure(zep.get_memory(THREAD, lastn=1)).reason == Reason.CONNECTION_ERROR
    finally:
        zep.close()


# writes


def test_a_write_is_stored_with_its_uuid_and_metadata(sim: ZepSimulator, zep: ZepClient) -> None:
    """Messages are stored under the caller's uuid, with role type and metadata."""
    sim.ensure_session(THREAD)
    assert zep.add_messages(THREAD, [outgoing("m-1")]) == Written(WriteStatus.STORED)
    [stored] = sim.messages(THREAD)
    assert (stored["uuid"], stored["role_type"], stored["metadata"]) == (
        "m-1", "user", {"client_msg_id": "m-1"}
    )


def test_a_repeated_uuid_is_already_stored(sim: ZepSimulator, zep: ZepClient) -> None:
    """Zep's 400 ``message_uuid already exists`` is a success of its own kind."""
    sim.ensure_session(THREAD)
    zep.add_messages(THREAD, [outgoing("m-1")])
    assert zep.add_messages(THREAD, [outgoing("m-1")]) == Written(WriteStatus.ALREADY_STORED)
    assert len(sim.messages(THREAD)) == 1


def test_a_write_to_a_missing_session_can_create_it_and_retry(
    sim: ZepSimulator, zep: ZepClient
) -> None:
    """``session_not_found``, then the user and session are created and the write goes on."""
    missing = failure(zep.add_messages(THREAD, [outgoing("m-1")]))
    assert (missing.reason, missing.status_code) == (Reason.SESSION_NOT_FOUND, 404)
    assert failure(zep.add_session(THREAD, "alice")).reason == Reason.USER_NOT_FOUND
    assert zep.add_user("alice") == Written(WriteStatus.CREATED)
    assert zep.add_session(THREAD, "alice") == Written(WriteStatus.CREATED)
    assert zep.add_messages(THREAD, [outgoing("m-1")]) == Written(WriteStatus.STORED)


def test_existing_users_and_sessions_count_as_created(zep: ZepClient) -> None:
    """Creating what already exists is ``already_exists``, not a failure."""
    zep.add_user("alice")
    zep.add_session(THREAD)
    assert zep.add_user("alice") == Written(WriteStatus.ALREADY_EXISTS)
    assert zep.add_session(THREAD) == Written(WriteStatus.ALREADY_EXISTS)


@pytest.mark.parametrize(
    ("fault", "reason", "status"),
    [
        (Fault(status=401), Reason.AUTH, 401),
        (Fault(status=403), Reason.AUTH, 403),
        (Fault(status=500), Reason.SERVER_ERROR, 500),
        (Fault(status=503, raw_body="unavailable"), Reason.SERVER_ERROR, 503),
        (Fault(status=408), Reason.TIMEOUT, 408),
        (Fault(drop=True), Reason.CONNECTION_ERROR, None),
        (Fault(latency_ms=5000), Reason.TIMEOUT, None),
    ],
    ids=["401", "403", "500", "503-raw", "408", "drop", "stall"],
)
def test_each_failed_write_has_its_reason_and_status(
    sim: ZepSimulator, zep: ZepClient, fault: Fault, reason: Reason, status: int | None
) -> None:
    """Every failure row of the write table, and nothing stored."""
    sim.ensure_session(THREAD)
    sim.add_fault(fault)
    result = failure(zep.add_messages(THREAD, [outgoing("m-1")], budget_seconds=0.25))
    assert (result.reason, result.status_code) == (reason, status)
    assert sim.messages(THREAD) == []


def test_a_rate_limited_write_says_how_long_to_wait(sim: ZepSimulator, zep: ZepClient) -> None:
    """A 429 on a write carries its ``Retry-After``."""
    sim.ensure_session(THREAD)
    sim.add_fault(Fault(method="POST", status=429, headers={"Retry-After": "3"}))
    result = failure(zep.add_messages(THREAD, [outgoing("m-1")]))
    assert (result.reason, result.retry_after_seconds) == (Reason.RATE_LIMITED, 3.0)


def test_another_client_error_carries_the_servers_message(
    sim: ZepSimulator, zep: ZepClient
) -> None:
    """A 400 other than a repeated uuid is ``client_error`` with status and message."""
    sim.ensure_session(THREAD)
    result = failure(zep.add_messages(THREAD, [outgoing("m-1", "x" * 2501)]))
    assert (result.reason, result.status_code) == (Reason.CLIENT_ERROR, 400)
    assert result.message is not None and "2500" in result.message


def test_a_write_stored_before_a_500_is_already_stored_on_retry(
    sim: ZepSimulator, zep: ZepClient
) -> None:
    """Store then fail: the write looks failed, and the retry with the same uuid is a success."""
    sim.ensure_session(THREAD)
    sim.add_fault(Fault(method="POST", status=500, process_first=True, times=1))
    assert failure(zep.add_messages(THREAD, [outgoing("m-1")])).reason == Reason.SERVER_ERROR
    assert zep.add_messages(THREAD, [outgoing("m-1")]) == Written(WriteStatus.ALREADY_STORED)
    assert len(sim.messages(THREAD)) == 1


def test_a_write_stored_before_a_stall_times_out_then_is_already_stored(
    sim: ZepSimulator, zep: ZepClient
) -> None:
    """Store then stall: the write times out within its budget; the retry is a success."""
    sim.ensure_session(THREAD)
    sim.add_fault(Fault(method="POST", latency_ms=5000, process_first=True, times=1))
    started = time.monotonic()
    result = zep.add_messages(THREAD, [outgoing("m-1")], budget_seconds=0.2)
    assert time.monotonic() - started <= 0.2 + SLACK
    assert failure(result).reason == Reason.TIMEOUT
    assert zep.add_messages(THREAD, [outgoing("m-1")]) == Written(WriteStatus.ALREADY_STORED)


# arguments and construction


@pytest.mark.parametrize(
    "thread_id", ["", "a/b", "a b", "..", ".", "x" * 257, "thread?x=1", "th%2Fread", "é"]
)
def test_ids_unsafe_in_a_url_path_are_refused_before_any_request(
    sim: ZepSimulator, zep: ZepClient, thread_id: str
) -> None:
    """Reads and writes with a bad id raise ``InvalidRequest`` and send nothing."""
    with pytest.raises(InvalidRequest):
        zep.get_memory(thread_id, lastn=1)
    with pytest.raises(InvalidRequest):
        asyncio.run(zep.aget_memory(thread_id, lastn=1))
    with pytest.raises(InvalidRequest):
        zep.add_messages(thread_id, [outgoing("m-1")])
    with pytest.raises(InvalidRequest):
        zep.add_session(thread_id)
    assert sim.requests() == []


def test_ids_of_every_allowed_character_reach_zep(sim: ZepSimulator, zep: ZepClient) -> None:
    """Letters, digits and ``._:@-`` are accepted and name the same session in Zep."""
    thread_id = "Team.A_1:user@example-9"
    assert zep.add_session(thread_id) == Written(WriteStatus.CREATED)
    assert isinstance(zep.get_memory(thread_id, lastn=1), Memory)


def test_the_client_is_built_from_settings_without_showing_the_key(sim: ZepSimulator) -> None:
    """Budgets come from the settings in milliseconds; the key stays out of the repr."""
    settings = Settings(zep_api_url=sim.url, zep_api_key=KEY, read_timeout_ms=200,
                        zep_timeout_ms=900, probe_timeout_ms=100)
    zep = ZepClient.from_settings(settings)
    try:
        assert (zep.read_budget_seconds, zep.write_budget_seconds, zep.probe_budget_seconds) == (
            0.2, 0.9, 0.1
        )
        assert KEY not in repr(zep)
        assert isinstance(failure(zep.get_memory(THREAD, lastn=1)), Failure)
    finally:
        zep.close()


def test_settings_without_a_url_cannot_build_a_client() -> None:
    """A missing ``ZEP_API_URL`` is a configuration error naming it."""
    with pytest.raises(ConfigError) as excinfo:
        ZepClient.from_settings(Settings(zep_api_key=KEY))
    assert excinfo.value.variable == "ZEP_API_URL"
