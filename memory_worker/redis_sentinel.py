"""The state Redis as a Sentinel-managed master (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``).

redis-py's ``Sentinel.master_for`` pools ask the sentinels for the master's
address each time they open a connection, and drop their idle connections when
it has moved; a connection whose command fails (the master died) or is refused
(``READONLY``: it was demoted) is closed, so the next command connects to
whatever the sentinels name then. During a failover that is nobody: a sentinel
that sees the master down no longer names it, and the lookup fails at once
(``MasterNotFoundError``, a ``ConnectionError``) until a replica is promoted.

``REDIS_URL`` still gives the database, user, password and TLS (``rediss://``)
of the master and its replicas; its host and port are not used. The sentinels
are asked in plain TCP, without a password, with the socket timeouts of the
client that asks, so a lookup on the read path waits no longer per sentinel than
the read path waits for Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
from redis.connection import AbstractConnection, SSLConnection, parse_url
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from memory_worker.config import Settings

_LOOKUP_OPTIONS = ("socket_timeout", "socket_connect_timeout")


def _url_options(settings: Settings) -> dict[str, Any]:
    """What ``REDIS_URL`` says besides where: database, credentials, TLS and its options."""
    options: dict[str, Any] = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    options.pop("host", None)
    options.pop("port", None)
    options["ssl"] = options.pop("connection_class", None) is SSLConnection
    return options


def _lookups(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in _LOOKUP_OPTIONS if k in options}


def _master(settings: Settings) -> str:
    assert settings.redis_sentinel_master is not None  # Settings.validate: both or neither
    return settings.redis_sentinel_master


def master_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the current master, with ``options`` on its connections."""
    sentinels = Sentinel(settings.sentinel_addresses, sentinel_kwargs=_lookups(options))
    client: redis.Redis = sentinels.master_for(_master(settings), **_url_options(settings),
                                               **options)
    return client


def async_master_client(settings: Settings, **options: Any) -> aredis.Redis:
    """``master_client``'s asyncio twin."""
    sentinels = asentinel.Sentinel(settings.sentinel_addresses,
                                   sentinel_kwargs=_lookups(options))
    client: aredis.Redis = sentinels.master_for(_master(settings), **_url_options(settings),
                                                **options)
    return client


def master_pool(settings: Settings,
                derive: Callable[[type[AbstractConnection]], type[AbstractConnection]],
                **options: Any) -> redis.ConnectionPool:
    """A pool of the current master whose connections are of ``derive(base)``: ``base``
    the Sentinel-managed TCP or TLS connection. The sentinels are asked on connections
    of ``derive(redis.Connection)``, so what bounds the pool's waits bounds theirs."""
    url_options = _url_options(settings)
    base = SentinelManagedSSLConnection if url_options.pop("ssl") else SentinelManagedConnection
    sentinels = Sentinel(settings.sentinel_addresses, sentinel_kwargs=_lookups(options))
    lookup_class = derive(redis.Connection)
    sentinels.sentinels = [
        redis.Redis(connection_pool=redis.ConnectionPool(
            host=host, port=port, connection_class=lookup_class,
            **sentinels.sentinel_kwargs))
        for host, port in settings.sentinel_addresses
    ]
    pool: redis.ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
        _master(settings), sentinels, is_master=True, connection_class=derive(base),
        **url_options, **options)
    return pool
