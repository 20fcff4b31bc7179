"""What every command shares: settings, the Redis connection, and error reporting.

Exit codes: 0 success, 1 an operational failure reported as one line on
stderr (bad configuration, Redis unreachable), 2 a usage error (click's own).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import redis

from memory_worker.clock import Clock, system_clock
from memory_worker.config import Settings
from memory_worker.connections import redis_client
from memory_worker.errors import ConfigError, StateUnavailable
from memory_worker.keys import Keys

R = TypeVar("R")


class OperationalError(click.ClickException):
    """A failure of the environment, not of the command line: exit 1, one line."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"memory-worker: error: {self.format_message()}", err=True)


def redacted_url(url: str) -> str:
    """The URL without its password, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Ops:
    """The handles a command works with; the clock is injectable for tests."""

    settings: Settings
    clock: Clock = system_clock
    keys: Keys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = Keys(self.settings.key_prefix)

    @functools.cached_property
    def conn(self) -> redis.Redis:
        return redis_client(self.settings.redis_url)

    def now(self) -> float:
        return self.clock()


def load_settings(redis_url: str | None) -> Settings:
    try:
        settings = Settings.from_env()
        return settings.with_redis_url(redis_url) if redis_url else settings
    except ConfigError as exc:
        raise OperationalError(f"configuration: {exc}") from None


def operation(command: Callable[..., R]) -> Callable[..., R]:
    """Give a command ``--redis-url``, an ``Ops`` as first argument, and one-line failures."""

    def wrapper(ctx: click.Context, /, *args: Any, redis_url: str | None = None,
                **kwargs: Any) -> R:
        settings = load_settings(redis_url)
        obj = ctx.obj if isinstance(ctx.obj, dict) else {}
        ops = Ops(settings, obj.get("clock", system_clock))
        try:
            return command(ops, *args, **kwargs)
        except (redis.RedisError, StateUnavailable) as exc:
            raise OperationalError(
                f"Redis at {redacted_url(settings.redis_url)} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    functools.update_wrapper(wrapper, command)
    option = click.option("--redis-url", envvar="REDIS_URL", metavar="URL", default=None,
                          help="Redis holding the shared state (env REDIS_URL).")
    return option(click.pass_context(wrapper))
