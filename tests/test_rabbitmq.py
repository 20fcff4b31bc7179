"""RabbitMQ as the broker: what the project declares there, and why the ledger's sweep is off.

The write path's integration tests run on both brokers (``test_write_integration.py``,
``test_recovery_integration.py``); these are RabbitMQ's own: the settings, the queues
a real worker declares, and a worker killed with -9 mid-load with no sweep to help.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from kombu.transport.native_delayed_delivery import calculate_routing_key

from memory_worker.broker import is_amqp, sweeps_ledger, whole_seconds
from memory_worker.celery_app import CONTROL_QUEUE, WRITE_QUEUE, celery_config
from memory_worker.config import Settings
from memory_worker.enqueue import Publisher
from memory_worker.keys import Keys
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import Broker
from tests.processes import (
    PrivateRabbit,
    SupervisedWorker,
    accepted_adds,
    deliveries_settled,
    wait_for,
)

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/memory"
MEMORY = "*/sessions/*/memory"


def test_rabbitmq_queues_are_quorum_queues_on_topic_exchanges_with_confirms() -> None:
    """amqp:// → quorum queues, topic exchanges (native delayed delivery), confirmed publishes."""
    conf = celery_config(Settings(celery_broker_url=AMQP_URL))
    queues = {q.name: q for q in conf["task_queues"]}
    assert set(queues) == {WRITE_QUEUE, CONTROL_QUEUE}
    for name, queue in queues.items():
        assert queue.queue_arguments == {"x-queue-type": "quorum"} and queue.durable
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (
            name, "topic", name)
    assert conf["task_default_queue_type"] == "quorum"
    assert conf["task_default_exchange_type"] == "topic"
    assert conf["worker_detect_quorum_queues"] is True  # global QoS off
    assert conf["broker_native_delayed_delivery_queue_type"] == "quorum"
    options = conf["broker_transport_options"]
    assert options["confirm_publish"] is True
    assert options["read_timeout"] > 0 and options["write_timeout"] > 0
    assert "visibility_timeout" not in options  # a Redis notion
    # Enqueue's bound on a broker that does not answer holds on both brokers.
    assert conf["broker_connection_timeout"] == 2.0


def test_redis_keeps_its_settings_and_the_ledger_sweep() -> None:
    """redis:// → direct exchanges, the visibility timeout, and beat sweeping the ledger."""
    conf = celery_config(Settings())
    assert all(q.exchange.type == "direct" and not q.queue_arguments
               for q in conf["task_queues"])
    assert conf["broker_transport_options"]["visibility_timeout"] == 3600
    assert "task_default_queue_type" not in conf
    assert "memory-sweep-pending" in conf["beat_schedule"]


def test_beat_does_not_sweep_the_ledger_on_rabbitmq() -> None:
    """Nothing is lost in transit there; a sweep would only republish what waits in a backlog."""
    conf = celery_config(Settings(celery_broker_url=AMQP_URL))
    assert set(conf["beat_schedule"]) == {"memory-probe-recovery"}
    assert sweeps_ledger("redis://h/0") and not sweeps_ledger(AMQP_URL)
    assert is_amqp("amqps://h//") and is_amqp("pyamqp://h;amqp://g") and not is_amqp("rediss://h")


def test_countdowns_are_whole_seconds_because_kombu_cannot_route_less() -> None:
    """A retry 0.6 s away could not be published through the delay exchanges; 1 s can."""
    with pytest.raises(ValueError):
        calculate_routing_key(int(0.6), WRITE_QUEUE)
    assert whole_seconds(0.6) == 1.0 and whole_seconds(7.0) == 7.0 and whole_seconds(7.2) == 8.0
    assert whole_seconds(None) is None and whole_seconds(0) == 0
    assert calculate_routing_key(int(whole_seconds(0.6) or 0), WRITE_QUEUE).endswith(
        ".1." + WRITE_QUEUE)


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_worker_killed_whole_mid_load_loses_nothing_without_the_ledger_sweep(
    publisher: Publisher, conn: redis.Redis, sim: ZepSimulator, keys: Keys, broker: Broker,
    env: dict[str, str], rabbit: PrivateRabbit, tmp_path: Path,
) -> None:
    """kill -9 of the pool, then of the whole worker, with writes in flight, queued and
    waiting in the delay queues; no beat, so no sweep: every message is sent to Zep once."""
    # Given slow adds, the first ones failing (their retries wait in the broker) ...
    sim.add_fault(Fault(method="POST", path=MEMORY, latency_ms=250))
    sim.add_fault(Fault(method="POST", path=MEMORY, status=503, times=6))
    ids = [f"rk-{i:03d}" for i in range(40)]
    log = tmp_path / "worker.log"
    # Each message its own add: sent together, the forty leave the queue in a few adds
    # and the kill would find nothing held (the soak kills workers that batch).
    alone = {**env, "MEMORY_WRITE_BATCH_MAX": "1"}
    with SupervisedWorker("killed", 4, alone, log) as worker:
        wait_for(lambda: "ready." in log.read_text(errors="replace"), 60, "the worker")
        for i, client_msg_id in enumerate(ids):
            publisher.enqueue(f"t-rk-{i % 5}", "user", f"turn {i}", client_msg_id)

        def done() -> int:
            return sum(conn.exists(keys.write_done(i)) for i in ids)

        # ... when writes are in flight, kill the pool, then the whole worker, with -9.
        wait_for(lambda: bool(conn.keys(keys.write_lease("rk-*"))), 60, "a write in flight")
        assert worker.kill_pool() > 0
        wait_for(lambda: done() >= 8 and bool(conn.keys(keys.write_lease("rk-*"))), 60,
                 "more writes in flight")
        held = rabbit.messages(broker.url.rsplit("/", 1)[1])
        worker.kill_all_and_restart()

        # Then every message is stored, and nothing of it is left in the broker or ledger.
        wait_for(lambda: done() == len(ids), 120, "every write")
        wait_for(lambda: deliveries_settled(conn, keys, broker.drained), 60,
                 "every copy to be accounted for")
    assert held.get(WRITE_QUEUE, 0) > 0, held  # the killed worker did hold writes
    assert [accepted_adds(sim, i) for i in ids] == [1] * len(ids)
    text = log.read_text(errors="replace")
    assert '"zep_write_retry"' in text and "WorkerLostError" in text
    assert "zep_write_republished" not in text


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_worker_declares_quorum_queues_and_the_delayed_delivery_topology(
    env: dict[str, str], broker: Broker, rabbit: PrivateRabbit, tmp_path: Path,
) -> None:
    """memory_writes, memory_control and the celery_delayed_* levels are quorum queues."""
    log = tmp_path / "worker.log"
    with SupervisedWorker("declares", 1, env, log):
        wait_for(lambda: "ready." in log.read_text(errors="replace"), 60, "the worker")
        vhost = broker.url.rsplit("/", 1)[1]
        wait_for(lambda: "celery_delayed_0" in rabbit.messages(vhost), 30,
                 "the delayed-delivery queues")
        listing = rabbit.ctl("list_queues", "-p", vhost, "name", "type").stdout
    types = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
    assert types[WRITE_QUEUE] == types[CONTROL_QUEUE] == "quorum"
    assert all(types[f"celery_delayed_{level}"] == "quorum" for level in range(28))
    assert "Global QoS is disabled" in log.read_text(errors="replace")
