"""TERM to a bare Celery worker under load loses nothing (SPEC §6, §11).

A real prefork worker (``celery -A memory_worker worker``), the test Redis as
broker, and the Zep simulator over HTTP. The tests prove:

- TERM to the worker master while writes are in flight (Zep answering slowly):
  the worker stops warm on its own (exit code 0), the writes it was running
  finish and are stored, the messages it had reserved go back to the queue, and
  a new worker stores every message exactly once;
- TERM while a retry waits for its countdown (a 503, retried with an ETA that
  the worker holds unacknowledged): the retry goes back to the queue with its
  ETA instead of being lost, and once Zep answers again a new worker stores the
  message exactly once.

``tests/test_supervisord.py`` covers ``supervisorctl stop`` of the whole stack;
these are the bare-celery, in-flight and ETA versions.
"""

from __future__ import annotations

import base64
import configparser
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_worker.celery_app import WRITE_QUEUE
from memory_worker.enqueue import Publisher
from memory_worker.keys import Keys
from memory_worker.messages import message_uuid
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.processes import ROOT, celery_process, wait_for, worker_args

MEMORY = "*/sessions/*/memory"
UNACKED = "unacked"  # kombu's Redis transport: delivered, not yet acknowledged
THREADS = [f"term-{n}" for n in range(5)]
MESSAGES = 200


@contextmanager
def worker(env: dict[str, str], log: Path, concurrency: int = 4
           ) -> Iterator[subprocess.Popen[bytes]]:
    with celery_process(worker_args(log.stem, concurrency), env, log) as proc:
        wait_for(lambda: proc.poll() is not None or "ready." in log.read_text(), 30,
                 "the worker to be ready", interval=0.1)
        assert proc.poll() is None, log.read_text()[-2000:]
        yield proc


def stop_wait_seconds() -> float:
    """How long supervisord waits for the worker to stop warm before it kills it."""
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(ROOT / "supervisord.conf", encoding="utf-8")
    return conf.getfloat("program:memory_worker", "stopwaitsecs")


def stop_warm(proc: subprocess.Popen[bytes], log: Path) -> None:
    """TERM to the master only; it must end by itself, with exit code 0, within the time
    the deployment gives it (supervisord's ``stopwaitsecs``).

    Its running writes end within seconds here; now and then Celery's warm shutdown
    on a Redis broker then waits about 30 s more before it restores the message it
    had fetched last (seen in two full runs of the suite out of five, never in a
    test run alone); nothing is lost, and it is within ``stopwaitsecs``."""
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: proc.poll() is not None, stop_wait_seconds(), "the worker to stop warm",
             interval=0.1)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert "Warm shutdown" in log.read_text()


def envelope(raw: str | bytes) -> dict[str, Any]:
    """A kombu message as the Redis transport stores it (in the queue or ``unacked``)."""
    data = json.loads(raw)
    return dict(data[0] if isinstance(data, list) else data)


def client_msg_id(message: dict[str, Any]) -> str:
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    _args, kwargs, _embed = json.loads(body)
    return str(kwargs["payload"]["client_msg_id"])


def queued(conn: redis.Redis) -> list[dict[str, Any]]:
    return [envelope(raw) for raw in conn.lrange(WRITE_QUEUE, 0, -1)]


def stored(sim: ZepSimulator, threads: list[str]) -> list[dict[str, Any]]:
    return [m for thread in threads for m in sim.messages(thread)]


def settled(conn: redis.Redis) -> bool:
    """Nothing queued, nothing held: no later delivery can add a copy."""
    return conn.llen(WRITE_QUEUE) == 0 and conn.hlen(UNACKED) == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_term_under_load_finishes_the_writes_in_flight_and_loses_no_message(
    env: dict[str, str], publisher: Publisher, conn: redis.Redis, sim: ZepSimulator,
    keys: Keys, tmp_path: Path,
) -> None:
    """In-flight writes finish, reserved ones are requeued; a new worker stores each once."""
    # Given 200 messages queued and Zep taking 300 ms per write,
    sim.add_fault(Fault(method="POST", path=MEMORY, latency_ms=300))
    ids = [f"term-msg-{n}" for n in range(MESSAGES)]
    for n, msg_id in enumerate(ids):
        publisher.enqueue(THREADS[n % len(THREADS)], "user", f"load message {n}", msg_id)
    first_log = tmp_path / "first.log"
    with worker(env, first_log) as proc:
        wait_for(lambda: len(stored(sim, THREADS)) >= 20, 60, "the load to be under way")

        # when the master gets TERM while writes are in flight,
        leases = conn.keys(keys.write_lease("*"))
        in_flight = {str(k).removeprefix(keys.write_lease("")) for k in leases}
        answered_at_term = len(sim.requests("POST", MEMORY))
        stop_warm(proc, first_log)
    assert in_flight, "no write was in flight when TERM arrived"
    assert 0 < answered_at_term < MESSAGES, "the load was over, or not begun, at TERM"

    # then the writes in flight were finished, and every other message is back in the queue.
    at_exit = {m["uuid"] for m in stored(sim, THREADS)}
    assert {message_uuid(m) for m in in_flight} <= at_exit
    assert all(conn.exists(keys.write_done(m)) for m in in_flight)
    assert conn.hlen(UNACKED) == 0, "messages left unacknowledged, back only after an hour"
    waiting = {client_msg_id(message) for message in queued(conn)}
    assert {message_uuid(m) for m in waiting} | at_exit == {message_uuid(m) for m in ids}
    assert len(at_exit) < MESSAGES

    # And a new worker, with Zep fast again, stores every message exactly once.
    sim.clear_faults()
    with worker(env, tmp_path / "second.log"):
        wait_for(lambda: len(stored(sim, THREADS)) >= MESSAGES and settled(conn), 60,
                 "every message to be written", interval=0.2)
    messages = stored(sim, THREADS)
    assert sorted(m["uuid"] for m in messages) == sorted(message_uuid(m) for m in ids)
    assert sorted(m["content"] for m in messages) == sorted(
        f"load message {n}" for n in range(MESSAGES))
    assert conn.llen(keys.dlq) == 0


def held_retry(conn: redis.Redis) -> tuple[str, float] | None:
    """The task id and ETA (epoch) of the one message held unacknowledged, if it has an ETA."""
    held = [envelope(raw) for raw in conn.hvals(UNACKED)]
    if len(held) != 1 or conn.llen(WRITE_QUEUE) != 0:
        return None
    eta = held[0]["headers"].get("eta")
    return (held[0]["headers"]["id"], datetime.fromisoformat(eta).timestamp()) if eta else None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_term_while_a_retry_waits_for_its_countdown_requeues_it_with_its_eta(
    env: dict[str, str], publisher: Publisher, conn: redis.Redis, sim: ZepSimulator,
    keys: Keys, tmp_path: Path,
) -> None:
    """A 503 schedules a retry; TERM before its ETA: requeued, then stored once after Zep heals."""
    # Given a write that Zep answers with 503 (until healed),
    sim.ensure_session("term-eta")
    outage = sim.add_fault(Fault(method="POST", path="*/sessions/term-eta/memory", status=503))
    publisher.enqueue("term-eta", "user", "wait for me", "eta-1")
    first_log = tmp_path / "first.log"
    with worker(env, first_log) as proc:
        # whose retry the worker holds with an ETA still 0.5 s away (the first backoff is
        # drawn from [0, 2] s; a shorter one is retried, failing again, with a wider window),
        def far_enough() -> bool:
            held = held_retry(conn)
            return held is not None and held[1] - time.time() >= 0.5

        wait_for(far_enough, 45, "a retry held with a countdown", interval=0.02)
        task_id, eta = held_retry(conn) or ("", 0.0)
        attempts = len(sim.requests("POST", "*/sessions/term-eta/memory"))
        # when the master gets TERM before the ETA,
        assert time.time() < eta
        stop_warm(proc, first_log)
    # (the worker did not run the retry it held, although its ETA may have passed while
    # the pool shut down)
    assert len(sim.requests("POST", "*/sessions/term-eta/memory")) == attempts
    assert '"zep_write_retry"' in first_log.read_text()
    assert sim.messages("term-eta") == []

    # then the retry is back in the queue, with its ETA, not held by anyone,
    assert conn.hlen(UNACKED) == 0
    [back] = queued(conn)
    assert back["headers"]["id"] == task_id == message_uuid("eta-1")
    assert datetime.fromisoformat(back["headers"]["eta"]).timestamp() == eta
    assert client_msg_id(back) == "eta-1"

    # and once Zep answers again, a new worker stores the message exactly once.
    sim.remove_fault(outage)
    with worker(env, tmp_path / "second.log"):
        wait_for(lambda: conn.exists(keys.write_done("eta-1")) == 1 and settled(conn), 45,
                 "the requeued retry to be written", interval=0.1)
    assert [m["content"] for m in sim.messages("term-eta")] == ["wait for me"]
    assert conn.llen(keys.dlq) == 0
