"""Redis clients with explicit timeouts, one pool per URL and purpose in each process."""

from __future__ import annotations

import functools

import redis

# State reads sit on the chat's hot path: a Redis that does not answer must
# cost milliseconds, not the client library's default of waiting forever.
STATE_SOCKET_TIMEOUT_S = 0.1
# Operators and workers can afford to wait a little longer.
OPS_SOCKET_TIMEOUT_S = 2.0


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


def as_text(value: object) -> str | None:
    """A Redis reply as ``str`` (clients here decode, but the types cannot say so)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
