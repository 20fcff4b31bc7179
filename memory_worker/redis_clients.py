"""The state Redis below one small interface: a server at ``REDIS_URL``, Sentinel's, or a cluster.

Every client of the state Redis (read path, enqueue, workers, CLI, metrics) is
built here, with the options of its call site (timeouts, retry, decoding), and
nothing above knows which backend is in use. The choice is made once, in
configuration: ``REDIS_SENTINELS`` and ``REDIS_SENTINEL_MASTER`` set select the
Sentinel-managed master (``memory_worker.redis_sentinel``), otherwise the
server ``REDIS_URL`` names, built exactly as ``redis.Redis.from_url`` builds it;
``REDIS_CLUSTER`` on selects a Redis Cluster one of whose nodes ``REDIS_URL``
names (``memory_worker.redis_cluster``; its clients are ``StateCluster``, so a
client of the state is a ``StateRedis``).

``deadline_redis`` needs its own connection class on the pool: ``state_pool``
hands the backend's base class (TCP, TLS or Unix socket for ``REDIS_URL``;
Sentinel-managed TCP or TLS for Sentinel) to a function that derives it, and
``bounded_state_redis`` does the same for a cluster, whose clients keep a pool
per node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis
from redis.connection import AbstractConnection, parse_url

from memory_worker import redis_cluster, redis_sentinel
from memory_worker.config import Settings
from memory_worker.redis_cluster import AsyncStateCluster, StateCluster

ConnectionClass = type[AbstractConnection]
Derive = Callable[[ConnectionClass], ConnectionClass]
StateRedis = redis.Redis | StateCluster
AsyncStateRedis = aredis.Redis | AsyncStateCluster


def state_redis(settings: Settings, **options: Any) -> StateRedis:
    """A client of the state Redis with ``options`` (redis-py's keyword arguments)."""
    if settings.redis_cluster:
        return redis_cluster.client(settings, **options)
    if settings.redis_sentinels:
        return redis_sentinel.master_client(settings, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


def async_state_redis(settings: Settings, **options: Any) -> AsyncStateRedis:
    """``state_redis``'s asyncio twin."""
    if settings.redis_cluster:
        return redis_cluster.async_client(settings, **options)
    if settings.redis_sentinels:
        return redis_sentinel.async_master_client(settings, **options)
    return aredis.Redis.from_url(settings.redis_url, **options)


def state_pool(settings: Settings, derive: Derive, **options: Any) -> redis.ConnectionPool:
    """A pool of the state Redis whose connections are of ``derive(base class)``."""
    if settings.redis_sentinels:
        return redis_sentinel.master_pool(settings, derive, **options)
    url_options: dict[str, Any] = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    base: ConnectionClass = url_options.get("connection_class", redis.Connection)
    return redis.ConnectionPool.from_url(settings.redis_url, connection_class=derive(base),
                                         **options)


def bounded_state_redis(settings: Settings, derive: Derive, **options: Any) -> StateRedis:
    """A client of the state Redis whose connections are of ``derive(base class)``: on
    ``state_pool``'s pool, or for a cluster, on every node's pool."""
    if settings.redis_cluster:
        return redis_cluster.client(
            settings, connection_class=derive(redis_cluster.base_connection(settings)),
            **options)
    return redis.Redis(connection_pool=state_pool(settings, derive, **options))
