"""The dead-letter queue: entries in the contract's shape, listing, purge and a safe replay."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import pytest
import redis

from memory_worker import dlq
from memory_worker.dlq import DeadLetter, Unreadable
from memory_worker.keys import Keys
from tests.processes import wait_for

PUBLISHED = "test:dlq:published"


def _letter(n: int, **changes: Any) -> DeadLetter:
    fields: dict[str, Any] = {
        "client_msg_id": f"m{n}", "thread_id": "t-1",
        "payload": {"thread_id": "t-1", "role": "user", "content": f"message {n} [EMAIL]"},
        "reason": "client_error", "status_code": 400, "attempts": 1,
        "failed_at": 1_800_000_000.0 + n,
    }
    fields.update(changes)
    return DeadLetter(**fields)


def _fill(conn: redis.Redis, keys: Keys, count: int) -> list[str]:
    for n in range(count):
        dlq.push(conn, keys, _letter(n))
    return [f"m{n}" for n in range(count)]


def test_an_entry_is_stored_as_json_with_exactly_the_contracts_fields(
    conn: redis.Redis, keys: Keys
) -> None:
    """`mem:write:dlq` holds one JSON object per entry, as operators and the CLI read it."""
    dlq.push(conn, keys, _letter(1, status_code=None, reason="retries_exhausted", attempts=13))

    [raw] = conn.lrange(keys.dlq, 0, -1)
    assert keys.dlq == "mem:write:dlq"
    assert json.loads(raw) == {
        "client_msg_id": "m1", "thread_id": "t-1",
        "payload": {"thread_id": "t-1", "role": "user", "content": "message 1 [EMAIL]"},
        "reason": "retries_exhausted", "status_code": None, "attempts": 13,
        "failed_at": 1_800_000_001.0,
    }


def test_push_accepts_a_plain_mapping_and_rejects_a_malformed_one(
    conn: redis.Redis, keys: Keys
) -> None:
    """A dict in the contract's shape is pushed; a wrong type is refused before Redis sees it."""
    good = json.loads(_letter(1).to_json())
    assert dlq.push(conn, keys, good) == 1
    with pytest.raises(ValueError, match="status_code"):
        dlq.push(conn, keys, {**good, "status_code": "400"})
    with pytest.raises(ValueError, match="attempts"):
        dlq.push(conn, keys, {**good, "attempts": True})
    assert dlq.size(conn, keys) == 1


def test_entries_are_listed_oldest_first_and_can_be_limited(
    conn: redis.Redis, keys: Keys
) -> None:
    """The first dead letter is listed first; `limit` keeps the oldest ones."""
    _fill(conn, keys, 5)

    assert [e.client_msg_id for e in dlq.entries(conn, keys) if isinstance(e, DeadLetter)] == [
        "m0", "m1", "m2", "m3", "m4"]
    assert dlq.entries(conn, keys, limit=2) == [_letter(0), _letter(1)]
    assert dlq.entries(conn, keys, limit=0) == []


def test_unreadable_entries_are_reported_not_fatal(conn: redis.Redis, keys: Keys) -> None:
    """A truncated line and a foreign object are listed as Unreadable between good entries."""
    dlq.push(conn, keys, _letter(0))
    conn.rpush(keys.dlq, '{"client_msg_id": "m1", "thr')
    conn.rpush(keys.dlq, '["not", "an", "object"]')
    dlq.push(conn, keys, _letter(3))

    listed = dlq.entries(conn, keys)

    assert listed[0] == _letter(0) and listed[3] == _letter(3)
    assert isinstance(listed[1], Unreadable) and listed[1].raw.startswith('{"client_msg_id"')
    assert isinstance(listed[2], Unreadable) and "object" in listed[2].error


def test_purge_empties_the_queue_and_says_how_many_it_dropped(
    conn: redis.Redis, keys: Keys
) -> None:
    """Three entries in, three dropped, size zero."""
    _fill(conn, keys, 3)
    assert dlq.size(conn, keys) == 3

    assert dlq.purge(conn, keys) == 3
    assert dlq.size(conn, keys) == 0
    assert dlq.purge(conn, keys) == 0


def test_replay_publishes_every_entry_once_oldest_first_and_empties_the_queue(
    conn: redis.Redis, keys: Keys
) -> None:
    """Each entry goes to `publish` once, in order, and the queue ends empty."""
    ids = _fill(conn, keys, 4)
    published: list[DeadLetter] = []

    report = dlq.replay(conn, keys, published.append)

    assert [e.client_msg_id for e in published] == ids
    assert published[0] == _letter(0)
    assert (report.replayed, report.remaining, report.error, report.busy) == (4, 0, None, False)
    assert dlq.size(conn, keys) == 0


def test_a_failed_publish_stops_the_replay_and_keeps_that_entry_and_the_rest_in_order(
    conn: redis.Redis, keys: Keys
) -> None:
    """The broker fails on the third entry: two are gone, three remain, m2 still first."""
    _fill(conn, keys, 5)
    published: list[str] = []

    def publish(entry: DeadLetter) -> None:
        if entry.client_msg_id == "m2":
            raise ConnectionError("broker down")
        published.append(entry.client_msg_id)

    report = dlq.replay(conn, keys, publish)

    assert published == ["m0", "m1"]
    assert (report.replayed, report.remaining, report.error) == (2, 3, "ConnectionError")
    assert dlq.entries(conn, keys) == [_letter(2), _letter(3), _letter(4)]


def test_replay_keeps_unreadable_entries_for_an_operator_and_reports_them(
    conn: redis.Redis, keys: Keys
) -> None:
    """Garbage cannot be republished: it stays in the queue, counted, and the rest go out."""
    dlq.push(conn, keys, _letter(0))
    conn.rpush(keys.dlq, "not json")
    dlq.push(conn, keys, _letter(2))
    published: list[str] = []

    report = dlq.replay(conn, keys, lambda e: published.append(e.client_msg_id))

    assert published == ["m0", "m2"]
    assert (report.replayed, report.unreadable, report.remaining) == (2, 1, 1)
    assert conn.lrange(keys.dlq, 0, -1) == ["not json"]


def test_entries_dead_lettered_again_during_a_replay_wait_for_the_next_one(
    conn: redis.Redis, keys: Keys
) -> None:
    """A replayed message that fails at once again does not make the replay loop forever."""
    _fill(conn, keys, 2)
    seen: list[str] = []

    def publish(entry: DeadLetter) -> None:
        seen.append(entry.client_msg_id)
        dlq.push(conn, keys, entry)  # the write fails again and comes straight back

    report = dlq.replay(conn, keys, publish)

    assert seen == ["m0", "m1"] and report.replayed == 2 and report.remaining == 2


def test_a_second_replay_while_one_runs_returns_at_once_without_publishing(
    conn: redis.Redis, keys: Keys
) -> None:
    """While the first replay is inside a publish, another finds the lock and reports busy."""
    _fill(conn, keys, 2)
    inside, release = threading.Event(), threading.Event()
    first: list[str] = []

    def slow_publish(entry: DeadLetter) -> None:
        inside.set()
        release.wait(10)
        first.append(entry.client_msg_id)

    runner = threading.Thread(target=dlq.replay, args=(conn, keys, slow_publish))
    runner.start()
    try:
        assert inside.wait(10)
        second: list[DeadLetter] = []
        report = dlq.replay(conn, keys, second.append)
        assert report.busy and second == [] and report.remaining == 2
    finally:
        release.set()
        runner.join(10)
    assert first == ["m0", "m1"] and dlq.size(conn, keys) == 0


def _crashing_replay(url: str, crash_on: str) -> None:
    """Child: replay, and die by SIGKILL right after publishing ``crash_on``."""
    conn = redis.Redis.from_url(url, decode_responses=True)

    def publish(entry: DeadLetter) -> None:
        conn.rpush(PUBLISHED, entry.client_msg_id)
        if entry.client_msg_id == crash_on:
            os.kill(os.getpid(), signal.SIGKILL)

    dlq.replay(conn, Keys(), publish, lock_seconds=0.3)


def test_a_replay_killed_mid_way_loses_nothing_and_the_next_replay_finishes_it(
    conn: redis.Redis, redis_url: str, keys: Keys
) -> None:
    """Killed between publishing m2 and removing it: m2 is published again, nothing is lost."""
    _fill(conn, keys, 5)
    child = multiprocessing.get_context("fork").Process(
        target=_crashing_replay, args=(redis_url, "m2"))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert dlq.size(conn, keys) == 3  # m2 is stranded in flight, still counted
    assert [e.client_msg_id for e in dlq.entries(conn, keys) if isinstance(e, DeadLetter)] == [
        "m2", "m3", "m4"]

    reports: list[dlq.ReplayReport] = []

    def replayed() -> bool:  # the dead replay's lock expires after its 0.3 s
        reports.append(dlq.replay(conn, keys, lambda e: conn.rpush(PUBLISHED, e.client_msg_id)))
        return not reports[-1].busy

    wait_for(replayed, timeout=10, what="the crashed replay's lock to expire")

    assert conn.lrange(PUBLISHED, 0, -1) == ["m0", "m1", "m2", "m2", "m3", "m4"]
    assert reports[-1].replayed == 3 and dlq.size(conn, keys) == 0


def _replay_until_empty(url: str, barrier: Any) -> None:
    """Child: at the gun, replay again and again until the queue is empty."""
    conn = redis.Redis.from_url(url, decode_responses=True)

    def publish(entry: DeadLetter) -> None:
        conn.rpush(PUBLISHED, entry.client_msg_id)
        time.sleep(0.001)

    barrier.wait(30)
    deadline = time.monotonic() + 30
    while dlq.size(conn, Keys()) and time.monotonic() < deadline:
        dlq.replay(conn, Keys(), publish)


def test_four_processes_replaying_at_once_publish_each_entry_exactly_once(
    conn: redis.Redis, redis_url: str, keys: Keys
) -> None:
    """However the replays interleave, 60 entries give 60 publishes, no entry twice."""
    ids = _fill(conn, keys, 60)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    children = [context.Process(target=_replay_until_empty, args=(redis_url, barrier))
                for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0, 0, 0]

    published = conn.lrange(PUBLISHED, 0, -1)
    assert sorted(published) == sorted(ids) and len(published) == len(set(published))
    assert dlq.size(conn, keys) == 0
