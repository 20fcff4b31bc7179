"""The state store on a Redis Cluster (``REDIS_CLUSTER``): three masters of the test's own.

A private cluster (three masters, no replicas, on loopback) is started once for
the module and emptied before each test; a private standalone Redis is the
Celery broker. It proves that:

- every script the project runs, and every multi-key command, touches one slot:
  an in-process workload over the read path (sync and async), the guard, the
  probe, enqueue, the writer, the breaker, the ledger's sweep and the dead
  letters records each call's keys, and every script the clients registered
  must have run;
- processes hammering reads at a failing Zep make one downgrade per incident;
- of processes probing at once, one sends the probe;
- a real Celery worker writes each message to Zep exactly once (counted from the
  simulator's request log), duplicates and failed attempts included;
- ``memory-worker status``, ``force``, ``clear`` and ``invalidate`` work on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, multiprocess
from redis.crc import key_slot

from memory_worker import cache, dlq, modes
from memory_worker.config import Settings
from memory_worker.enqueue import Publisher
from memory_worker.keys import Keys
from memory_worker.ledger import Ledger
from memory_worker.messages import Payload
from memory_worker.modes import ForcedRecord
from memory_worker.redis_cluster import AsyncStateCluster, StateCluster
from memory_worker.runtime import Runtime
from memory_worker.status import read_status
from memory_worker.writer import Done, Writer
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import FakeClock
from tests.processes import (
    ROOT,
    PrivateCluster,
    PrivateRedis,
    SupervisedWorker,
    accepted_adds,
    project_env,
    redis_queues_drained,
    wait_for,
)

MEMORY_CLI = str(Path(sys.executable).with_name("memory-worker"))
MEMORY = "*/sessions/*/memory"
KEYS = Keys("mem:", cluster=True)
# Commands that name several keys: each must stay in one slot.
_SCRIPTS = {"EVAL", "EVALSHA"}
_MULTI_KEY = {"MGET", "DEL", "UNLINK", "EXISTS"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    with PrivateCluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path_factory.mktemp("broker")) as server:
        yield server


@pytest.fixture
def state(cluster: PrivateCluster, broker: PrivateRedis) -> Iterator[Any]:
    """The cluster (and the broker), emptied around the test; a client for look-ups."""
    cluster.flush()
    with broker.client() as queue:
        queue.flushall()
    client = cluster.client()
    yield client
    client.close()


@pytest.fixture
def env(cluster: PrivateCluster, broker: PrivateRedis, sim: ZepSimulator,
        tmp_path: Path) -> dict[str, str]:
    return project_env(cluster.url, REDIS_CLUSTER="1", CELERY_BROKER_URL=broker.url,
                       FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                       ZEP_API_URL=sim.url, ZEP_API_KEY="test-key",
                       MEMORY_SPOOL_DIR=str(tmp_path / "spool"),
                       MEMORY_LATENCY_DOWNGRADE_MS="0",
                       MEMORY_REDELIVER_AFTER_SECONDS="3")


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([MEMORY_CLI, *args], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, f"memory-worker {' '.join(args)}: {done.stderr}"
    return done.stdout


class Recorder:
    """Every command the project's cluster clients send, and every script they register."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self.registered: dict[str, str] = {}
        for cls in (StateCluster, AsyncStateCluster):
            self._wrap(monkeypatch, cls)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
        send, register = cls.execute_command, cls.register_script

        def execute_command(client: Any, *args: Any, **kwargs: Any) -> Any:
            self.commands.append(args)
            return send(client, *args, **kwargs)

        def register_script(client: Any, script: str) -> Any:
            registered = register(client, script)
            self.registered[registered.sha] = script
            return registered

        monkeypatch.setattr(cls, "execute_command", execute_command)
        monkeypatch.setattr(cls, "register_script", register_script)

    def keys_by_call(self) -> list[tuple[str, list[str]]]:
        found = []
        for args in self.commands:
            name = str(args[0]).upper()
            if name in _SCRIPTS:
                found.append((name, [str(k) for k in args[3:3 + int(args[2])]]))
            elif name in _MULTI_KEY:
                found.append((name, [str(k) for k in args[1:]]))
        return found

    def scripts_run(self) -> set[str]:
        return {str(args[1]) for args in self.commands if str(args[0]).upper() == "EVALSHA"}


def cluster_settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def test_every_script_and_multi_key_command_touches_one_slot(
    state: Any, env: dict[str, str], sim: ZepSimulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reads, the guard, the probe, enqueue, the writer, the breaker, the sweep and the
    dead letters, in one process: each script call's keys hash to one slot, and every
    script a cluster client registered ran."""
    recorder = Recorder(monkeypatch)
    settings = dataclasses.replace(cluster_settings(env), downgrade_hold_seconds=60)
    clock = FakeClock(time.time())
    runtime = Runtime(settings, clock=clock)
    sim.seed("known", summary="s")

    # Reads: a miss, a hit, a 404, a 429 pause, failures to a downgrade; async reads too.
    for view in ("summary", "recent"):
        runtime.fetch("known", view)
        runtime.fetch("known", view)
    runtime.fetch("unknown", "summary")

    async def async_reads(view: str) -> list[Any]:
        return list(await asyncio.gather(*(runtime.afetch(t, view) for t in ("known", "x"))))

    assert [meta["source"] for _, meta in asyncio.run(async_reads("facts"))] == ["zep", "error"]
    assert asyncio.run(async_reads("facts"))[0][1]["cached"] is True
    sim.add_fault(Fault(method="GET", path=MEMORY, status=429, times=1))
    runtime.fetch("paused", "summary")
    clock.advance(10)
    failing = sim.add_fault(Fault(method="GET", path=MEMORY, status=503))
    for thread in ("a", "b", "c"):
        runtime.fetch(thread, "summary")
    assert runtime.fetch("d", "summary")[1]["source"] == "write_only_forced"
    assert {meta["source"] for _, meta in asyncio.run(async_reads("recent"))} == {
        "write_only_forced"}
    # The probe: one that fails (re-forced), one that restores.
    clock.advance(61)
    assert runtime.prober().run().result.value == "failure"
    sim.remove_fault(failing)
    clock.advance(200)  # past the escalated hold (at most 132 s), within its grace
    assert runtime.prober().run().result.value == "success"
    # Slow reads: the latency downgrade (the one guard script a read runs on its own).
    slow = Runtime(dataclasses.replace(settings, latency_downgrade_ms=50), clock=clock)
    lagging = sim.add_fault(Fault(method="GET", path=MEMORY, latency_ms=80))
    for i in range(5):
        sim.seed(f"slow-{i}", summary="s")
        slow.fetch(f"slow-{i}", "summary")
    assert slow.fetch("slow-0", "recent")[1]["source"] == "write_only_forced"
    sim.remove_fault(lagging)

    # Writes: an enqueue and its duplicate, a failed attempt, a stored one, a redelivery.
    sent: list[dict[str, Any]] = []
    publisher = Publisher(settings, runtime.ops_conn, lambda _, kw: sent.append(kw),
                          clock=clock)
    assert not publisher.enqueue("t-1", "user", "hello", "m-1").duplicate
    assert publisher.enqueue("t-1", "user", "hello", "m-1").duplicate
    writer = Writer(runtime.ops_conn, settings, runtime.zep, clock=clock, keys=KEYS)
    payload = Payload.from_json(sent[0]["payload"])
    adds = sim.add_fault(Fault(method="POST", path=MEMORY, status=503, times=1))
    assert not isinstance(writer.deliver(payload), Done)
    sim.remove_fault(adds)
    clock.advance(10)
    assert writer.deliver(payload) == Done("stored")
    assert writer.deliver(payload) == Done("already_done")
    # The breaker on its own; the sweep of an entry whose message is overdue and done.
    breaker = writer._breaker
    breaker.allow()
    breaker.record_success()
    ledger = Ledger(runtime.ops_conn, KEYS, settings.redeliver_after_seconds)
    publisher.enqueue("t-1", "user", "again", "m-2")
    ledger.sweep(lambda record: None, clock() + 3600)
    # Dead letters, status, the cache, an operator's force and clear.
    conn = runtime.ops_conn
    dlq.push(conn, KEYS, {"client_msg_id": "m-3", "thread_id": "t-1", "payload": {},
                          "reason": "client_error", "status_code": 400, "attempts": 1,
                          "failed_at": clock()})
    dlq.replay(conn, KEYS, lambda letter: None)
    read_status(conn, settings, KEYS, now=clock())
    cache.invalidate(conn, KEYS, "known")
    modes.force(conn, KEYS, ForcedRecord.new(reason="ops", source="ops", now=clock(),
                                             hold_seconds=60),
                base=modes.Mode.READ_WRITE, grace_seconds=120, now=clock())
    modes.clear(conn, KEYS, base=modes.Mode.READ_WRITE, now=clock(), grace_seconds=120,
                reason="ops_clear")

    calls = recorder.keys_by_call()
    assert sum(name in _SCRIPTS for name, _ in calls) > 30
    crossing = [(name, keys) for name, keys in calls if len({key_slot(k.encode())
                                                            for k in keys}) > 1]
    assert crossing == []
    never_run = {sha: script.strip().splitlines()[-2:]
                 for sha, script in recorder.registered.items()
                 if sha not in recorder.scripts_run()}
    assert never_run == {}, "scripts this workload never ran against the cluster"


def start_children(env: dict[str, str], name: str, count: int, *args: str
                   ) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen([sys.executable, "-m", "tests.proc_cluster", *args], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
            for _ in range(count)]


def fire(state: Any, name: str, children: list[subprocess.Popen[str]]
         ) -> list[tuple[str, str]]:
    """Wait for every child to be ready, fire the gun, collect their output."""
    try:
        wait_for(lambda: int(state.get(f"test:ready:{name}") or 0) == len(children)
                 or any(c.poll() is not None for c in children), 60, "the children")
        assert all(c.poll() is None for c in children), [c.communicate() for c in children]
        state.rpush(f"test:go:{name}", *["go"] * len(children))
        outputs = [c.communicate(timeout=60) for c in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert all(c.returncode == 0 for c in children), [err[-2000:] for _, err in outputs]
    return outputs


def events(outputs: list[tuple[str, str]], event: str) -> list[dict[str, Any]]:
    found = []
    for _, err in outputs:
        for line in err.splitlines():
            if line.startswith("{") and json.loads(line).get("event") == event:
                found.append(json.loads(line))
    return found


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_processes_hammering_reads_at_a_failing_zep_make_one_downgrade(
    state: Any, env: dict[str, str], sim: ZepSimulator, tmp_path: Path,
) -> None:
    """Four processes of four threads read fresh threads while Zep answers 503: one
    forced record, one memory_mode_forced line, downgrades_total 1; then reads are
    blocked everywhere."""
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    child_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    children = start_children(child_env, "reads", 4, "reads", "reads", "4", "1.5")
    wait_for(lambda: int(state.get("test:ready:reads") or 0) == len(children), 60,
             "the readers to warm up")
    sim.add_fault(Fault(method="GET", path=MEMORY, status=503))
    outputs = fire(state, "reads", children)

    forced = events(outputs, "memory_mode_forced")
    assert len(forced) == 1 and forced[0]["reason"] == "consecutive_failures", forced
    record = json.loads(state.get(KEYS.forced) or "null")
    assert record["source"] == "guard" and record["reason"] == "consecutive_failures"
    sources: dict[str, int] = {}
    for out, _ in outputs:
        for source, n in json.loads(out).items():
            sources[source] = sources.get(source, 0) + n
    assert sources.get("write_only_forced", 0) > 100 and set(sources) <= {
        "error", "write_only_forced"}, sources
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("memory_zep_downgrades_total",
                                     {"reason": "consecutive_failures"}) == 1.0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_of_processes_probing_at_once_one_sends_the_probe(
    state: Any, env: dict[str, str], sim: ZepSimulator,
) -> None:
    """A hold that is over, six processes probing at the same moment against a slow Zep:
    one request reaches Zep, one probe restores reads, the others find the lock."""
    now = time.time()
    record = ForcedRecord(reason="consecutive_failures", source="guard", forced_at=now - 400,
                          until=now - 100, hold_seconds=300)
    state.set(KEYS.forced, record.to_json(), px=600_000)
    sim.add_fault(Fault(method="GET", path="*", latency_ms=400))
    children = start_children({**env, "MEMORY_PROBE_TIMEOUT_MS": "3000"}, "probe", 6,
                              "probe", "probe")
    results = sorted(out.strip() for out, _ in fire(state, "probe", children))
    assert results.count("success") == 1, results
    assert set(results) <= {"success", "locked", "skipped"}, results
    assert len(sim.requests(method="GET")) == 1
    assert not state.exists(KEYS.forced)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_real_worker_writes_each_message_to_zep_exactly_once(
    state: Any, env: dict[str, str], broker: PrivateRedis, sim: ZepSimulator, tmp_path: Path,
) -> None:
    """Messages enqueued twice, one long enough for chunks, adds failing now and then: each
    chunk of each message accepted by Zep once, the ledger empty, every message done."""
    settings = cluster_settings(env)
    from memory_worker.celery_app import sender
    from memory_worker.enqueue import enqueue_redis

    publisher = Publisher(settings, enqueue_redis(settings), sender(settings), clock=time.time)
    sim.add_fault(Fault(method="POST", path=MEMORY, status=503, times=4))
    ids = [f"w-{n}" for n in range(20)]
    with SupervisedWorker("cluster", 2, env, tmp_path / "worker.log"):
        for n, client_msg_id in enumerate(ids):
            content = "x" * 6000 if n == 0 else f"message {n}"
            for _ in range(2):
                publisher.enqueue(f"thread-{n % 3}", "user", content, client_msg_id)
        wait_for(lambda: all(accepted_adds(sim, i) >= 1 for i in ids), 60,
                 "every message in Zep")
        queue = broker.client()
        wait_for(lambda: state.zcard(KEYS.write_pending) == 0 and redis_queues_drained(queue),
                 60, "the ledger and the broker to drain")
    stored = {(i, chunk): sum(1 for r in sim.requests_carrying(i, chunk)
                              if r.status is not None and 200 <= r.status < 300)
              for i in ids for chunk in ((1, 2, 3) if i == "w-0" else (None,))}
    assert {chunk: n for chunk, n in stored.items() if n != 1} == {}
    assert all(state.exists(KEYS.write_done(i)) for i in ids)


def test_status_force_clear_and_invalidate_work_on_the_cluster(
    state: Any, env: dict[str, str],
) -> None:
    """The CLI, configured for the cluster, reads and changes its state."""
    assert json.loads(cli(env, "status", "--json"))["forced"] is None
    cli(env, "force", "maintenance", "--ttl", "120")
    status = json.loads(cli(env, "status", "--json"))
    assert status["effective_mode"] == "write_only"
    assert status["forced"]["reason"] == "maintenance" and status["forced"]["source"] == "ops"
    assert json.loads(state.get(KEYS.forced))["reason"] == "maintenance"
    assert "Forced mode: write_only (reason=maintenance" in cli(env, "status")
    assert "Cleared forced mode" in cli(env, "clear")
    assert not state.exists(KEYS.forced)
    for key in KEYS.contexts("t-9"):
        state.set(key, "{}")
    assert "3 cache entries" in cli(env, "invalidate", "t-9")
    assert not any(state.exists(key) for key in KEYS.contexts("t-9"))
