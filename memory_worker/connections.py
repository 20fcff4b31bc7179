"""Redis clients with explicit timeouts, one pool per URL and purpose in each process."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit, urlunsplit

import redis

from memory_worker.config import Settings
from memory_worker.redis_clients import state_redis

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


def state_client(settings: Settings, socket_timeout: float = OPS_SOCKET_TIMEOUT_S) -> redis.Redis:
    """``redis_client`` of the state Redis as configured: ``REDIS_URL``'s server, or the
    master Sentinel names (``memory_worker.redis_clients``)."""
    if not settings.redis_sentinels:
        return redis_client(settings.redis_url, socket_timeout)
    return _sentinel_client(settings.redis_url, settings.redis_sentinels,
                            settings.redis_sentinel_master, socket_timeout)


@functools.lru_cache(maxsize=16)
def _sentinel_client(url: str, sentinels: str, master: str | None,
                     socket_timeout: float) -> redis.Redis:
    settings = Settings(redis_url=url, redis_sentinels=sentinels, redis_sentinel_master=master)
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


def delete_if_value(conn: redis.Redis, key: str, value: str) -> bool:
    """Compare-and-delete in one step: release a lock or lease, or clear a record, only
    while it still holds what this process put or read there."""
    return bool(conn.eval(_DELETE_IF_VALUE, 1, key, value))


def with_database(url: str, database: int) -> str:
    """``url`` pointing at another database of the same Redis server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))
