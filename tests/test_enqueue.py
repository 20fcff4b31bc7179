"""enqueue_message: validation first, mode gate, redaction before publish, dedupe, outbox."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_worker import enqueue
from memory_worker.config import Settings
from memory_worker.enqueue import Publisher
from memory_worker.errors import InvalidMessage, OutboxUnavailable
from memory_worker.keys import Keys
from memory_worker.messages import message_uuid
from memory_worker.spool import DRAIN_LOCK, Outbox
from tests.conftest import FakeClock

PII = "Mail ayse.yilmaz@ornek.com.tr or call 0533 123 45 67 about the 2+1 for 150.000 TL"


class Broker:
    """Stands in for Celery's publish: records what it got, or refuses while down."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.down = False
        self.round_trip_s = 0.0

    def __call__(self, task_id: str, kwargs: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionRefusedError("broker down")
        time.sleep(self.round_trip_s)
        self.sent.append((task_id, kwargs))


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def publisher(settings: Settings, conn: redis.Redis, broker: Broker, clock: FakeClock,
              tmp_path: Path) -> Publisher:
    return Publisher(dataclasses.replace(settings, spool_dir=str(tmp_path / "spool")), conn,
                     broker, clock=clock)


def test_a_message_is_published_once_redacted_with_its_counts(
    publisher: Publisher, broker: Broker
) -> None:
    """No email or phone reaches the broker; prices and room counts survive."""
    result = publisher.enqueue("t-1", "user", PII, "m-1", user_id="u-1",
                               metadata={"note": "backup: +90 392 444 55 66"})
    assert result.task_id == message_uuid("m-1") and not (result.duplicate or result.skipped)
    assert result.redactions == {"email": 1, "phone": 2, "address": 0}
    [(task_id, kwargs)] = broker.sent
    payload = kwargs["payload"]
    assert task_id == result.task_id
    assert payload["content"] == "Mail [EMAIL] or call [PHONE] about the 2+1 for 150.000 TL"
    assert payload["metadata"] == {"note": "backup: [PHONE]"}
    assert "ornek" not in json.dumps(kwargs) and "0533" not in json.dumps(kwargs)
    assert (payload["thread_id"], payload["role"], payload["user_id"]) == ("t-1", "user", "u-1")


def test_a_repeated_client_msg_id_publishes_nothing(publisher: Publisher, broker: Broker
                                                    ) -> None:
    """The second enqueue of m-1 returns duplicate=True."""
    publisher.enqueue("t-1", "user", "hello", "m-1")
    second = publisher.enqueue("t-1", "user", "hello again", "m-1")
    assert second.duplicate and second.task_id == message_uuid("m-1")
    assert len(broker.sent) == 1


@pytest.mark.parametrize(("args", "field"), [
    (("bad/thread", "user", "hi", "m"), "thread_id"),
    (("t", "robot", "hi", "m"), "role"),
    (("t", "user", "   ", "m"), "content"),
    (("t", "user", "hi", "has space"), "client_msg_id"),
])
def test_invalid_input_raises_and_nothing_is_written(
    publisher: Publisher, broker: Broker, conn: redis.Redis, args: tuple[str, str, str, str],
    field: str,
) -> None:
    """InvalidMessage names the field; no publish, no duplicate marker, no outbox line."""
    with pytest.raises(InvalidMessage) as info:
        publisher.enqueue(*args)
    assert info.value.field == field
    assert broker.sent == [] and conn.dbsize() == 0 and publisher.outbox.pending() == 0


def test_content_over_the_limit_is_refused(settings: Settings, conn: redis.Redis,
                                           broker: Broker, clock: FakeClock,
                                           tmp_path: Path) -> None:
    """MEMORY_MAX_CONTENT_CHARS bounds what is accepted."""
    small = Publisher(dataclasses.replace(settings, max_content_chars=10, spool_dir=str(tmp_path)),
                      conn, broker, clock=clock)
    with pytest.raises(InvalidMessage, match="content"):
        small.enqueue("t", "user", "x" * 11, "m")


@pytest.mark.parametrize("flags", [(False, True), (False, False)])
def test_without_writes_the_call_is_skipped(settings: Settings, conn: redis.Redis,
                                            broker: Broker, clock: FakeClock,
                                            tmp_path: Path, flags: tuple[bool, bool]) -> None:
    """Base mode read_only or off: skipped=True, nothing published."""
    off = Publisher(dataclasses.replace(settings, flag_zep_write=flags[0], flag_zep_read=flags[1],
                                        spool_dir=str(tmp_path)), conn, broker, clock=clock)
    result = off.enqueue("t", "user", "hello", "m")
    assert result.skipped and result.task_id is None and broker.sent == []


def test_a_forced_record_never_blocks_writes(publisher: Publisher, broker: Broker,
                                             conn: redis.Redis, keys: Keys) -> None:
    """write_only forced by the guard: writes go on."""
    conn.set(keys.forced, '{"reason": "auth", "forced_at": 0, "until": 9e12}')
    assert not publisher.enqueue("t", "user", "hello", "m").skipped
    assert len(broker.sent) == 1


def test_broker_down_spools_and_the_outbox_drains_in_order_once_it_answers(
    publisher: Publisher, broker: Broker
) -> None:
    """spooled=True while down; a drain publishes everything once, oldest first."""
    broker.down = True
    results = [publisher.enqueue("t", "user", f"message {i}", f"m-{i}") for i in range(3)]
    assert all(r.spooled for r in results) and broker.sent == []
    broker.down = False
    # While older messages wait, a new one queues behind them.
    assert publisher.enqueue("t", "user", "message 3", "m-3").spooled
    report = publisher.drain()
    assert report.published == 4 and report.remaining == 0
    assert [kw["payload"]["client_msg_id"] for _, kw in broker.sent] == [
        "m-0", "m-1", "m-2", "m-3"]
    assert not publisher.enqueue("t", "user", "message 4", "m-4").spooled


def test_with_redis_down_the_message_is_spooled_and_checked_before_it_is_published(
    settings: Settings, conn: redis.Redis, broker: Broker, clock: FakeClock, tmp_path: Path,
    keys: Keys,
) -> None:
    """No Redis, no silent skip: spooled=True, and the drain makes the check and the entry."""
    spool = str(tmp_path / "spool")
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    cut_off = Publisher(dataclasses.replace(settings, spool_dir=spool), dead, broker, clock=clock)
    result = cut_off.enqueue("t", "user", "hello", "m")
    assert result.spooled and not result.duplicate and broker.sent == []

    back = Publisher(dataclasses.replace(settings, spool_dir=spool), conn, broker, clock=clock)
    report = back.drain()
    assert report.published == 1 and report.remaining == 0
    assert [task_id for task_id, _ in broker.sent] == [message_uuid("m")]
    assert conn.exists(keys.enqueued("m")) == 1  # the duplicate marker...
    assert conn.zscore(keys.write_pending, "m") is not None  # ...and the ledger entry


def test_a_spooled_unchecked_duplicate_of_a_finished_message_is_dropped(
    settings: Settings, conn: redis.Redis, broker: Broker, clock: FakeClock, tmp_path: Path,
) -> None:
    """The check owed by an unchecked record finds m done: nothing is published again."""
    from memory_worker.ledger import Ledger

    spool = str(tmp_path / "spool")
    live = Publisher(dataclasses.replace(settings, spool_dir=spool), conn, broker, clock=clock)
    live.enqueue("t", "user", "hello", "m")
    Ledger(conn, Keys(), 600).settle("m", done_marker_ttl_s=60)  # the worker stored it
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    cut_off = Publisher(dataclasses.replace(settings, spool_dir=spool), dead, broker, clock=clock)
    assert cut_off.enqueue("t", "user", "hello", "m").spooled

    report = live.drain()
    assert report.remaining == 0 and len(broker.sent) == 1


def test_a_spooled_unchecked_record_still_in_the_ledger_is_published(
    settings: Settings, conn: redis.Redis, broker: Broker, clock: FakeClock, tmp_path: Path,
) -> None:
    """Its marker may be its own (the answer was lost): while pending, it goes out again."""
    spool = str(tmp_path / "spool")
    live = Publisher(dataclasses.replace(settings, spool_dir=spool), conn, broker, clock=clock)
    broker.down = True
    assert live.enqueue("t", "user", "hello", "m").spooled  # marker set, ledger entry made
    broker.down = False
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    cut_off = Publisher(dataclasses.replace(settings, spool_dir=spool), dead, broker, clock=clock)
    assert cut_off.enqueue("t", "user", "hello", "m").spooled  # Redis gone: unchecked

    assert live.drain().remaining == 0
    assert [task_id for task_id, _ in broker.sent] == [message_uuid("m")] * 2


def test_a_redis_pause_longer_than_the_read_timeout_still_catches_a_duplicate(
    settings: Settings, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis stalls 300 ms (6x the read path's timeout) while m-1 is enqueued again."""
    import threading

    from memory_worker import runtime
    from tests.processes import PrivateRedis

    with PrivateRedis(tmp_path / "redis") as private:
        rt = runtime.Runtime(dataclasses.replace(settings, redis_url=private.url,
                                                 spool_dir=str(tmp_path / "spool")))
        rt.send = broker
        assert not rt.publisher.enqueue("t", "user", "hello", "m-1").duplicate
        other = redis.Redis.from_url(private.url)
        sleeping = threading.Thread(target=lambda: other.execute_command("DEBUG", "SLEEP", "0.3"))  # type: ignore[no-untyped-call]
        sleeping.start()
        try:
            # Wait for the pause to begin: a PING from a third client does not answer at once.
            probe = redis.Redis.from_url(private.url, socket_timeout=0.02)
            started = time.monotonic()
            while time.monotonic() - started < 5:
                try:
                    probe.ping()
                except redis.TimeoutError:
                    break
            again = rt.publisher.enqueue("t", "user", "hello again", "m-1")
        finally:
            sleeping.join()
        assert again.duplicate and not again.spooled
        assert len(broker.sent) == 1


def test_metadata_that_redaction_grows_past_16_kb_is_refused_at_enqueue(
    publisher: Publisher, broker: Broker, conn: redis.Redis,
) -> None:
    """Each 6-character email becomes the 7-character [EMAIL]: what is published is checked."""
    metadata = {"emails": ["a@b.co"] * 1600}  # 16,012 bytes as JSON before, 17,612 after
    assert len(json.dumps(metadata)) < 16 * 1024
    with pytest.raises(InvalidMessage, match="after redaction") as info:
        publisher.enqueue("t", "user", "hello", "m", metadata=metadata)
    assert info.value.field == "metadata"
    assert broker.sent == [] and conn.dbsize() == 0 and publisher.outbox.pending() == 0


def test_what_enqueue_accepts_the_worker_accepts(publisher: Publisher, broker: Broker) -> None:
    """Metadata just under the limit after redaction: the published payload validates."""
    from memory_worker.messages import Payload

    publisher.enqueue("t", "user", "hello", "m", metadata={"emails": ["a@b.co"] * 1450})
    [(_, kwargs)] = broker.sent
    Payload.from_json(kwargs["payload"])  # raises InvalidMessage if the worker would refuse


def test_broker_and_outbox_both_failing_is_an_error_and_leaves_no_marker(
    settings: Settings, conn: redis.Redis, broker: Broker, clock: FakeClock, tmp_path: Path,
    keys: Keys,
) -> None:
    """Nothing half-written: the duplicate marker is removed so a retry can succeed."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    publisher = Publisher(dataclasses.replace(settings, spool_dir=str(blocker / "spool")), conn,
                          broker, clock=clock, outbox=Outbox(blocker / "spool"))
    broker.down = True
    with pytest.raises(OutboxUnavailable):
        publisher.enqueue("t", "user", "hello", "m")
    assert conn.exists(keys.enqueued("m")) == 0


def test_under_steady_traffic_the_drainer_empties_the_outbox_and_publishing_goes_direct(
    publisher: Publisher, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker back after an outage, messages still arriving every few ms: the drainer
    catches up instead of leaving every later message to wait in the outbox."""
    monkeypatch.setattr(enqueue, "DRAIN_INTERVALS_S", (0.2,))
    broker.down = True
    assert publisher.enqueue("t", "user", "during the outage", "m-0").spooled
    broker.down, broker.round_trip_s = False, 0.002
    results = []
    for i in range(1, 400):
        results.append(publisher.enqueue("t", "user", f"message {i}", f"m-{i}"))
        if not results[-1].spooled:
            break
        time.sleep(0.004)
    assert not results[-1].spooled, "still spooling after 400 messages"
    assert [kw["payload"]["client_msg_id"] for _, kw in broker.sent] == [
        f"m-{i}" for i in range(len(results) + 1)]


def test_a_drainer_that_finds_another_process_draining_looks_again_soon(
    publisher: Publisher, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Web processes share the outbox: one finding the drain lock taken keeps its short
    interval (the other is publishing its messages too) instead of backing off."""
    monkeypatch.setattr(enqueue, "DRAIN_INTERVALS_S", (0.05, 30.0))
    spool = tmp_path / "spool"
    spool.mkdir()
    held = os.open(spool / DRAIN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # another process is draining
    try:
        broker.down = True
        assert publisher.enqueue("t", "user", "during the outage", "m-0").spooled
        broker.down = False
        time.sleep(0.3)  # several looks at the lock, each finding it taken
        assert broker.sent == []
    finally:
        os.close(held)  # the other drain is done
    deadline = time.monotonic() + 5.0
    while not broker.sent and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [kw["payload"]["client_msg_id"] for _, kw in broker.sent] == ["m-0"]
    assert not publisher.enqueue("t", "user", "after", "m-1").spooled


def test_a_message_spooled_while_the_drainer_is_ending_is_still_drained(
    publisher: Publisher, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drainer has decided it is done but its thread still runs; an enqueue spools now.

    The interleaving is forced: a trace function holds the drainer at the return of
    its loop until the second message is in the outbox.
    """
    import sys
    import threading
    from types import FrameType

    from tests.processes import wait_for

    monkeypatch.setattr(enqueue, "DRAIN_INTERVALS_S", (0.01,))
    decided, go = threading.Event(), threading.Event()

    def hold_at_return(frame: FrameType, event: str, arg: object) -> Any:
        if event == "return" and not decided.is_set():
            decided.set()  # the drainer is done with its loop, still alive
            go.wait(10)
        return hold_at_return

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        return hold_at_return if frame.f_code.co_name == "_drain_until_empty" else None

    threading.settrace(tracer)
    try:
        broker.down = True
        assert publisher.enqueue("t", "user", "first", "m-0").spooled
        broker.down = False
        assert decided.wait(10), "the drainer never finished its first round"
        assert [kw["payload"]["client_msg_id"] for _, kw in broker.sent] == ["m-0"]
        broker.down = True
        assert publisher.enqueue("t", "user", "second", "m-1").spooled
        broker.down = False
    finally:
        go.set()
        threading.settrace(None)
        sys.settrace(None)
    wait_for(lambda: len(broker.sent) == 2, 10, "the second message to be drained")
    assert [kw["payload"]["client_msg_id"] for _, kw in broker.sent] == ["m-0", "m-1"]
    assert publisher.outbox.pending() == 0


def test_enqueue_counts_what_it_redacted_in_the_metrics(publisher: Publisher) -> None:
    """redact_pii is pure; enqueue_message counts each replacement by field type."""
    from prometheus_client import REGISTRY

    def count(field_type: str) -> float:
        return REGISTRY.get_sample_value("memory_zep_redactions_total",
                                         {"field_type": field_type}) or 0.0

    before = {kind: count(kind) for kind in ("email", "phone", "address")}
    result = publisher.enqueue("t-1", "user", PII, "m-count",
                               metadata={"note": "backup: +90 392 444 55 66"})
    after = {kind: count(kind) for kind in ("email", "phone", "address")}
    assert {kind: after[kind] - before[kind] for kind in after} == result.redactions
    assert result.redactions == {"email": 1, "phone": 2, "address": 0}


@pytest.mark.parametrize("metadata", [
    {"nested": {"a": 1}},
    {"none": None},
    {"mixed": [1, {"a": 2}]},
    {f"k{i}": i for i in range(7)},
])
def test_on_v4_metadata_zep_would_refuse_is_refused_at_enqueue(
    settings: Settings, conn: redis.Redis, broker: Broker, clock: FakeClock, tmp_path: Path,
    metadata: dict[str, Any],
) -> None:
    """Zep v4 keeps 10 flat keys, 4 of them the project's: InvalidMessage, nothing published."""
    v4 = Publisher(dataclasses.replace(settings, zep_api_version="v4", spool_dir=str(tmp_path)),
                   conn, broker, clock=clock)
    with pytest.raises(InvalidMessage) as info:
        v4.enqueue("t", "user", "hello", "m", metadata=metadata)
    assert info.value.field == "metadata"
    assert broker.sent == [] and conn.dbsize() == 0


def test_on_v4_flat_metadata_of_six_keys_is_published(
    settings: Settings, conn: redis.Redis, broker: Broker, clock: FakeClock, tmp_path: Path,
) -> None:
    """Strings, numbers, booleans and arrays of them, six keys: accepted."""
    v4 = Publisher(dataclasses.replace(settings, zep_api_version="v4", spool_dir=str(tmp_path)),
                   conn, broker, clock=clock)
    metadata = {"a": "x", "b": 1, "c": 2.5, "d": True, "e": ["x", 1], "f": []}
    assert not v4.enqueue("t", "user", "hello", "m", metadata=metadata).spooled
    assert broker.sent[0][1]["payload"]["metadata"] == metadata
