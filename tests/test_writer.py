"""One write attempt at a time (Writer.deliver): every row of SPEC §6's outcome table.

Real Redis, the real SDK against the simulator over HTTP, an injected clock and
a fixed jitter, so countdowns are read, never slept out.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY

from memory_worker.breaker import Breaker, CircuitState
from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.messages import Payload, message_uuid
from memory_worker.writer import BACKOFF_CAP_S, DeadLetter, Done, Retry, Writer, backoff
from memory_worker.zep import ZepClient
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import FakeClock
from tests.processes import wait_for

MEMORY = "*/sessions/*/memory"


def upper(a: float, b: float) -> float:
    return b


@pytest.fixture(autouse=True)
def no_settling(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Attempts here follow each other on an injected clock that does not move; the wait
    before looking at what an earlier attempt stored has tests of its own."""
    if "settling" not in request.node.name:
        monkeypatch.setattr(Writer, "_settle_seconds", lambda self: 0.0)


@pytest.fixture
def zep(sim: ZepSimulator) -> Iterator[ZepClient]:
    client = ZepClient(sim.url, "test-key")
    yield client
    client.close()


@pytest.fixture
def writer(conn: redis.Redis, read_settings: Settings, zep: ZepClient, clock: FakeClock
           ) -> Writer:
    return Writer(conn, read_settings, zep, clock=clock, rand=upper)


def payload(cmid: str = "m-1", content: str = "Looking for a 2+1", thread: str = "t-1",
            user_id: str | None = None) -> Payload:
    return Payload(thread_id=thread, role="user", content=content, client_msg_id=cmid,
                   user_id=user_id)


def counter(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_a_message_is_stored_under_its_derived_uuid_and_marked_done(
    writer: Writer, sim: ZepSimulator, conn: redis.Redis, keys: Keys
) -> None:
    """Success: stored once, done-marker set, the lease released."""
    sim.ensure_session("t-1")
    assert writer.deliver(payload()) == Done("stored")
    stored = sim.messages("t-1")
    assert [(m["uuid"], m["content"], m["role_type"]) for m in stored] == [
        (message_uuid("m-1"), "Looking for a 2+1", "user")]
    assert stored[0]["metadata"] == {"client_msg_id": "m-1", "chunk": 1, "chunks": 1}
    assert 29 * 24 * 3600 < conn.ttl(keys.write_done("m-1")) <= 30 * 24 * 3600
    assert conn.exists(keys.write_lease("m-1")) == 0


def test_a_redelivery_after_success_does_not_call_zep(
    writer: Writer, sim: ZepSimulator
) -> None:
    """The done-marker ends a second delivery before any request."""
    sim.ensure_session("t-1")
    writer.deliver(payload())
    sim.reset_requests()
    assert writer.deliver(payload()) == Done("already_done")
    assert sim.requests() == [] and len(sim.messages("t-1")) == 1


@pytest.mark.parametrize("fault", [
    Fault(method="POST", path=MEMORY, process_first=True, status=500, times=1),
    Fault(method="POST", path=MEMORY, process_first=True, latency_ms=3000, times=1),
], ids=["store-then-500", "store-then-timeout"])
def test_stored_then_failed_is_still_exactly_one_message(
    conn: redis.Redis, read_settings: Settings, sim: ZepSimulator, clock: FakeClock,
    fault: Fault,
) -> None:
    """Zep stores and then fails: the retry asks what landed and sends nothing again."""
    zep = ZepClient(sim.url, "test-key", write_budget_seconds=0.3)
    writer = Writer(conn, read_settings, zep, clock=clock, rand=upper)
    sim.ensure_session("t-1")
    sim.add_fault(fault)
    first = writer.deliver(payload())
    assert isinstance(first, Retry) and first.counts
    assert writer.deliver(payload(), failures=1) == Done("stored")
    assert len(sim.messages("t-1")) == 1
    # Counted in what was sent, not in what a deduplicating store kept (a request is
    # logged when answered: the stalled one only after its latency).
    wait_for(lambda: len(sim.requests_carrying("m-1")) >= 1, 10, "the first add to be logged")
    assert len(sim.requests_carrying("m-1")) == 1
    zep.close()


def test_a_batch_zep_calls_a_duplicate_that_only_partly_landed_converges_to_every_chunk(
    writer: Writer, zep: ZepClient, sim: ZepSimulator
) -> None:
    """Chunks 1-2 of 5 are stored; the add of all five is refused as "already exists":
    the missing 3-5 are added, each once, and nothing is lost."""
    from memory_worker.messages import zep_messages

    content = "".join(f"word{i:05d} " for i in range(1100))  # 11,000 characters: 5 chunks
    message = payload(cmid="part", content=content, thread="t-part")
    chunks = zep_messages(message)
    assert len(chunks) == 5
    sim.ensure_session("t-part")
    zep.add_messages("t-part", chunks[:2])  # an earlier add that stored only these

    assert writer.deliver(message) == Done("stored")

    stored = sim.messages("t-part")
    assert [m["metadata"]["chunk"] for m in stored] == [1, 2, 3, 4, 5]
    assert "".join(m["content"] for m in stored) == content
    for chunk in (3, 4, 5):
        assert len(sim.requests_carrying("part", chunk)) == 2  # refused whole, then added


def test_429_waits_retry_after_and_is_no_breaker_failure(
    writer: Writer, sim: ZepSimulator, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """Retry-After: 7 → countdown ≥ 7 s (+ jitter); the breaker sees Zep as up."""
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=429,
                        headers={"Retry-After": "7"}))
    for attempt in range(6):
        verdict = writer.deliver(payload(), failures=attempt)
        assert isinstance(verdict, Retry) and verdict.reason == "rate_limited"
        assert 7.0 <= verdict.countdown <= 8.0
        assert not verdict.counts  # a rate limit spends no attempt
    assert Breaker(conn, keys, clock=clock).state() is CircuitState.CLOSED


@pytest.mark.parametrize(("fault", "reason"), [
    (Fault(method="POST", path=MEMORY, status=503), "server_error"),
    (Fault(method="POST", path=MEMORY, drop=True), "connection_error"),
    (Fault(method="POST", path=MEMORY, status=401), "auth"),
    (Fault(method="POST", path=MEMORY, status=403), "auth"),
])
def test_transient_failures_back_off_exponentially_with_full_jitter(
    writer: Writer, sim: ZepSimulator, fault: Fault, reason: str
) -> None:
    """base 2 s × 2^failures, capped at 300 s; the jitter draws within [0, ceiling]."""
    sim.ensure_session("t-1")
    sim.add_fault(fault)
    countdowns = []
    for failures in (0, 1, 2, 3):  # the fifth breaker failure in a row opens the circuit
        verdict = writer.deliver(payload(), failures=failures)
        assert isinstance(verdict, Retry) and verdict.reason == reason
        assert verdict.counts is (reason != "auth")  # a rejected key spends no attempt
        countdowns.append(verdict.countdown)
    assert countdowns == [2.0, 4.0, 8.0, 16.0]
    assert backoff(7, upper) == 256.0 and backoff(8, upper) == backoff(30, upper) == BACKOFF_CAP_S
    assert backoff(3, lambda a, b: a) == 0.0


def test_auth_failures_do_not_open_the_breaker(
    writer: Writer, sim: ZepSimulator, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """401 is counted as auth, not as a breaker failure: keys get fixed, Zep is up."""
    sim.add_fault(Fault(method="POST", path=MEMORY, status=401))
    before = counter("memory_zep_write_failures_total", {"reason": "auth"})
    for i in range(8):
        writer.deliver(payload(cmid=f"a{i}"))
    assert Breaker(conn, keys, clock=clock).state() is CircuitState.CLOSED
    assert counter("memory_zep_write_failures_total", {"reason": "auth"}) == before + 8


@pytest.mark.parametrize("status", [400, 413, 422])
def test_other_4xx_is_dead_lettered_at_once(writer: Writer, sim: ZepSimulator,
                                             status: int) -> None:
    """A request Zep will never accept goes to the DLQ on the first attempt."""
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=status, body={"message": "no"}))
    assert writer.deliver(payload()) == DeadLetter("client_error", status)


def test_the_last_retry_dead_letters(writer: Writer, sim: ZepSimulator,
                                     read_settings: Settings) -> None:
    """After MEMORY_WRITE_MAX_RETRIES failures the write is dead-lettered."""
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=500))
    last = read_settings.write_max_retries
    assert isinstance(writer.deliver(payload(), failures=last - 1), Retry)
    assert writer.deliver(payload(), failures=last) == DeadLetter("server_error", 500)


@pytest.mark.parametrize(("fault", "reason"), [
    (Fault(method="POST", path=MEMORY, status=429, headers={"Retry-After": "5"}),
     "rate_limited"),
    (Fault(method="POST", path=MEMORY, status=401), "auth"),
    (Fault(method="POST", path=MEMORY, status=403), "auth"),
])
def test_rate_limits_and_rejected_keys_never_use_up_the_retries(
    writer: Writer, sim: ZepSimulator, read_settings: Settings, fault: Fault, reason: str,
) -> None:
    """A minute of 429s or a rotated key: far past MEMORY_WRITE_MAX_RETRIES, still a retry."""
    sim.ensure_session("t-1")
    sim.add_fault(fault)
    many = read_settings.write_max_retries + 20
    verdict = writer.deliver(payload(), failures=0, retries=many)
    assert isinstance(verdict, Retry) and verdict.reason == reason and not verdict.counts
    assert verdict.countdown <= BACKOFF_CAP_S + 1.0  # the exponent is capped, the wait too


def test_a_write_older_than_its_max_age_is_dead_lettered_as_expired(
    writer: Writer, sim: ZepSimulator, read_settings: Settings, clock: FakeClock,
) -> None:
    """Whatever it waited for, MEMORY_WRITE_MAX_AGE_SECONDS after the enqueue it stops."""
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=401))
    old = Payload(thread_id="t-1", role="user", content="hi", client_msg_id="m-old",
                  enqueued_at=clock() - read_settings.write_max_age_seconds - 1)
    assert writer.deliver(old) == DeadLetter("expired", None)
    assert sim.requests() == []  # decided before Zep was called


def test_a_retry_never_waits_past_the_expiry(
    writer: Writer, sim: ZepSimulator, read_settings: Settings, clock: FakeClock,
) -> None:
    """Ten seconds of life left and a 300 s Retry-After: the next attempt comes in time."""
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=429,
                        headers={"Retry-After": "300"}))
    young = Payload(thread_id="t-1", role="user", content="hi", client_msg_id="m-young",
                    enqueued_at=clock() - read_settings.write_max_age_seconds + 10)
    verdict = writer.deliver(young)
    assert isinstance(verdict, Retry) and 10.0 <= verdict.countdown <= 11.0


def test_a_missing_session_is_created_with_its_user(writer: Writer, sim: ZepSimulator) -> None:
    """404 on add: the user and the session are created, then the write goes on."""
    assert writer.deliver(payload(thread="fresh", user_id="u-7")) == Done("stored")
    assert len(sim.messages("fresh")) == 1
    paths = [r.path for r in sim.requests()]
    assert any(p.endswith("/users") for p in paths) and any(p.endswith("/sessions") for p in paths)


def test_a_long_message_arrives_as_ordered_chunks_exactly_once(
    writer: Writer, sim: ZepSimulator
) -> None:
    """6,000 characters → 3 chunks of ≤2500 that join back, even when delivered twice."""
    content = "".join(f"line {i:04d} of the listing details. " for i in range(200))[:6000]
    sim.ensure_session("t-long")
    assert writer.deliver(payload(cmid="long", content=content, thread="t-long")) == Done("stored")
    stored = sim.messages("t-long")
    assert len(stored) == 3 and "".join(m["content"] for m in stored) == content
    assert [m["metadata"]["chunk"] for m in stored] == [1, 2, 3]


def test_with_the_breaker_open_zep_sees_no_write_until_half_open_then_one(
    writer: Writer, sim: ZepSimulator, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """Open: retries wait for reopen_at, no call, no attempt used; half-open: one trial."""
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=503))
    breaker = Breaker(conn, keys, clock=clock)
    while breaker.state() is not CircuitState.OPEN:
        writer.deliver(payload(cmid=f"fail-{clock()}"))
        clock.advance(0.01)
    sim.reset_requests()

    waiting = [writer.deliver(payload(cmid=f"w{i}")) for i in range(5)]
    assert all(isinstance(v, Retry) and v.reason == "circuit_open" and not v.counts
               for v in waiting)
    assert sim.requests() == []

    # Half-open with Zep still down: one trial at a time; three failed trials in a row
    # reopen the circuit, and the writes after them keep waiting. No attempt is used up.
    clock.advance(min(v.countdown for v in waiting if isinstance(v, Retry)))
    verdicts = [writer.deliver(payload(cmid=f"w{i}")) for i in range(5)]
    trials = breaker.policy.trial_failures_to_reopen
    assert len(sim.requests("POST", MEMORY)) == trials
    assert all(isinstance(v, Retry) and not v.counts for v in verdicts)
    assert [v.reason for v in verdicts if isinstance(v, Retry)].count("circuit_open") == 5 - trials
    assert breaker.state() is CircuitState.OPEN

    # Zep heals: the next trial closes the circuit and the writes flow again.
    sim.clear_faults()
    clock.advance(max(v.countdown for v in verdicts if isinstance(v, Retry)))
    assert [writer.deliver(payload(cmid=f"w{i}")) for i in range(5)] == [Done("stored")] * 5
    assert breaker.state() is CircuitState.CLOSED
    assert len(sim.messages("t-1")) == 5


def test_a_write_survives_a_thirty_minute_outage_with_default_settings(
    writer: Writer, sim: ZepSimulator, clock: FakeClock
) -> None:
    """Follow the countdowns through 30 minutes of 503s: the message is never dead-lettered."""
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=503))
    start, failures = clock(), 0
    while clock() - start < 30 * 60:
        verdict = writer.deliver(payload(cmid="patient"), failures)
        assert isinstance(verdict, Retry), f"dead-lettered after {clock() - start:.0f}s"
        failures += 1 if verdict.counts else 0
        clock.advance(verdict.countdown)
    sim.clear_faults()
    clock.advance(300)
    assert writer.deliver(payload(cmid="patient"), failures) == Done("stored")
    assert len(sim.messages("t-1")) == 1


class CountingRedis(redis.Redis):
    """A client that counts the commands it sends: each is one round trip here."""

    sent: list[str]

    def execute_command(self, *args: object, **options: object) -> object:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def test_a_stored_delivery_makes_two_round_trips_to_redis(
    redis_url: str, conn: redis.Redis, read_settings: Settings, zep: ZepClient,
    clock: FakeClock, sim: ZepSimulator, keys: Keys
) -> None:
    """One script before the Zep call, one after it; the breaker, ledger and lease inside."""
    counting = CountingRedis(connection_pool=redis.ConnectionPool.from_url(
        redis_url, decode_responses=True))
    counting.sent = []
    writer = Writer(counting, read_settings, zep, clock=clock, rand=upper)
    sim.ensure_session("t-1")
    conn.zadd(keys.write_pending, {"m-rt": 1.0})
    writer.deliver(payload("m-warm"))  # loads the scripts into Redis
    counting.sent.clear()

    assert writer.deliver(payload("m-rt")) == Done("stored")
    assert counting.sent == ["EVALSHA", "EVALSHA"]
    assert conn.exists(keys.write_done("m-rt"), keys.write_lease("m-rt"),
                       keys.write_attempted("m-rt")) == 1  # only the done-marker is left
    assert conn.zscore(keys.write_pending, "m-rt") is None
    counting.close()


def test_a_delivery_the_circuit_holds_back_neither_calls_zep_nor_keeps_its_lease(
    writer: Writer, sim: ZepSimulator, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """The admission is part of the first script; a refused attempt marks nothing attempted."""
    breaker = Breaker(conn, keys, clock=clock)
    for _ in range(breaker.policy.failure_threshold):
        breaker.record_failure()
        clock.advance(breaker.policy.failure_run_seconds)
    assert breaker.state() is CircuitState.OPEN
    sim.reset_requests()
    verdict = writer.deliver(payload("m-held"))
    assert isinstance(verdict, Retry) and verdict.reason == "circuit_open"
    assert sim.requests() == []
    assert conn.exists(keys.write_lease("m-held"), keys.write_attempted("m-held")) == 0


def test_settling_a_retry_soon_after_an_attempt_waits_before_looking_at_what_landed(
    writer: Writer, sim: ZepSimulator, clock: FakeClock, read_settings: Settings,
) -> None:
    """A request the client gave up on may still reach Zep: the next attempt first waits
    twice the write budget and a second from the earlier one's start, calling nothing."""
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=503, times=1))
    assert isinstance(writer.deliver(payload()), Retry)
    sim.reset_requests()
    settle = 2 * read_settings.zep_timeout_ms / 1000 + 1.0
    clock.advance(settle / 2)
    early = writer.deliver(payload(), failures=1)
    assert isinstance(early, Retry) and early.reason == "settling" and not early.counts
    assert settle / 2 <= early.countdown <= settle / 2 + 0.5
    assert sim.requests() == []  # neither a look nor a resend
    clock.advance(settle / 2)
    assert writer.deliver(payload(), failures=1) == Done("stored")
