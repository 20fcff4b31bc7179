"""A redis-py client whose every wait ends by a deadline set around the command.

The read path's Redis steps after the Zep call must end within what is left of
the read's budget (SPEC §5: the whole read within ``MEMORY_READ_TIMEOUT_MS`` +
25 ms). redis-py's timeouts are per socket operation and fixed per connection;
a connection of this client instead gives each wait (the TCP connect, the
handshake of a new connection, sending a command, each reply) what is left of
the deadline that ``within(seconds)`` set for the calling thread or task, never
more than the client's own socket timeout. A wait that runs out is redis-py's
own socket timeout: it raises ``redis.TimeoutError`` and disconnects the
connection, so no late reply is left on it for the next command.

The client has its own connection pool, used only for such bounded commands:
a per-command timeout set on a pooled connection of the read path's main
client would not cover a connection that the pool opens for the command (the
pool connects it, with the configured timeouts, before handing it out), and
every check added to the main client's connections would be paid by the
cache-hit path too.

A Redis Cluster client keeps one such pool per node, so every command it
sends, and the look-ups of the slot map that a failure makes it run before
its next command, wait no longer than the deadline allows. A command of the
bounded steps may still need two round trips (a ``MOVED`` redirect after a
slot migrated): both end by the same deadline.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from memory_worker.config import Settings
from memory_worker.redis_clients import StateRedis, bounded_state_redis

# time.monotonic() by which the current thread's or task's command must be done.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "redis_deadline", default=None
)
# A deadline already passed still arms a (tiny) timeout rather than none, so that
# redis-py ends the wait and cleans up the connection as for any timeout.
_LEAST_SECONDS = 0.0001


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Commands of a ``deadline_client`` in this block end within ``seconds``."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class _DeadlineWaits(AbstractConnection):
    """Mixed into the backend's connection class (TCP, TLS, Unix socket, Sentinel-managed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._most = self.socket_timeout  # a wait never gets more than configured

    def _wait(self) -> float | None:
        deadline = _DEADLINE.get()
        if deadline is None:
            return self._most
        left = max(deadline - time.monotonic(), _LEAST_SECONDS)
        return left if self._most is None else min(left, self._most)

    def connect_check_health(self, check_health: bool = True,
                             retry_socket_connect: bool = True) -> None:
        # Read by the connect itself and armed on the new socket; each later
        # wait arms its own.
        self.socket_timeout = self.socket_connect_timeout = self._wait()
        super().connect_check_health(check_health, retry_socket_connect)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.update_current_socket_timeout(self._wait())  # no socket yet: the connect arms it
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self.update_current_socket_timeout(self._wait())
        return super().read_response(*args, **kwargs)


def deadline_client(settings: Settings, timeout_seconds: float) -> StateRedis:
    """A client of the state Redis (strings decoded, no retries) for commands run
    ``within`` a time."""
    return bounded_state_redis(
        settings, _bounded, decode_responses=True, retry=Retry(NoBackoff(), 0),
        socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds,
    )


def _bounded(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (the connection class of the backend: TCP, TLS, Unix socket, Sentinel's)
    with every wait bounded by the deadline."""
    return type(f"Deadline{base.__name__}", (_DeadlineWaits, base), {})
