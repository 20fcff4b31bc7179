"""The delivery ledger: recorded at enqueue, settled when done, republished when overdue.

Unit tests run on the test Redis with an injected clock. The integration tests
use real processes: a message the broker lost (published nowhere) and the
retries a worker held when it was killed with -9, master and pool, both reach
Zep exactly once through beat's sweep, without waiting out the broker's
one-hour visibility timeout.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_worker.celery_app import sender
from memory_worker.config import Settings
from memory_worker.enqueue import Publisher
from memory_worker.keys import Keys
from memory_worker.ledger import Ledger
from memory_worker.messages import Payload
from memory_worker.writer import Done, Writer
from memory_worker.zep import ZepClient
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import FakeClock
from tests.processes import celery_process, kill_group, wait_for, worker_args

SLACK = 600.0


def record(cmid: str) -> dict[str, Any]:
    payload = Payload(thread_id="t-1", role="user", content=f"text of {cmid}", client_msg_id=cmid)
    return {"task_id": f"task-{cmid}", "payload": payload.to_json()}


@pytest.fixture
def ledger(conn: redis.Redis, keys: Keys) -> Ledger:
    return Ledger(conn, keys, SLACK)


def deadline(conn: redis.Redis, keys: Keys, cmid: str) -> float | None:
    return conn.zscore(keys.write_pending, cmid)


def test_the_first_enqueue_records_the_message_and_a_repeat_changes_nothing(
    ledger: Ledger, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    assert ledger.first_enqueue("m-1", record("m-1"), clock(), 86400) is True
    assert deadline(conn, keys, "m-1") == clock() + SLACK
    assert conn.ttl(keys.write_pending_record("m-1")) > 6 * 86400

    clock.advance(5)
    other = {**record("m-1"), "task_id": "another"}
    assert ledger.first_enqueue("m-1", other, clock(), 86400) is False
    assert deadline(conn, keys, "m-1") == clock() - 5 + SLACK
    assert "task-m-1" in str(conn.hget(keys.write_pending_record("m-1"), "record"))


def test_a_retry_moves_the_deadline_past_its_countdown_and_done_settles(
    ledger: Ledger, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    ledger.first_enqueue("m-1", record("m-1"), clock(), 86400)
    ledger.postpone("m-1", clock(), 300.0)
    assert deadline(conn, keys, "m-1") == clock() + 300 + SLACK

    ledger.settle("m-1", done_marker_ttl_s=60)
    assert deadline(conn, keys, "m-1") is None
    assert conn.exists(keys.write_pending_record("m-1")) == 0
    assert conn.exists(keys.write_done("m-1")) == 1
    ledger.postpone("m-1", clock(), 1.0)  # a late retry does not bring it back
    assert deadline(conn, keys, "m-1") is None


def test_the_sweep_republishes_what_is_overdue_once_and_moves_it_on(
    ledger: Ledger, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    for cmid in ("lost", "fresh"):
        ledger.first_enqueue(cmid, record(cmid), clock(), 86400)
    ledger.postpone("fresh", clock(), 60.0)
    published: list[dict[str, Any]] = []

    clock.advance(SLACK + 1)
    report = ledger.sweep(published.append, clock())
    assert [r["task_id"] for r in published] == ["task-lost"]
    assert (report.republished, report.settled, report.failed) == (1, 0, 0)
    assert deadline(conn, keys, "lost") == clock() + 2 * SLACK

    assert ledger.sweep(published.append, clock()).republished == 0  # not due again yet
    clock.advance(60)  # "fresh" was due after its 60 s countdown plus the slack
    assert ledger.sweep(published.append, clock()).republished == 1
    assert [r["task_id"] for r in published] == ["task-lost", "task-fresh"]


def test_the_sweep_settles_what_is_done_or_lost_its_record_and_skips_what_is_in_flight(
    ledger: Ledger, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    for cmid in ("done", "expired", "writing"):
        ledger.first_enqueue(cmid, record(cmid), clock(), 86400)
    conn.set(keys.write_done("done"), "1")
    conn.delete(keys.write_pending_record("expired"))
    conn.set(keys.write_lease("writing"), "token")
    published: list[dict[str, Any]] = []

    clock.advance(SLACK + 1)
    report = ledger.sweep(published.append, clock())

    assert published == []
    assert (report.settled, report.in_flight) == (2, 1)
    assert conn.zrange(keys.write_pending, 0, -1) == ["writing"]
    assert deadline(conn, keys, "writing") == clock() + 2 * SLACK


def test_an_unreadable_record_leaves_the_ledger_without_a_publish(
    ledger: Ledger, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    ledger.first_enqueue("m-1", record("m-1"), clock(), 86400)
    conn.hset(keys.write_pending_record("m-1"), "record", "{not json")
    published: list[dict[str, Any]] = []
    clock.advance(SLACK + 1)
    assert ledger.sweep(published.append, clock()).settled == 1
    assert published == [] and conn.zcard(keys.write_pending) == 0
    assert conn.exists(keys.write_pending_record("m-1")) == 0


def test_a_failed_republish_is_tried_again_at_the_next_deadline(
    ledger: Ledger, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    ledger.first_enqueue("m-1", record("m-1"), clock(), 86400)
    clock.advance(SLACK + 1)

    def broker_down(record: dict[str, Any]) -> None:
        raise ConnectionError("broker down")

    assert ledger.sweep(broker_down, clock()).failed == 1
    published: list[dict[str, Any]] = []
    clock.advance(2 * SLACK)
    assert ledger.sweep(published.append, clock()).republished == 1


def test_each_republish_doubles_the_wait_before_the_next_up_to_64_times_the_slack(
    ledger: Ledger, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """A message stuck behind a long backlog gets a handful of copies, not one per sweep."""
    ledger.first_enqueue("m-1", record("m-1"), clock(), 86400)
    clock.advance(SLACK)
    gaps = []
    for _ in range(8):
        assert ledger.sweep(lambda record: None, clock()).republished == 1
        gap = (deadline(conn, keys, "m-1") or 0) - clock()
        gaps.append(gap / SLACK)
        clock.advance(gap)
    assert gaps == [2, 4, 8, 16, 32, 64, 64, 64]


def test_enqueue_records_and_delivery_settles(
    read_settings: Settings, conn: redis.Redis, keys: Keys, sim: ZepSimulator, tmp_path: Path,
    clock: FakeClock,
) -> None:
    """Through the real Publisher and Writer: pending after enqueue, gone once stored."""
    settings = dataclasses.replace(read_settings, spool_dir=str(tmp_path))
    sent: list[dict[str, Any]] = []
    publisher = Publisher(settings, conn, lambda task_id, kw: sent.append(kw), clock=clock)
    publisher.enqueue("t-1", "user", "hello", "m-1")
    assert deadline(conn, keys, "m-1") == clock() + settings.redeliver_after_seconds

    writer = Writer(conn, settings, ZepClient(sim.url, "test-key"), clock=clock)
    assert writer.deliver(Payload.from_json(sent[0]["payload"])) == Done("stored")
    assert conn.zcard(keys.write_pending) == 0
    assert conn.exists(keys.write_pending_record("m-1")) == 0


def test_a_replayed_dead_letter_is_on_its_way_again_in_the_ledger(
    env: dict[str, str], conn: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dlq replay` publishes (to the test Redis, no worker) and records the message again."""
    from click.testing import CliRunner

    from memory_worker import dlq
    from memory_worker.cli.main import cli

    dlq.push(conn, keys, dlq.DeadLetter(
        client_msg_id="dl-1", thread_id="t-1", payload=record("dl-1")["payload"],
        reason="client_error", status_code=400, attempts=1, failed_at=time.time()))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    replay = CliRunner().invoke(cli, ["dlq", "replay"])
    assert replay.exit_code == 0, replay.output
    assert conn.llen(keys.dlq) == 0
    assert conn.zscore(keys.write_pending, "dl-1") is not None
    assert "dl-1" in str(conn.hget(keys.write_pending_record("dl-1"), "record"))


# Real processes


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The shared worker environment, with a three-second ledger slack."""
    return {**env, "MEMORY_REDELIVER_AFTER_SECONDS": "3", "MEMORY_PROBE_INTERVAL_SECONDS": "1"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_message_the_broker_lost_reaches_zep_through_the_sweep(
    env: dict[str, str], conn: redis.Redis, sim: ZepSimulator, tmp_path: Path, keys: Keys
) -> None:
    """Published nowhere (as when a worker dies between BRPOP and its unacked record)."""
    settings = Settings.from_env(env)
    lost = Publisher(settings, conn, lambda task_id, kw: None, clock=time.time)
    assert not lost.enqueue("t-lost", "user", "gone in transit", "lost-1").spooled
    with celery_process(worker_args("sweep"), env, tmp_path / "worker.log"), \
            celery_process(["beat", f"--schedule={tmp_path / 'beat'}"], env, tmp_path / "beat.log"):
        wait_for(lambda: len(sim.messages("t-lost")) == 1, 60, "the sweep to republish")
        wait_for(lambda: conn.zcard(keys.write_pending) == 0, 10, "the ledger to settle")
    assert [m["content"] for m in sim.messages("t-lost")] == ["gone in transit"]
    assert "zep_write_republished" in (tmp_path / "worker.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_retries_held_by_a_worker_killed_whole_come_back_without_the_visibility_timeout(
    env: dict[str, str], conn: redis.Redis, sim: ZepSimulator, tmp_path: Path, keys: Keys
) -> None:
    """kill -9 of master and pool while they hold ETA retries: stored once, in seconds."""
    settings = Settings.from_env(env)
    publisher = Publisher(settings, conn, sender(settings), clock=time.time)
    sim.ensure_session("t-held")
    sim.add_fault(Fault(method="POST", path="*/sessions/*/memory", status=503))
    log = tmp_path / "worker.log"
    with celery_process(worker_args("held", 2), env, log) as worker:
        for i in range(3):
            publisher.enqueue("t-held", "user", f"held {i}", f"held-{i}")
        wait_for(lambda: log.read_text().count("zep_write_retry") >= 3, 60, "three retries")
        assert conn.hlen("unacked") >= 1  # the worker holds them, waiting for their ETA
        kill_group(worker.pid)
        worker.wait(timeout=10)
    sim.clear_faults()
    with celery_process(worker_args("after", 2), env, tmp_path / "worker-2.log"), \
            celery_process(["beat", f"--schedule={tmp_path / 'beat'}"], env, tmp_path / "beat.log"):
        wait_for(lambda: len(sim.messages("t-held")) == 3, 60, "the held retries")
        wait_for(lambda: conn.zcard(keys.write_pending) == 0, 10, "the ledger to settle")
    assert sorted(m["content"] for m in sim.messages("t-held")) == [f"held {i}" for i in range(3)]
