"""Queued messages of one thread sent in one add (SPEC §6 exactly once, per message).

A delivery that finds more of its thread's messages queued behind it sends them
with its own, in enqueue order. Real Redis, the real SDKs against the
simulator, on both Zep APIs; what was sent is counted from the simulator's
request log (``accepted_adds``), never from what its store kept. The clock is
injected and does not move unless a test moves it, so the settle time (4 s with
the default write budget) tells an attempted marker that was kept from one that
was cleared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY

from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.ledger import Ledger
from memory_worker.messages import Payload, message_uuid
from memory_worker.writer import DeadLetter, Done, Retry, Writer
from memory_worker.zep import OutgoingMessage, WriteResult, ZepApi, connect
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import FakeClock
from tests.processes import accepted_adds
from tests.zep_apis import ZepApiUnderTest

pytestmark = pytest.mark.zep_apis

THREAD = "t-batch"


def upper(a: float, b: float) -> float:
    return b


@pytest.fixture
def zep(read_settings: Settings, conn: redis.Redis) -> Iterator[ZepApi]:
    client = connect(read_settings, conn)
    yield client
    client.close()


def make_writer(conn: redis.Redis, settings: Settings, zep: ZepApi, clock: FakeClock,
                batch_max: int = 30) -> Writer:
    return Writer(conn, dataclasses.replace(settings, write_batch_max=batch_max), zep,
                  clock=clock, rand=upper)


@pytest.fixture
def writer(conn: redis.Redis, read_settings: Settings, zep: ZepApi, clock: FakeClock) -> Writer:
    return make_writer(conn, read_settings, zep, clock)


@pytest.fixture
def queue(conn: redis.Redis, keys: Keys, clock: FakeClock, zep_api: ZepApiUnderTest,
          read_settings: Settings) -> Iterator[Queue]:
    zep_api.prepare(THREAD)
    yield Queue(Ledger(conn, keys, read_settings.redeliver_after_seconds), clock)


@dataclasses.dataclass
class Queue:
    """Messages entered as ``enqueue_message`` enters them (ledger record, thread index),
    one clock tick apart, with no worker taking them."""

    ledger: Ledger
    clock: FakeClock

    def put(self, *cmids: str, content: str = "", enqueued_at: float | None = None
            ) -> list[Payload]:
        entered = []
        for cmid in cmids:
            self.clock.advance(0.001)
            payload = Payload(thread_id=THREAD, role="user", content=content or f"text of {cmid}",
                              client_msg_id=cmid, enqueued_at=enqueued_at or self.clock())
            record = {"task_id": message_uuid(cmid), "payload": payload.to_json()}
            assert self.ledger.first_enqueue(cmid, record, self.clock(), 3600)
            entered.append(payload)
        return entered


def adds(sim: ZepSimulator, zep_api: ZepApiUnderTest) -> int:
    return len(sim.requests("POST", zep_api.add_path))


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def ids(zep_api: ZepApiUnderTest) -> list[str]:
    return [m["metadata"]["client_msg_id"] for m in zep_api.stored(THREAD)]


def test_messages_queued_behind_a_delivery_go_in_its_add_in_enqueue_order(
    writer: Writer, queue: Queue, sim: ZepSimulator, zep_api: ZepApiUnderTest,
    conn: redis.Redis, keys: Keys,
) -> None:
    """One add carries all five; each later delivery of them ends without calling Zep,
    and only a copy after that counts as a duplicate."""
    queued = queue.put(*(f"m-{i}" for i in range(5)))
    sim.reset_requests()
    requests, success = (counter("memory_zep_write_requests_total"),
                         counter("memory_zep_write_success_total"))

    assert writer.deliver(queued[3]) == Done("stored")

    assert adds(sim, zep_api) == 1
    assert ids(zep_api) == [f"m-{i}" for i in range(5)]
    assert all(accepted_adds(sim, f"m-{i}") == 1 for i in range(5))
    assert counter("memory_zep_write_requests_total") - requests == 1
    assert counter("memory_zep_write_success_total") - success == 5
    assert conn.zcard(keys.write_pending) == 0 and conn.exists(keys.write_thread(THREAD)) == 0
    assert not any(conn.exists(keys.write_lease(f"m-{i}"), keys.write_pending_record(f"m-{i}"),
                               keys.write_attempted(f"m-{i}")) for i in range(5))
    for i in (0, 1, 2, 4):
        assert 29 * 24 * 3600 < conn.ttl(keys.write_done(f"m-{i}")) <= 30 * 24 * 3600
        assert writer.deliver(queued[i]) == Done("batched")
    for i in range(5):
        assert writer.deliver(queued[i]) == Done("already_done")
    assert adds(sim, zep_api) == 1


def test_a_message_held_or_tried_by_another_delivery_is_left_to_it(
    writer: Writer, queue: Queue, sim: ZepSimulator, zep_api: ZepApiUnderTest,
    conn: redis.Redis, keys: Keys,
) -> None:
    """A leased message (another worker is writing it) and one with an earlier attempt of
    unknown outcome are neither sent nor touched."""
    queued = queue.put("m-0", "m-1", "m-2", "m-3")
    conn.set(keys.write_lease("m-1"), "other-worker", px=60_000)
    conn.set(keys.write_attempted("m-2"), repr(queue.clock() - 100))
    sim.reset_requests()

    assert writer.deliver(queued[0]) == Done("stored")

    assert ids(zep_api) == ["m-0", "m-3"]
    assert conn.get(keys.write_lease("m-1")) == "other-worker"
    assert conn.exists(keys.write_pending_record("m-1"), keys.write_pending_record("m-2")) == 2
    assert conn.exists(keys.write_done("m-1"), keys.write_done("m-2")) == 0


def test_an_add_refused_for_one_bad_message_sends_this_one_alone_and_frees_the_rest(
    writer: Writer, queue: Queue, sim: ZepSimulator, zep_api: ZepApiUnderTest,
) -> None:
    """Zep refuses the add with a 400 (one of its messages is bad): the message goes again
    alone, and the others are free for their own deliveries at once, with no settle
    wait (a refused add stored nothing)."""
    queued = queue.put("m-0", "m-1", "m-2")
    sim.add_fault(Fault(method="POST", path=zep_api.add_path, status=400, times=1))
    sim.reset_requests()

    assert writer.deliver(queued[0]) == Done("stored")
    assert ids(zep_api) == ["m-0"]
    assert adds(sim, zep_api) == 2  # the refused add, then m-0 alone

    assert writer.deliver(queued[1]) == Done("stored")  # with m-2 as its companion
    assert writer.deliver(queued[2]) == Done("batched")
    assert ids(zep_api) == ["m-0", "m-1", "m-2"]
    assert all(accepted_adds(sim, f"m-{i}") == 1 for i in range(3))


def test_a_rate_limited_add_frees_every_message_in_it_at_once(
    writer: Writer, queue: Queue, sim: ZepSimulator, zep_api: ZepApiUnderTest,
) -> None:
    """429: nothing landed; the next delivery, whichever it is, takes all three again."""
    queued = queue.put("m-0", "m-1", "m-2")
    sim.add_fault(Fault(method="POST", path=zep_api.add_path, status=429, times=1,
                        headers={"Retry-After": "7"}))
    sim.reset_requests()

    first = writer.deliver(queued[0])
    assert isinstance(first, Retry) and first.reason == "rate_limited" and not first.counts
    assert zep_api.stored(THREAD) == []

    assert writer.deliver(queued[2]) == Done("stored")
    assert ids(zep_api) == ["m-0", "m-1", "m-2"]
    assert writer.deliver(queued[0]) == Done("batched")
    assert writer.deliver(queued[1]) == Done("batched")
    assert all(accepted_adds(sim, f"m-{i}") == 1 for i in range(3))


def test_an_add_of_unknown_outcome_leaves_each_message_to_look_before_sending(
    writer: Writer, queue: Queue, sim: ZepSimulator, zep_api: ZepApiUnderTest,
    clock: FakeClock,
) -> None:
    """Zep stores the add and answers 500: every message in it waits the settle time, then
    finds itself landed; none is sent twice."""
    queued = queue.put("m-0", "m-1", "m-2")
    sim.add_fault(Fault(method="POST", path=zep_api.add_path, status=500, times=1,
                        process_first=True))
    sim.reset_requests()

    first = writer.deliver(queued[0])
    assert isinstance(first, Retry) and first.reason == "server_error" and first.counts
    settling = writer.deliver(queued[1])
    assert isinstance(settling, Retry) and settling.reason == "settling"

    clock.advance(10)
    assert writer.deliver(queued[1]) == Done("stored")
    assert writer.deliver(queued[2]) == Done("stored")
    assert writer.deliver(queued[0], failures=1) == Done("stored")
    assert ids(zep_api) == ["m-0", "m-1", "m-2"]
    assert all(len(sim.requests_carrying(f"m-{i}")) == 1 for i in range(3))


def test_an_expired_message_is_not_sent_with_another(
    writer: Writer, queue: Queue, zep_api: ZepApiUnderTest, read_settings: Settings,
) -> None:
    """A queued message past MEMORY_WRITE_MAX_AGE_SECONDS stays out of the add and is
    dead-lettered by its own delivery, as it would be alone."""
    old = queue.put("m-old", enqueued_at=queue.clock() - read_settings.write_max_age_seconds - 5)
    young = queue.put("m-young")
    assert writer.deliver(young[0]) == Done("stored")
    assert ids(zep_api) == ["m-young"]
    assert writer.deliver(old[0]) == DeadLetter("expired", None)


def test_an_add_takes_at_most_the_batch_max_and_thirty_zep_messages(
    conn: redis.Redis, read_settings: Settings, zep: ZepApi, clock: FakeClock, queue: Queue,
    sim: ZepSimulator, zep_api: ZepApiUnderTest,
) -> None:
    """MEMORY_WRITE_BATCH_MAX bounds the messages of one add; a message whose chunks would
    take the add past thirty Zep messages is left to its own delivery, at once."""
    writer = make_writer(conn, read_settings, zep, clock, batch_max=3)
    queued = queue.put(*(f"m-{i}" for i in range(5)))
    sim.reset_requests()
    assert writer.deliver(queued[0]) == Done("stored")
    assert ids(zep_api) == ["m-0", "m-1", "m-2"]
    assert writer.deliver(queued[3]) == Done("stored")
    assert adds(sim, zep_api) == 2 and len(ids(zep_api)) == 5

    long = "".join(f"word{i:05d} " for i in range(28 * 250))  # 70,000 characters: 28 chunks
    big = queue.put("m-big", content=long)
    two = queue.put("m-two", content=long[:4000])  # two chunks: 28 + 2 would be 30, fits
    three = queue.put("m-three", content=long[:6000])  # three more would not
    writer = make_writer(conn, read_settings, zep, clock)
    sim.reset_requests()
    assert writer.deliver(big[0]) == Done("stored")
    assert adds(sim, zep_api) == 1 and accepted_adds(sim, "m-two") == 1
    assert accepted_adds(sim, "m-three") == 0
    assert writer.deliver(three[0]) == Done("stored")  # freed, no settle wait
    assert writer.deliver(two[0]) == Done("batched")


def test_a_batch_max_of_one_sends_each_message_alone(
    conn: redis.Redis, read_settings: Settings, zep: ZepApi, clock: FakeClock, queue: Queue,
    sim: ZepSimulator, zep_api: ZepApiUnderTest,
) -> None:
    writer = make_writer(conn, read_settings, zep, clock, batch_max=1)
    queued = queue.put("m-0", "m-1", "m-2")
    sim.reset_requests()
    assert [writer.deliver(p) for p in queued] == [Done("stored")] * 3
    assert adds(sim, zep_api) == 3


def test_a_worker_killed_in_the_add_leaves_every_message_delivered_once(
    writer: Writer, zep: ZepApi, queue: Queue, sim: ZepSimulator, zep_api: ZepApiUnderTest,
    conn: redis.Redis, keys: Keys, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The add raises after Zep stored it (a worker dying mid-call looks the same to
    Redis): the leases are freed, the attempted markers kept, and each message's own
    delivery finds itself landed after the settle time."""
    queued = queue.put("m-0", "m-1", "m-2")
    real = zep.add_messages

    class Dying(Exception):
        pass

    def add_then_die(thread_id: str, batch: list[OutgoingMessage]) -> WriteResult:
        real(thread_id, batch)
        raise Dying

    with monkeypatch.context() as patched:
        patched.setattr(zep, "add_messages", add_then_die)
        with pytest.raises(Dying):
            writer.deliver(queued[0])
    assert not conn.exists(keys.write_lease("m-1"), keys.write_lease("m-2"))
    assert conn.exists(keys.write_attempted("m-1"), keys.write_attempted("m-2")) == 2

    clock.advance(10)
    assert [writer.deliver(p) for p in queued] == [Done("stored")] * 3
    assert ids(zep_api) == ["m-0", "m-1", "m-2"]
    assert all(accepted_adds(sim, f"m-{i}") == 1 for i in range(3))
