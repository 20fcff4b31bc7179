"""Redis clients with explicit timeouts, one pool per URL and purpose in each process."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from memory_worker.config import Settings
from memory_worker.redis_clients import StateRedis, state_redis
from memory_worker.redis_cluster import StateCluster

# Operators and workers can wait for Redis longer than the read path can
# (runtime.READ_PATH_REDIS_TIMEOUT_S), but never forever.
OPS_SOCKET_TIMEOUT_S = 2.0

_DELETE_IF_VALUE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@functools.lru_cache(maxsize=16)
def redis_client(url: str, socket_timeout: float = OPS_SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client decoding replies to ``str``; redis-py re-creates its pool after fork."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        decode_responses=True,
        health_check_interval=30,
    )


def state_client(settings: Settings, socket_timeout: float = OPS_SOCKET_TIMEOUT_S) -> StateRedis:
    """``redis_client`` of the state Redis as configured: ``REDIS_URL``'s server, the
    master Sentinel names, or the cluster (``memory_worker.redis_clients``)."""
    if not (settings.redis_sentinels or settings.redis_cluster):
        return redis_client(settings.redis_url, socket_timeout)
    return _managed_client(settings.redis_url, settings.redis_sentinels,
                           settings.redis_sentinel_master, settings.redis_cluster,
                           socket_timeout)


@functools.lru_cache(maxsize=16)
def _managed_client(url: str, sentinels: str | None, master: str | None, cluster: bool,
                    socket_timeout: float) -> StateRedis:
    settings = Settings(redis_url=url, redis_sentinels=sentinels, redis_sentinel_master=master,
                        redis_cluster=cluster)
    return state_redis(settings, socket_timeout=socket_timeout,
                       socket_connect_timeout=socket_timeout, decode_responses=True,
                       health_check_interval=30)


def as_text(value: object) -> str | None:
    """A Redis reply as ``str`` (clients here decode, but the types cannot say so)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def get_many(conn: StateRedis, keys: list[str]) -> list[Any]:
    """The values of ``keys`` (``MGET``); on a cluster, one ``MGET`` per slot, pipelined:
    for keys whose values need not be read at one instant."""
    if isinstance(conn, StateCluster):
        return conn.mget_nonatomic(keys)
    return conn.mget(keys)


def delete_if_value(conn: StateRedis, key: str, value: str) -> bool:
    """Compare-and-delete in one step: release a lock or lease, or clear a record, only
    while it still holds what this process put or read there."""
    return bool(conn.eval(_DELETE_IF_VALUE, 1, key, value))


def with_database(url: str, database: int) -> str:
    """``url`` pointing at another database of the same Redis server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))
