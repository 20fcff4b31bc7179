"""Shared fixtures: a real Redis in a dedicated database, flushed around each test.

The database is ``MEMORY_TEST_REDIS_URL`` when set, else the host of
``REDIS_URL`` (default 127.0.0.1:6379) with database 15. A missing Redis fails
the run: ``make test`` starts one, and tests never skip silently.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_worker.config import Settings
from memory_worker.connections import with_database
from memory_worker.keys import Keys


def _test_redis_url() -> str:
    explicit = os.environ.get("MEMORY_TEST_REDIS_URL")
    if explicit:
        return explicit
    return with_database(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), 15)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = _test_redis_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {url} ({exc}); run `make test`, which starts one")
    return url


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys() -> Keys:
    return Keys("mem:")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zep_apis: run once per Zep API, v2 and v4 "
                                       "(tests/zep_apis.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``zep_apis`` (a module's ``pytestmark``) run once per Zep API."""
    from tests.zep_apis import ZEP_APIS

    if ("zep_api_version" in metafunc.fixturenames
            and metafunc.definition.get_closest_marker("zep_apis") is not None):
        metafunc.parametrize("zep_api_version", ZEP_APIS, ids=ZEP_APIS, indirect=True)


@pytest.fixture
def zep_api_version(request: pytest.FixtureRequest) -> str:
    """The Zep API of the test: v2 unless it is marked ``zep_apis`` (then v2 and v4)."""
    return str(getattr(request, "param", "v2"))


@pytest.fixture
def settings(redis_url: str, zep_api_version: str) -> Settings:
    return Settings(
        flag_zep_write=True, flag_zep_read=True,
        zep_api_url="http://127.0.0.1:9", zep_api_key="test-key",
        redis_url=redis_url, zep_api_version=zep_api_version,
    )


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> dict[str, str]:
    """A clean environment for CLI runs: only the variables a test sets."""
    from memory_worker.config import VARIABLES

    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = {
        "REDIS_URL": redis_url, "FLAG_ZEP_WRITE": "true", "FLAG_ZEP_READ": "true",
        "ZEP_API_URL": "http://127.0.0.1:9", "ZEP_API_KEY": "test-key",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def zep_server() -> Iterator[Any]:
    """One Zep simulator for the run, served over real HTTP on 127.0.0.1."""
    from memory_worker.zep_sim import ZepSimulator

    with ZepSimulator(api_key="test-key") as simulator:
        yield simulator


@pytest.fixture
def sim(zep_server: Any) -> Iterator[Any]:
    """The simulator, emptied of state, faults and its request log around each test."""
    zep_server.reset()
    yield zep_server
    zep_server.reset()


@pytest.fixture
def read_settings(settings: Settings, sim: Any) -> Settings:
    """Settings pointing at the simulator, with the contract's read defaults."""
    return dataclasses.replace(settings, zep_api_url=sim.url)


@pytest.fixture
def zep_api(read_settings: Settings, sim: Any, conn: redis.Redis) -> Any:
    """What differs between the Zep APIs, for the test's API (``tests.zep_apis``)."""
    from tests.zep_apis import ZepApiUnderTest

    return ZepApiUnderTest(read_settings.zep_api_version, sim, conn, read_settings)


BROKERS = ("redis", "rabbitmq")


@dataclasses.dataclass(frozen=True)
class Broker:
    """The broker a test runs on: ``redis`` (the test Redis) or ``rabbitmq`` (a fresh
    vhost of the session's RabbitMQ node). ``drained()``: it holds no write, whether
    queued, delayed or unacknowledged."""

    kind: str
    url: str
    drained: Callable[[], bool]
    queued: Callable[[], list[str]]  # the bodies of the writes waiting in memory_writes
    env: dict[str, str]  # what the project's processes need to use it


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One private RabbitMQ node for the run, started when a test first asks for it."""
    from tests.processes import PrivateRabbit

    with PrivateRabbit(tmp_path_factory.mktemp("rabbitmq")) as node:
        yield node


@pytest.fixture
def broker(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Broker]:
    """The test's broker: Redis unless the test is parametrized over ``BROKERS``
    (``@pytest.mark.parametrize("broker", BROKERS, indirect=True)``)."""
    from tests.processes import (
        rabbit_queued_bodies,
        rabbit_queues_drained,
        redis_queued_bodies,
        redis_queues_drained,
    )

    kind = getattr(request, "param", "redis")
    if kind == "redis":
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        yield Broker("redis", redis_url, lambda: redis_queues_drained(client),
                     lambda: redis_queued_bodies(client), {})
        client.close()
        return
    assert kind == "rabbitmq", kind
    node = request.getfixturevalue("rabbit")
    with node.vhost() as url:
        vhost = url.rsplit("/", 1)[1]
        yield Broker("rabbitmq", url, lambda: rabbit_queues_drained(node, vhost),
                     lambda: rabbit_queued_bodies(url), {"CELERY_BROKER_URL": url})


@pytest.fixture
def env(redis_url: str, sim: Any, tmp_path: Path, broker: Broker,
        zep_api_version: str) -> dict[str, str]:
    """The environment of worker subprocesses: writes and reads on, the simulator as Zep
    (the test's API), the test's broker."""
    from tests.processes import project_env

    return project_env(redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                       ZEP_API_URL=sim.url, ZEP_API_KEY="test-key",
                       ZEP_API_VERSION=zep_api_version,
                       MEMORY_SPOOL_DIR=str(tmp_path / "spool"), **broker.env)


@pytest.fixture
def publisher(env: dict[str, str], conn: redis.Redis) -> Any:
    """A Publisher sending to the broker of ``env`` (the test's broker)."""
    from memory_worker.celery_app import sender
    from memory_worker.enqueue import Publisher

    settings = Settings.from_env(env)
    return Publisher(settings, conn, sender(settings), clock=time.time)
