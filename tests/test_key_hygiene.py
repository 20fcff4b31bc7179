"""Every Redis key the project writes carries MEMORY_KEY_PREFIX, and the transient ones expire.

One process exercises reads (hit, miss, 404, 429, a downgrade, a probe) and writes
(enqueue, deliver, a dead letter, the breaker) with the prefix ``audit:``; then the
whole database is listed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import redis

from memory_worker.config import Settings
from memory_worker.enqueue import Publisher
from memory_worker.guard import Guard
from memory_worker.keys import Keys
from memory_worker.messages import Payload
from memory_worker.probe import Prober
from memory_worker.runtime import Runtime
from memory_worker.writer import Writer
from memory_worker.zep import ZepClient
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import FakeClock

PREFIX = "audit:"
# Kept on purpose: the dead letters wait for an operator; the breaker's hash expires
# only once idle (its counters carry their own idle expiry); the delivery ledger's
# index loses each member when its message is done (its records expire).
PERSISTENT = {f"{PREFIX}write:dlq", f"{PREFIX}write:circuit:v1", f"{PREFIX}write:pending"}


def test_every_key_has_the_prefix_and_every_transient_key_a_ttl(
    read_settings: Settings, conn: redis.Redis, sim: ZepSimulator, tmp_path: Path
) -> None:
    """No key outside the prefix; no key without a TTL but the DLQ and the breaker."""
    settings = dataclasses.replace(read_settings, key_prefix=PREFIX, latency_downgrade_ms=300,
                                   spool_dir=str(tmp_path))
    clock = FakeClock()
    runtime = Runtime(settings, clock=clock)
    sent: list[dict[str, Any]] = []
    publisher = Publisher(settings, conn, lambda task_id, kw: sent.append(kw), clock=clock)
    zep = ZepClient(sim.url, "test-key")
    writer = Writer(conn, settings, zep, clock=clock)

    # Reads: 404 (negative entry), a success twice (cache), a 429 pause, failures to a downgrade.
    sim.seed("known", summary="s")
    runtime.fetch("unknown", "summary")
    for view in ("summary", "recent", "facts"):
        runtime.fetch("known", view)
        runtime.fetch("known", view)
    sim.add_fault(Fault(method="GET", path="*/memory", status=429, times=1))
    runtime.fetch("paused", "summary")
    clock.advance(10)
    sim.add_fault(Fault(method="GET", path="*/memory", status=503))
    for thread in ("a", "b", "c"):
        runtime.fetch(thread, "summary")
    clock.advance(301)
    Prober(conn, settings, zep, clock=clock).run()  # fails: re-forced, hold escalated
    sim.clear_faults()
    Guard(conn, settings, clock=clock).failure_count()

    # Writes: enqueue (duplicate marker), deliver (lease, done marker), a dead letter.
    publisher.enqueue("known", "user", "hello", "w-1")
    writer.deliver(Payload.from_json(sent[0]["payload"]))
    sim.add_fault(Fault(method="POST", path="*/memory", status=503, times=1))
    publisher.enqueue("known", "user", "again", "w-2")
    writer.deliver(Payload.from_json(sent[1]["payload"]))

    keys = sorted(str(k) for k in conn.keys("*"))
    assert keys, "the scenario wrote nothing"
    assert [k for k in keys if not k.startswith(PREFIX)] == []
    assert [k for k in keys if k not in PERSISTENT and conn.ttl(k) < 0] == []
    expected = {f"{PREFIX}mode:forced:v1", f"{PREFIX}mode:probe_failures:v1",
                f"{PREFIX}ctx:known:summary", f"{PREFIX}ctx:unknown:summary",
                f"{PREFIX}write:done:w-1", f"{PREFIX}write:enqueued:w-2"}
    assert expected <= set(keys)
    zep.close()
    runtime.zep.close()


def test_on_v4_the_id_mapping_is_the_only_addition_and_it_is_durable(
    read_settings: Settings, conn: redis.Redis, sim: ZepSimulator, tmp_path: Path
) -> None:
    """Zep v4: writes and reads add the prefixed thread/user mapping, kept without a TTL
    (it is rebuilt from Zep when lost, but must not be evicted); the creation lock expires."""
    from memory_worker.zep_v4 import ZepV4Client

    settings = dataclasses.replace(read_settings, key_prefix=PREFIX, spool_dir=str(tmp_path),
                                   zep_api_version="v4")
    clock = FakeClock()
    sent: list[dict[str, Any]] = []
    publisher = Publisher(settings, conn, lambda task_id, kw: sent.append(kw), clock=clock)
    zep = ZepV4Client(sim.url, "test-key", conn, keys=Keys(PREFIX))
    runtime = Runtime(settings, clock=clock, zep=zep)
    writer = Writer(conn, settings, zep, clock=clock)
    publisher.enqueue("v4-thread", "user", "hello", "v-1", user_id="v4-user")
    publisher.enqueue("v4-solo", "user", "hello", "v-2")
    for record in sent:
        writer.deliver(Payload.from_json(record["payload"]))
    for view in ("summary", "recent", "facts"):
        runtime.fetch("v4-thread", view)

    keys = sorted(str(k) for k in conn.keys("*"))
    assert [k for k in keys if not k.startswith(PREFIX)] == []
    durable = {k for k in keys if conn.ttl(k) < 0}
    assert durable - PERSISTENT == {
        f"{PREFIX}zep:v4:thread:v4-thread", f"{PREFIX}zep:v4:thread:v4-solo",
        f"{PREFIX}zep:v4:user:v4-user", f"{PREFIX}zep:v4:user:memory-worker-thread:v4-solo",
        *(k for k in keys if k.startswith(f"{PREFIX}zep:v4:thread_of:")),
    }
    assert len([k for k in keys if k.startswith(f"{PREFIX}zep:v4:thread_of:")]) == 2
    zep.close()
