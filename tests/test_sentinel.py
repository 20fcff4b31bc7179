"""The state Redis managed by Sentinel: its master killed under traffic (SPEC §3, §5, §6).

A private master, one replica and three sentinels (quorum 2) on loopback are
the state Redis (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``; ``REDIS_URL``
names a port nothing listens on, so every client must go through the
sentinels). A separate private Redis is the broker. Web-like threads read and
enqueue without pause while a real prefork worker and beat, configured the same
way, mirror to the Zep simulator; the master is killed with -9 and the
sentinels promote the replica.

It proves that:

- no read raises and each returns within ``MEMORY_READ_TIMEOUT_MS`` + 25 ms,
  before, during and after the failover (reads fail open while no master
  answers);
- every enqueue returns, published or spooled, and every message of the whole
  test is accepted by Zep exactly once (counted from the simulator's request
  log: adds carrying the message answered 2xx);
- every client finds the new master by itself: enqueues publish directly again,
  reads hit the cache again, the worker stores, and the delivery ledger ends
  empty on the new master;
- the guard's downgrade (a forced record written by the read path), the CLI's
  ``status`` and ``clear``, and the write circuit all work on the new master.

Replication is asynchronous, so a write acknowledged by the old master just
before the kill may be missing on the new one. What that can cost here is a
done-marker, an enqueue marker or a ledger entry: exactly once then rests on
Zep refusing a second message under the same derived uuid, which this test
counts (a refused add is not a 2xx).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memory_worker.breaker import Breaker, BreakerPolicy, CircuitState
from memory_worker.celery_app import WRITE_QUEUE, sender
from memory_worker.config import Settings
from memory_worker.connections import state_client
from memory_worker.enqueue import Publisher, enqueue_redis
from memory_worker.keys import Keys
from memory_worker.runtime import Runtime
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.processes import (
    PrivateRedis,
    PrivateSentinels,
    SupervisedWorker,
    accepted_adds,
    celery_process,
    deliveries_settled,
    free_port,
    project_env,
    redis_queues_drained,
    wait_for,
)
from tests.test_redis_outage import READ_THREADS, SLACK_S, Traffic

MEMORY_CLI = str(Path(sys.executable).with_name("memory-worker"))
MEMORY = "*/sessions/*/memory"
REDELIVER_AFTER_S = 3


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[PrivateSentinels]:
    with PrivateSentinels(tmp_path / "sentinel") as group:
        yield group


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path / "broker", appendonly=True) as server:
        yield server


@pytest.fixture
def env(sentinels: PrivateSentinels, broker: PrivateRedis, sim: ZepSimulator,
        tmp_path: Path) -> dict[str, str]:
    # Nothing listens at REDIS_URL's host and port: only its database is used.
    return project_env(f"redis://127.0.0.1:{free_port()}/0",
                       REDIS_SENTINELS=sentinels.addresses,
                       REDIS_SENTINEL_MASTER=PrivateSentinels.SERVICE,
                       CELERY_BROKER_URL=broker.url,
                       FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                       ZEP_API_URL=sim.url, ZEP_API_KEY="test-key",
                       MEMORY_SPOOL_DIR=str(tmp_path / "spool"),
                       MEMORY_DOWNGRADE_HOLD_SECONDS="60",
                       MEMORY_REDELIVER_AFTER_SECONDS=str(REDELIVER_AFTER_S))


@pytest.fixture
def runtime(env: dict[str, str]) -> Iterator[Runtime]:
    rt = Runtime(Settings.from_env(env))
    yield rt
    rt.zep.close()


def cli(env: dict[str, str], *args: str) -> str:
    """``memory-worker ARGS`` in a process of its own, configured by ``env``."""
    done = subprocess.run([MEMORY_CLI, *args], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, f"memory-worker {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_sentinel_failover_under_traffic_keeps_reads_in_budget_and_stores_each_write_once(
    sentinels: PrivateSentinels, broker: PrivateRedis, sim: ZepSimulator,
    env: dict[str, str], runtime: Runtime, keys: Keys, tmp_path: Path,
) -> None:
    """Master killed: reads fail open within budget, enqueues spool or publish; the
    replica promoted: every client follows it, each message is stored once, and the
    guard, the CLI and the breaker work on the new master."""
    settings = runtime.settings
    publisher = Publisher(settings, enqueue_redis(settings), sender(settings), clock=time.time)
    for thread_id in READ_THREADS:
        sim.seed(thread_id, summary=f"summary of {thread_id}")

    with SupervisedWorker("sentinel", 2, env, tmp_path / "worker.log") as worker, \
            celery_process(["beat", f"--schedule={tmp_path / 'beat'}"], env,
                           tmp_path / "beat.log"), \
            contextlib.ExitStack() as stack:
        # Given a worker that stores (its start, CPU-bound, is over before reads are timed).
        publisher.enqueue("chat-warm-up", "user", "warm-up", "warm-up-1")
        wait_for(lambda: accepted_adds(sim, "warm-up-1") == 1, 60, "the worker to store")
        for thread_id in READ_THREADS:  # and a cache the first master holds
            assert runtime.fetch(thread_id, "summary")[1]["source"] == "zep"
        traffic = stack.enter_context(Traffic(runtime, publisher))
        # And traffic flowing through the first master.
        wait_for(lambda: sum(accepted_adds(sim, s.client_msg_id) for s in traffic.sent()) >= 10,
                 60, "the first writes")
        wait_for(lambda: any(r.meta["cached"] for r in traffic.reads()), 10, "cache hits")
        first = sentinels.master_address()
        assert first is not None

        # When the master is killed and the sentinels promote the replica.
        sentinels.kill_master()
        killed = time.perf_counter()
        wait_for(lambda: sentinels.master_address() not in (None, first), 30,
                 "the sentinels to name a new master")
        promoted = time.perf_counter()
        new = sentinels.master_address()
        assert new is not None
        master = sentinels.server_at(new[1]).client()

        # Then every client finds it: enqueues publish directly, reads hit its cache.
        wait_for(lambda: any(not s.spooled for s in traffic.sent(promoted)), 30,
                 "a direct publish after the promotion")
        wait_for(lambda: publisher.outbox.pending() == 0, 30, "the outbox to drain")
        wait_for(lambda: any(r.meta["cached"] for r in traffic.reads(promoted)), 30,
                 "cache hits on the new master")
        direct = next(s for s in traffic.sent(promoted) if not s.spooled)
        spooled_after = sum(s.spooled for s in traffic.sent(promoted) if s.started < direct.started)
        assert master.exists(keys.enqueued(direct.client_msg_id))

        # And the guard downgrades on the new master once Zep fails reads.
        fault = sim.add_fault(Fault(method="GET", path=MEMORY, status=503))
        fresh = (f"guard-{n}" for n in itertools.count())
        wait_for(lambda: runtime.fetch(next(fresh), "summary")[1]["source"]
                 == "write_only_forced", 10, "the guard's downgrade")
        forced = json.loads(master.get(keys.forced) or "null")
        assert forced is not None and (forced["source"], forced["reason"]) == (
            "guard", "consecutive_failures")
        # And a Sentinel-configured CLI process sees it, and clears it.
        status = json.loads(cli(env, "status", "--json"))
        assert status["effective_mode"] == "write_only"
        assert status["forced"]["reason"] == "consecutive_failures"
        sim.remove_fault(fault)
        cli(env, "clear")
        cleared = time.perf_counter()
        assert not master.exists(keys.forced)
        wait_for(lambda: traffic.every_reader_did(3, cleared), 10, "reads after the clear")
        assert {r.source for r in traffic.reads(cleared)} == {("zep", None)}

        traffic.stop()
        assert traffic.errors == []
        reads = traffic.reads()
        failover = [r for r in reads if killed <= r.started < promoted]
        slowest = max(reads, key=lambda r: r.seconds)
        sent = traffic.sent()
        print(f"\npromotion {promoted - killed:.2f} s after the kill; {len(reads)} reads "
              f"({len(failover)} during the failover, slowest "
              f"{max((r.seconds for r in failover), default=0) * 1000:.1f} ms), slowest "
              f"overall {slowest.seconds * 1000:.1f} ms ({slowest.started - killed:+.2f} s from "
              f"the kill, {slowest.source}); {len(sent)} enqueues, "
              f"{sum(s.spooled for s in sent)} spooled ({spooled_after} after the promotion, the "
              f"first direct publish {direct.started - promoted:+.2f} s from it); worker "
              f"exits {worker.exits}")
        assert slowest.seconds <= settings.read_timeout_ms / 1000 + SLACK_S, slowest

        # And every message of the test is accepted by Zep exactly once, the ledger
        # emptied on the new master.
        wait_for(lambda: all(accepted_adds(sim, s.client_msg_id) >= 1 for s in sent), 60,
                 "every message in Zep")
        queue = broker.client()
        wait_for(lambda: deliveries_settled(master, keys, lambda: redis_queues_drained(queue)),
                 60, "the broker and the ledger to drain")
        twice = {s.client_msg_id: n for s in sent
                 if (n := accepted_adds(sim, s.client_msg_id)) != 1}
        assert twice == {}, f"not stored exactly once: {twice}"

    # And the write circuit opens on the new master, as the CLI reports it.
    breaker = Breaker(state_client(settings), keys,
                      policy=BreakerPolicy(failure_run_seconds=0.0))
    for _ in range(breaker.policy.failure_threshold):
        breaker.record_failure()
    assert breaker.state() is CircuitState.OPEN
    assert master.hget(keys.write_circuit, "state") == "open"
    assert json.loads(cli(env, "status", "--json"))["write_circuit"] == "open"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_default_broker_with_sentinels_is_their_master_through_kombus_sentinel_transport(
    sentinels: PrivateSentinels,
) -> None:
    """CELERY_BROKER_URL unset: a publish lands in the master the sentinels name, in the
    database of REDIS_URL, through kombu's sentinel:// transport and its master_name."""
    settings = Settings.from_env({
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/3",
        "REDIS_SENTINELS": sentinels.addresses,
        "REDIS_SENTINEL_MASTER": PrivateSentinels.SERVICE,
    })
    assert settings.broker_url.startswith("sentinel://")
    sender(settings)("task-1", {"client_msg_id": "m-1"})
    address = sentinels.master_address()
    assert address is not None
    with redis.Redis(port=address[1], db=3, socket_timeout=1) as master:
        assert master.llen(WRITE_QUEUE) == 1
