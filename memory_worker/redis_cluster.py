"""The state Redis as a Redis Cluster (``REDIS_CLUSTER``).

``REDIS_URL`` names one node of the cluster (with the credentials and TLS of
all of them); redis-py's cluster clients ask it for the slot map and route
each command to the master of its keys' slot, following ``MOVED`` and
``ASK`` redirects and refreshing the map when a node fails. A command whose
keys are in more than one slot is refused by the client before it is sent:
``keys.py`` tags the names so that every script and multi-key command of the
project stays in one slot.

Two differences from a single server are bridged here, below the interface
the rest of the project uses:

- When no node answers, redis-py's cluster clients raise
  ``RedisClusterUnreachableError`` (or ``SlotNotCoveredError`` for a slot no
  live master serves), which are not ``redis.RedisError``: every caller
  expects ``redis.RedisError`` for an unreachable Redis, so these two arrive
  as ``redis.ConnectionError``. Other cluster errors (a command across slots)
  are mistakes of the caller and are left as they are.
- The synchronous client asks a node for the slot map when it is built, so
  building one while no node answers raises (``redis.ConnectionError``).
  The asyncio client asks on its first command.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterPipeline, RedisCluster
from redis.connection import AbstractConnection, Connection, SSLConnection, parse_url
from redis.exceptions import (
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
)

from memory_worker.config import Settings

_UNREACHABLE = (RedisClusterUnreachableError, SlotNotCoveredError)


def _unreachable(exc: Exception) -> redis.ConnectionError:
    return redis.ConnectionError(f"Redis Cluster unreachable: {exc}")


class StateCluster(RedisCluster):
    """redis-py's cluster client; an unreachable cluster raises ``redis.ConnectionError``."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except _UNREACHABLE as exc:
            raise _unreachable(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> StatePipeline:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        # redis-py builds the pipeline (its arguments follow the client's); only
        # ``execute`` differs, so the instance takes the subclass that adds it.
        pipe.__class__ = StatePipeline
        assert isinstance(pipe, StatePipeline)
        return pipe


class StatePipeline(ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except _UNREACHABLE as exc:
            raise _unreachable(exc) from exc


class AsyncStateCluster(AsyncRedisCluster):
    """``StateCluster``'s asyncio twin."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise _unreachable(exc) from exc

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> AsyncStatePipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        # As redis-py builds its own (its typing deems the class abstract).
        return AsyncStatePipeline(self, transaction)  # type: ignore[abstract]


class AsyncStatePipeline(AsyncClusterPipeline):
    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except _UNREACHABLE as exc:
            raise _unreachable(exc) from exc


def _node(settings: Settings) -> dict[str, Any]:
    """What ``REDIS_URL`` says: the node to ask first, credentials, TLS and its options."""
    options: dict[str, Any] = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    options.pop("db", None)  # Settings.validate: 0, the only database of a cluster
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 6379)
    return options


def client(settings: Settings, **options: Any) -> StateCluster:
    """A client of the cluster with ``options`` (redis-py's keyword arguments; a
    ``connection_class`` given is derived by the caller from ``base_connection``)."""
    node = _node(settings)
    if "connection_class" in options:
        node.pop("connection_class", None)
    try:
        return StateCluster(**node, **options)
    except _UNREACHABLE as exc:
        raise _unreachable(exc) from exc


def base_connection(settings: Settings) -> type[AbstractConnection]:
    """The connection class ``REDIS_URL`` asks for: TCP, or TLS for ``rediss://``."""
    cls: type[AbstractConnection] = _node(settings).get("connection_class", Connection)
    return cls


def async_client(settings: Settings, **options: Any) -> AsyncStateCluster:
    """``client``'s asyncio twin; it asks for the slot map on its first command."""
    node = _node(settings)
    node["ssl"] = node.pop("connection_class", None) is SSLConnection
    return AsyncStateCluster(**node, **options)
