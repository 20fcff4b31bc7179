"""`dlq replay` and `spool drain` publish to the deployment the command names (SPEC §8).

Two deployments stand on a private redis-server of the test's own: A in database 0, B in
database 1. The environment's Redis (the test database) stands for the operator's shell
default. The installed `memory-worker` runs in a subprocess, so no Celery app configured
earlier in this process can hide where a task goes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memory_worker import dlq
from memory_worker.celery_app import WRITE_QUEUE
from memory_worker.connections import with_database
from memory_worker.keys import Keys
from memory_worker.messages import message_uuid
from memory_worker.spool import Outbox
from tests.processes import ROOT, PrivateRedis, project_env

MEMORY_WORKER = str(Path(sys.executable).with_name("memory-worker"))


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The Redis URLs of deployments A and B."""
    with PrivateRedis(tmp_path_factory.mktemp("deployments")) as server:
        yield server.url, with_database(server.url, 1)


@pytest.fixture
def a_and_b(deployments: tuple[str, str]) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    clients = tuple(redis.Redis.from_url(url, decode_responses=True) for url in deployments)
    for client in clients:
        client.flushdb()
    yield clients[0], clients[1]
    for client in clients:
        client.close()


def dead_letter(client_msg_id: str) -> dict[str, object]:
    payload = {"thread_id": "t-1", "role": "user", "content": "hello",
               "client_msg_id": client_msg_id, "user_id": None, "metadata": None,
               "enqueued_at": time.time()}
    return {"client_msg_id": client_msg_id, "thread_id": "t-1", "payload": payload,
            "reason": "client_error", "status_code": 400, "attempts": 1,
            "failed_at": time.time()}


def queued_task_ids(client: redis.Redis) -> list[str]:
    """The task ids waiting in the broker queue ``memory_writes`` of that Redis database."""
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(WRITE_QUEUE, 0, -1)]


def memory_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMORY_WORKER, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_dlq_replay_publishes_to_the_broker_of_the_redis_it_names(
    redis_url: str, conn: redis.Redis, a_and_b: tuple[redis.Redis, redis.Redis],
    deployments: tuple[str, str], keys: Keys, tmp_path: Path,
) -> None:
    """Only --redis-url A: the dead letter leaves A, its task lands in A's queue, not the env's."""
    a, b = a_and_b
    dlq.push(a, keys, dead_letter("m-replayed"))
    env = project_env(redis_url, MEMORY_SPOOL_DIR=str(tmp_path / "spool"))

    done = memory_worker("dlq", "replay", "--redis-url", deployments[0], env=env)

    assert done.returncode == 0, done.stderr
    assert dlq.size(a, keys) == 0
    assert queued_task_ids(a) == [message_uuid("m-replayed")]
    assert conn.llen(WRITE_QUEUE) == 0 and b.llen(WRITE_QUEUE) == 0


def test_dlq_replay_publishes_to_the_broker_url_it_is_given(
    redis_url: str, conn: redis.Redis, a_and_b: tuple[redis.Redis, redis.Redis],
    deployments: tuple[str, str], keys: Keys, tmp_path: Path,
) -> None:
    """--broker-url B with --redis-url A: the state is A's, the task goes to B."""
    a, b = a_and_b
    dlq.push(a, keys, dead_letter("m-to-b"))
    env = project_env(redis_url, MEMORY_SPOOL_DIR=str(tmp_path / "spool"))

    done = memory_worker("dlq", "replay", "--redis-url", deployments[0],
                         "--broker-url", deployments[1], env=env)

    assert done.returncode == 0, done.stderr
    assert dlq.size(a, keys) == 0
    assert queued_task_ids(b) == [message_uuid("m-to-b")]
    assert a.llen(WRITE_QUEUE) == 0 and conn.llen(WRITE_QUEUE) == 0


def test_celery_broker_url_in_the_environment_is_the_broker(
    redis_url: str, conn: redis.Redis, a_and_b: tuple[redis.Redis, redis.Redis],
    deployments: tuple[str, str], keys: Keys, tmp_path: Path,
) -> None:
    """CELERY_BROKER_URL=B in the environment and --redis-url A: the task goes to B."""
    a, b = a_and_b
    dlq.push(a, keys, dead_letter("m-env-broker"))
    env = project_env(redis_url, MEMORY_SPOOL_DIR=str(tmp_path / "spool"),
                      CELERY_BROKER_URL=deployments[1])

    done = memory_worker("dlq", "replay", "--redis-url", deployments[0], env=env)

    assert done.returncode == 0, done.stderr
    assert queued_task_ids(b) == [message_uuid("m-env-broker")]
    assert a.llen(WRITE_QUEUE) == 0 and conn.llen(WRITE_QUEUE) == 0


def test_spool_drain_publishes_to_the_broker_of_the_redis_it_names(
    redis_url: str, conn: redis.Redis, a_and_b: tuple[redis.Redis, redis.Redis],
    deployments: tuple[str, str], tmp_path: Path,
) -> None:
    """Only --redis-url A: the outbox is drained into A's queue, nothing into the env's."""
    a, b = a_and_b
    spool = tmp_path / "spool"
    task_id = message_uuid("m-spooled")
    Outbox(spool).append({"task_id": task_id,
                          "payload": dead_letter("m-spooled")["payload"]})
    env = project_env(redis_url, MEMORY_SPOOL_DIR=str(spool))

    done = memory_worker("spool", "drain", "--redis-url", deployments[0], env=env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Published 1,")
    assert Outbox(spool).pending() == 0
    assert queued_task_ids(a) == [task_id]
    assert conn.llen(WRITE_QUEUE) == 0 and b.llen(WRITE_QUEUE) == 0


def test_spool_drain_publishes_to_the_broker_url_it_is_given(
    redis_url: str, conn: redis.Redis, a_and_b: tuple[redis.Redis, redis.Redis],
    deployments: tuple[str, str], tmp_path: Path,
) -> None:
    """--broker-url B: the outbox goes to B's queue."""
    a, b = a_and_b
    spool = tmp_path / "spool"
    task_id = message_uuid("m-spooled-b")
    Outbox(spool).append({"task_id": task_id,
                          "payload": dead_letter("m-spooled-b")["payload"]})
    env = project_env(redis_url, MEMORY_SPOOL_DIR=str(spool))

    done = memory_worker("spool", "drain", "--redis-url", deployments[0],
                         "--broker-url", deployments[1], env=env)

    assert done.returncode == 0, done.stderr
    assert queued_task_ids(b) == [task_id]
    assert a.llen(WRITE_QUEUE) == 0 and conn.llen(WRITE_QUEUE) == 0


def test_a_broker_that_does_not_answer_keeps_the_dead_letter_and_names_the_broker(
    redis_url: str, a_and_b: tuple[redis.Redis, redis.Redis], deployments: tuple[str, str],
    keys: Keys, tmp_path: Path,
) -> None:
    """--broker-url with nothing listening: exit 1, one line naming it (password hidden)."""
    a, _ = a_and_b
    dlq.push(a, keys, dead_letter("m-kept"))
    env = project_env(redis_url, MEMORY_SPOOL_DIR=str(tmp_path / "spool"))

    done = memory_worker("dlq", "replay", "--redis-url", deployments[0],
                         "--broker-url", "redis://:s3cret@127.0.0.1:1/0", env=env)

    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("memory-worker:")]
    assert len(errors) == 1 and "redis://:***@127.0.0.1:1/0" in errors[0], done.stderr
    assert "s3cret" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert dlq.size(a, keys) == 1
