"""The write path end to end: real prefork workers, real Redis, SDK → simulator over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from memory_worker.celery_app import sender
from memory_worker.cli.main import cli
from memory_worker.config import Settings
from memory_worker.enqueue import Publisher
from memory_worker.keys import Keys
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import BROKERS, Broker, FakeClock
from tests.processes import (
    ROOT,
    PrivateRabbit,
    PrivateRedis,
    accepted_adds,
    celery_process,
    deliveries_settled,
    project_env,
    rabbit_queues_drained,
    redis_queues_drained,
    wait_for,
    worker_args,
)

MEMORY = "*/sessions/*/memory"
PII_TEXT = "Reach me at deniz.kaya@example.com.tr or +90 533 765 43 21 about flat 4"
LEAKS = ("deniz.kaya", "example.com.tr", "533 765", "765 43 21")
# Every test runs on a Redis broker and on a RabbitMQ one (a fresh vhost each).
ON_BOTH_BROKERS = pytest.mark.parametrize("broker", BROKERS, indirect=True)


@pytest.fixture
def worker_proc(env: dict[str, str], tmp_path: Path, conn: redis.Redis
                ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "worker.log"
    with celery_process(worker_args("writes", concurrency=2), env, log) as proc:
        yield proc, log


@pytest.fixture
def worker(worker_proc: tuple[subprocess.Popen[bytes], Path]) -> Path:
    return worker_proc[1]


@ON_BOTH_BROKERS
@pytest.mark.zep_apis
def test_the_same_message_from_five_processes_is_stored_once(
    env: dict[str, str], conn: redis.Redis, sim: ZepSimulator, worker: Path, broker: Broker,
    zep_api: Any,
) -> None:
    """Five processes enqueue client_msg_id dup-1 at once: one publish, one message in Zep."""
    children = [
        subprocess.Popen([sys.executable, "-m", "tests.proc_enqueue", "t-dup", "dup-1",
                          "same words"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(5)
    ]
    wait_for(lambda: int(conn.get("test:enqueue:ready") or 0) == 5, 60, "5 enqueuers")
    conn.rpush("test:enqueue:go", *["go"] * 5)
    results = [json.loads(c.communicate(timeout=60)[0]) for c in children]
    assert sorted(r["duplicate"] for r in results) == [False, True, True, True, True]
    wait_for(lambda: len(zep_api.stored("t-dup")) == 1, 30, "the write")
    wait_for(lambda: deliveries_settled(conn, Keys(), broker.drained), 30,
             "every copy to be accounted for")
    assert accepted_adds(sim, "dup-1") == 1  # what was sent, not what Zep kept
    assert len(zep_api.stored("t-dup")) == 1


@ON_BOTH_BROKERS
def test_pii_never_reaches_the_broker_the_simulator_or_the_logs(
    publisher: Publisher, conn: redis.Redis, sim: ZepSimulator, env: dict[str, str],
    tmp_path: Path, keys: Keys, broker: Broker,
) -> None:
    """The queued task, the stored message and every log line are free of the email and phone."""
    result = publisher.enqueue("t-pii", "user", PII_TEXT, "pii-1", metadata={"cc": PII_TEXT})
    assert result.redactions["email"] == 2 and result.redactions["phone"] == 2
    [body] = broker.queued()
    assert "[EMAIL]" in body and "[PHONE]" in body
    assert not any(leak in body for leak in LEAKS), body
    log = tmp_path / "pii-worker.log"
    with celery_process(worker_args("pii"), env, log):
        wait_for(lambda: len(sim.messages("t-pii")) == 1, 30, "the write")
    stored = json.dumps(sim.messages("t-pii"))
    assert "[EMAIL]" in stored and "[PHONE]" in stored
    for text in (stored, log.read_text(), json.dumps(conn.keys("*"))):
        assert not any(leak in text for leak in LEAKS)


@ON_BOTH_BROKERS
@pytest.mark.zep_apis
def test_killing_the_worker_process_mid_write_still_stores_the_message_once(
    publisher: Publisher, conn: redis.Redis, sim: ZepSimulator, keys: Keys,
    worker_proc: tuple[subprocess.Popen[bytes], Path], zep_api: Any,
) -> None:
    """kill -9 of the prefork child while Zep holds the request: requeued, stored exactly once
    (on v4, where Zep would store a resend again, by the redelivery's look at what landed)."""
    zep_api.prepare("t-kill")
    sim.add_fault(zep_api.add_fault(process_first=True, latency_ms=1200, times=1))
    publisher.enqueue("t-kill", "user", "survive the kill", "kill-1")
    wait_for(lambda: conn.exists(keys.write_lease("kill-1")) == 1, 30, "the write in flight")
    wait_for(lambda: len(zep_api.stored("t-kill")) == 1, 10, "Zep to store before answering")
    master, log = worker_proc
    children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True,
                              text=True).stdout.split()
    assert children, "the worker has no pool processes"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: conn.exists(keys.write_done("kill-1")) == 1, 60, "the redelivered write")
    assert len(zep_api.stored("t-kill")) == 1
    assert "WorkerLostError" in log.read_text()


@ON_BOTH_BROKERS
@pytest.mark.zep_apis
def test_stored_then_500_is_still_one_message_after_the_worker_retries(
    publisher: Publisher, conn: redis.Redis, sim: ZepSimulator, keys: Keys, worker: Path,
    zep_api: Any,
) -> None:
    """Zep keeps the write and answers 500: the retry asks what landed and sends nothing
    (on v4 Zep would store a second copy of a resend)."""
    zep_api.prepare("t-s5")
    sim.reset_requests()
    sim.add_fault(zep_api.add_fault(process_first=True, status=500, times=1))
    publisher.enqueue("t-s5", "user", "stored before the error", "s5-1")
    wait_for(lambda: conn.exists(keys.write_done("s5-1")) == 1, 30, "the retried write")
    assert len(zep_api.stored("t-s5")) == 1
    assert len(sim.requests("POST", zep_api.add_path)) == 1 and accepted_adds(sim, "s5-1") == 0
    # The one look at the thread's latest messages.
    assert len(sim.requests("GET", zep_api.read_path)) == 1
    assert '"zep_write_retry"' in worker.read_text()


@ON_BOTH_BROKERS
def test_429_schedules_the_retry_after_retry_after(
    publisher: Publisher, conn: redis.Redis, sim: ZepSimulator, worker: Path
) -> None:
    """Retry-After: 7 → the retry's countdown is ≥ 7 s (read from its log line, not waited)."""
    sim.add_fault(Fault(method="POST", path=MEMORY, status=429, headers={"Retry-After": "7"},
                        times=1))
    publisher.enqueue("t-429", "user", "slow down", "rl-1")

    def retry_line() -> dict[str, Any] | None:
        for line in worker.read_text().splitlines():
            if '"zep_write_retry"' in line and '"rl-1"' in line:
                return dict(json.loads(line[line.index("{"):]))
        return None

    wait_for(lambda: retry_line() is not None, 30, "the retry to be scheduled")
    line = retry_line()
    assert line is not None and line["reason"] == "rate_limited" and line["countdown"] >= 7
    assert line["failures"] == 0  # a rate limit spends no attempt
    assert conn.hget("mem:write:circuit:v1", "consecutive") in (None, "0")


@ON_BOTH_BROKERS
def test_429s_outlasting_every_retry_still_store_the_message(
    publisher: Publisher, conn: redis.Redis, sim: ZepSimulator, keys: Keys,
    env: dict[str, str], tmp_path: Path,
) -> None:
    """MEMORY_WRITE_MAX_RETRIES=1 and four 429s in a row: waited out, stored, no dead letter."""
    sim.ensure_session("t-storm")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=429, headers={"Retry-After": "0"},
                        times=4))
    strict = {**env, "MEMORY_WRITE_MAX_RETRIES": "1"}
    with celery_process(worker_args("storm"), strict, tmp_path / "storm.log"):
        publisher.enqueue("t-storm", "user", "rate limited for a while", "storm-1")
        wait_for(lambda: conn.exists(keys.write_done("storm-1")) == 1, 60, "the stored write")
    assert conn.llen(keys.dlq) == 0
    assert [r.status for r in sim.requests("POST", MEMORY)] == [429, 429, 429, 429, 200]


@ON_BOTH_BROKERS
def test_a_rejected_key_past_the_max_age_dead_letters_as_expired(
    publisher: Publisher, conn: redis.Redis, sim: ZepSimulator, keys: Keys,
    env: dict[str, str], tmp_path: Path,
) -> None:
    """401 forever with MEMORY_WRITE_MAX_AGE_SECONDS=3: waits (no attempt spent), then expired."""
    sim.ensure_session("t-key")
    sim.add_fault(Fault(method="POST", path=MEMORY, status=401))
    short = {**env, "MEMORY_WRITE_MAX_AGE_SECONDS": "3", "MEMORY_WRITE_MAX_RETRIES": "0"}
    log = tmp_path / "expiry.log"
    with celery_process(worker_args("expiry"), short, log):
        # Enqueued once the worker consumes: its start-up must not use up the 3 s.
        wait_for(lambda: "ready." in log.read_text(errors="replace"), 60, "the worker")
        publisher.enqueue("t-key", "user", "the key was rotated", "key-1")
        wait_for(lambda: conn.llen(keys.dlq) == 1, 60, "the expired dead letter")
    entry = json.loads(conn.lindex(keys.dlq, 0) or "")
    assert entry["client_msg_id"] == "key-1" and entry["reason"] == "expired"
    assert len(sim.requests("POST", MEMORY)) >= 2  # retried, though no retry was allowed


@ON_BOTH_BROKERS
def test_a_400_is_dead_lettered_at_once_and_replay_delivers_it(
    publisher: Publisher, conn: redis.Redis, sim: ZepSimulator, keys: Keys, worker: Path,
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused write lands in mem:write:dlq after one attempt; `dlq replay` delivers it once."""
    sim.ensure_session("t-400")
    fault = sim.add_fault(Fault(method="POST", path=MEMORY, status=400,
                                body={"message": "bad request"}))
    publisher.enqueue("t-400", "user", "rejected at first", "dl-1")
    wait_for(lambda: conn.llen(keys.dlq) == 1, 30, "the dead letter")
    # The DLQ holds it now, not the ledger (settled just after the push).
    wait_for(lambda: conn.zscore(keys.write_pending, "dl-1") is None, 10, "the ledger to settle")
    entry = json.loads(conn.lindex(keys.dlq, 0) or "")
    assert entry["client_msg_id"] == "dl-1" and entry["status_code"] == 400
    assert entry["attempts"] == 1 and entry["reason"] == "client_error"
    assert len(sim.requests("POST", MEMORY)) == 1

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    listing = CliRunner().invoke(cli, ["dlq", "list"])
    assert listing.exit_code == 0 and "dl-1" in listing.stdout
    sim.remove_fault(fault)
    replay = CliRunner().invoke(cli, ["dlq", "replay"])
    assert replay.exit_code == 0, replay.output
    assert "Replayed 1" in replay.stdout
    wait_for(lambda: len(sim.messages("t-400")) == 1, 30, "the replayed write")
    assert conn.llen(keys.dlq) == 0
    wait_for(lambda: conn.zscore(keys.write_pending, "dl-1") is None, 10, "the ledger to settle")


@ON_BOTH_BROKERS
def test_a_6000_character_message_arrives_as_three_chunks_once(
    publisher: Publisher, sim: ZepSimulator, conn: redis.Redis, keys: Keys, worker: Path
) -> None:
    """Ordered chunks of ≤2500 characters that join back to the content."""
    content = ("The villa has a sea view and a garden. " * 200)[:6000]
    publisher.enqueue("t-long", "assistant", content, "long-1")
    wait_for(lambda: conn.exists(keys.write_done("long-1")) == 1, 30, "the long write")
    stored = sim.messages("t-long")
    assert len(stored) == 3 and "".join(m["content"] for m in stored) == content
    assert [m["metadata"]["chunk"] for m in stored] == [1, 2, 3]


@pytest.mark.zep_apis
def test_a_backlog_of_one_thread_goes_in_few_adds_each_message_once(
    publisher: Publisher, sim: ZepSimulator, conn: redis.Redis, env: dict[str, str],
    tmp_path: Path, broker: Broker, zep_api: Any,
) -> None:
    """Sixty messages queued while no worker runs: two workers send them in adds of
    several (each add in enqueue order), every message accepted once."""
    zep_api.prepare("t-backlog")
    cmids = [f"backlog-{i:02d}" for i in range(60)]
    for i, cmid in enumerate(cmids):
        publisher.enqueue("t-backlog", "user" if i % 2 == 0 else "assistant", f"turn {i}", cmid)
    sim.reset_requests()
    with celery_process(worker_args("backlog", concurrency=2), env, tmp_path / "backlog.log"):
        wait_for(lambda: len(zep_api.stored("t-backlog")) == 60, 60, "the backlog")
        wait_for(lambda: deliveries_settled(conn, Keys(), broker.drained), 60,
                 "every delivery to end")
    assert [accepted_adds(sim, cmid) for cmid in cmids] == [1] * 60
    assert len(sim.requests("POST", zep_api.add_path)) <= 30
    assert sorted(m["metadata"]["client_msg_id"] for m in zep_api.stored("t-backlog")) == cmids


@pytest.mark.parametrize("kind", BROKERS)
def test_a_stopped_broker_spools_and_everything_is_delivered_once_it_returns(
    kind: str, redis_url: str, conn: redis.Redis, sim: ZepSimulator, tmp_path: Path, keys: Keys
) -> None:
    """Broker down: spooled=True within 1 s; broker back: each spooled message stored once."""
    # A broker of the test's own, stopped and started again with its data.
    broker: PrivateRedis | PrivateRabbit
    if kind == "redis":
        redis_broker = PrivateRedis(tmp_path / "broker").start()
        broker, url = redis_broker, redis_broker.url
        queue = redis.Redis.from_url(url)  # the queue lives on the broker here
        drained = lambda: redis_queues_drained(queue)  # noqa: E731
    else:
        rabbit = PrivateRabbit(tmp_path / "broker").start()
        broker, url = rabbit, rabbit.url()
        drained = lambda: rabbit_queues_drained(rabbit, "/")  # noqa: E731
    try:
        env = project_env(redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                          ZEP_API_URL=sim.url, ZEP_API_KEY="test-key",
                          CELERY_BROKER_URL=url, MEMORY_SPOOL_DIR=str(tmp_path / "spool"))
        settings = Settings.from_env(env)
        publisher = Publisher(settings, conn, sender(settings), clock=FakeClock())
        with celery_process(worker_args("spool"), env, tmp_path / "worker.log"):
            assert not publisher.enqueue("t-sp", "user", "before the outage", "sp-0").spooled
            wait_for(lambda: len(sim.messages("t-sp")) == 1, 30, "the first write")
            broker.stop()
            for i in range(1, 4):
                started = time.perf_counter()
                result = publisher.enqueue("t-sp", "user", f"during the outage {i}", f"sp-{i}")
                assert result.spooled and time.perf_counter() - started < 1.0
            assert publisher.outbox.pending() == 3
            broker.start()
            wait_for(lambda: publisher.outbox.pending() == 0, 60, "the outbox to drain")
            wait_for(lambda: len(sim.messages("t-sp")) == 4, 60, "the spooled writes")
            wait_for(lambda: deliveries_settled(conn, keys, drained), 30,
                     "every copy accounted for")
        assert [accepted_adds(sim, f"sp-{i}") for i in range(4)] == [1, 1, 1, 1]
        contents = [m["content"] for m in sim.messages("t-sp")]
        assert contents == ["before the outage"] + [f"during the outage {i}" for i in (1, 2, 3)]
    finally:
        broker.stop()
