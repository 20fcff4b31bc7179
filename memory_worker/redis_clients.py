"""The state Redis below one small interface: a server at ``REDIS_URL``, or Sentinel's.

Every client of the state Redis (read path, enqueue, workers, CLI, metrics) is
built here, with the options of its call site (timeouts, retry, decoding), and
nothing above knows which backend is in use. The choice is made once, in
configuration: ``REDIS_SENTINELS`` and ``REDIS_SENTINEL_MASTER`` set select the
Sentinel-managed master (``memory_worker.redis_sentinel``), otherwise the
server ``REDIS_URL`` names, built exactly as ``redis.Redis.from_url`` builds it.

``deadline_redis`` needs its own connection class on the pool: ``state_pool``
hands the backend's base class (TCP, TLS or Unix socket for ``REDIS_URL``;
Sentinel-managed TCP or TLS for Sentinel) to a function that derives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis
from redis.connection import AbstractConnection, parse_url

from memory_worker import redis_sentinel
from memory_worker.config import Settings

ConnectionClass = type[AbstractConnection]
Derive = Callable[[ConnectionClass], ConnectionClass]


def state_redis(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the state Redis with ``options`` (redis-py's keyword arguments)."""
    if settings.redis_sentinels:
        return redis_sentinel.master_client(settings, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


def async_state_redis(settings: Settings, **options: Any) -> aredis.Redis:
    """``state_redis``'s asyncio twin."""
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
