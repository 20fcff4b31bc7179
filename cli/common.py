"""What every command shares: settings, the Redis connection, the broker, and error reporting.

Exit codes: 0 success, 1 an operational failure reported as one line on
stderr (bad configuration, Redis or the broker unreachable, a port taken, a
directory that cannot be used), 2 a usage error (click's own).

A command acts on one deployment: the Redis of ``--redis-url`` (env
``REDIS_URL``) and, for the commands that publish, the broker of
``--broker-url`` (env ``CELERY_BROKER_URL``), which is that same Redis when
neither is given (SPEC §3, §8). Publishing goes through a Celery app built
from these settings, never through the process-wide app configured from the
environment.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import redis
from redis.connection import parse_url

from memory_worker.clock import Clock, system_clock
from memory_worker.config import Settings
from memory_worker.connections import state_client
from memory_worker.errors import ConfigError, StateUnavailable
from memory_worker.keys import Keys
from memory_worker.redis_clients import StateRedis

R = TypeVar("R")
# The password of any URL quoted in a message: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(://[^/@\s:'\"]*:)[^\s'\"]*@")
Send = Callable[[str, dict[str, Any]], None]


class OperationalError(click.ClickException):
    """A failure of the environment, not of the command line: exit 1, one line."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        message = " ".join(self.format_message().split())  # one line, whatever it quotes
        message = _URL_PASSWORD.sub(r"\1***@", message)  # never a secret, whoever wrote it
        click.echo(f"memory-worker: error: {message}", err=True)


def redacted_url(url: str) -> str:
    """The URL without its password, fit for an error message (also when it is malformed)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "(a URL that cannot be parsed)"
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


@dataclass
class Ops:
    """The handles a command works with; the clock is injectable for tests."""

    settings: Settings
    clock: Clock = system_clock
    keys: Keys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = Keys.of(self.settings)

    @functools.cached_property
    def conn(self) -> StateRedis:
        return state_client(self.settings)

    @functools.cached_property
    def send(self) -> Send:
        """Publish ``memory.mirror_message`` to this deployment's broker, once."""
        from memory_worker.celery_app import sender

        return sender(self.settings)

    @property
    def broker(self) -> str:
        """The broker's URL, fit for an error message."""
        return redacted_url(self.settings.broker_url)

    def now(self) -> float:
        return self.clock()


def _url_problem(variable: str, url: str, parse: Callable[[str], object]) -> ConfigError | None:
    """Why a client could not be built for ``url``, found before any command runs."""
    try:
        parse(url)
    except (ValueError, TypeError) as exc:  # TypeError: an option its connection refuses
        return ConfigError(variable, f"{exc} in {redacted_url(url)!r}")
    return None


def _redis_options(url: str) -> object:
    """Parse ``url`` and build (without connecting) the connection its options describe."""
    parse_url(url)  # type: ignore[no-untyped-call]
    try:
        return redis.ConnectionPool.from_url(url).make_connection()
    except redis.RedisError as exc:  # an option value it refuses (ssl_cert_reqs=soon)
        raise ValueError(str(exc)) from exc


def _port(url: str) -> object:
    return urlsplit(url).port  # raises for a port that is not a number in range


def load_settings(redis_url: str | None, broker_url: str | None = None) -> Settings:
    try:
        settings = Settings.from_env()
        if redis_url:
            settings = settings.with_redis_url(redis_url)
        if broker_url:
            settings = settings.with_broker_url(broker_url)
        problem = (_url_problem("REDIS_URL", settings.redis_url, _redis_options)
                   or _url_problem("CELERY_BROKER_URL", settings.broker_url, _port))
        if problem is not None:
            raise problem
        return settings
    except ConfigError as exc:
        raise OperationalError(f"configuration: {exc}") from None


def _operation(command: Callable[..., R], *, publishes: bool) -> Callable[..., R]:
    def wrapper(ctx: click.Context, /, *args: Any, redis_url: str | None = None,
                broker_url: str | None = None, **kwargs: Any) -> R:
        settings = load_settings(redis_url, broker_url)
        obj = ctx.obj if isinstance(ctx.obj, dict) else {}
        ops = Ops(settings, obj.get("clock", system_clock))
        try:
            return command(ops, *args, **kwargs)
        except (redis.RedisError, StateUnavailable) as exc:
            raise OperationalError(
                f"Redis at {redacted_url(settings.redis_url)} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        except OSError as exc:  # a file, directory or socket the command could not use
            where = f" ({exc.filename})" if exc.filename else ""
            raise OperationalError(f"{exc.strerror or type(exc).__name__}{where}") from None

    functools.update_wrapper(wrapper, command)
    decorated = click.pass_context(wrapper)
    if publishes:
        decorated = click.option(
            "--broker-url", envvar="CELERY_BROKER_URL", metavar="URL", default=None,
            help="Broker to publish to (env CELERY_BROKER_URL; default: the Redis of "
                 "--redis-url).")(decorated)
    option = click.option("--redis-url", envvar="REDIS_URL", metavar="URL", default=None,
                          help="Redis holding the shared state (env REDIS_URL).")
    return option(decorated)


def operation(command: Callable[..., R]) -> Callable[..., R]:
    """Give a command ``--redis-url``, an ``Ops`` as first argument, and one-line failures."""
    return _operation(command, publishes=False)


def publishing_operation(command: Callable[..., R]) -> Callable[..., R]:
    """``operation`` for a command that publishes tasks: ``--broker-url`` too (``Ops.send``)."""
    return _operation(command, publishes=True)
