"""Configuration: the environment, read once, validated whole, frozen.

``Settings.from_env()`` is the only place that reads ``os.environ``. Every
variable of the contract is validated, also those the calling process does not
use, so a typo stops the worker, beat and CLI alike with one line naming it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from memory_worker.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOG_FORMATS = ("json", "console")
ZEP_API_VERSIONS = ("v2", "v4")


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def shown_url(url: str) -> str:
    """``url`` fit for an error line or a log: its password replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
        except ValueError:
            raise ValueError(f"expected a {'/'.join(schemes)} URL with a numeric port, "
                             f"got {shown_url(value)!r}") from None
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"expected a {'/'.join(schemes)} URL, got {shown_url(value)!r}")
        return value.rstrip("/")

    return parse


def _url_list(*schemes: str) -> Callable[[str], str]:
    """One URL, or a failover list of them joined by ``;`` (kombu's form, and the only
    form of its ``sentinel://`` transport: one URL per sentinel)."""
    one = _url(*schemes)

    def parse(raw: str) -> str:
        return ";".join(one(part) for part in raw.split(";"))

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _basic_auth(raw: str) -> str:
    user, sep, password = raw.partition(":")
    if not sep or not user or not password:
        raise ValueError("expected user:password")
    return raw


def _host_ports(raw: str) -> str:
    """``host:port[,host:port...]`` (an IPv6 host in brackets), normalized: no blanks."""
    addresses = [part.strip() for part in raw.split(",")]
    if not any(addresses):
        raise ValueError("expected host:port[,host:port...], got nothing")
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port with a port from 1 to 65535, got {address!r}")
    return ",".join(addresses)


def _service_name(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"expected a Sentinel service name without blanks, got {raw!r}")
    return value


_REDIS_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_REDIS_SCHEMES = ("redis", "rediss")  # Sentinel names a host and port, never a socket
_BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "memory")


@dataclass(frozen=True)
class Settings:
    """Every knob of SPEC §3; durations in the unit their variable names."""

    flag_zep_write: bool = False
    flag_zep_read: bool = False
    zep_api_version: str = "v2"
    zep_api_url: str | None = None
    zep_api_key: str | None = dataclasses.field(default=None, repr=False)
    zep_timeout_ms: int = 1500
    read_timeout_ms: int = 250
    probe_timeout_ms: int = 150
    downgrade_threshold: int = 3
    downgrade_window_seconds: int = 60
    downgrade_hold_seconds: int = 300
    downgrade_hold_max_seconds: int = 3600
    latency_downgrade_ms: int = 200
    disable_auto_downgrade: bool = False
    probe_interval_seconds: int = 10
    cache_ttl_seconds: int = 30
    negative_cache_ttl_seconds: int = 3
    recent_lastn: int = 12
    redact_email: bool = True
    redact_phone: bool = True
    redact_address: bool = False
    max_content_chars: int = 100_000
    write_max_retries: int = 12
    write_max_age_seconds: int = 86_400
    # Queued messages of one thread a worker sends in one Zep add (1: each alone).
    write_batch_max: int = 30
    broker_visibility_timeout_seconds: int = 3600
    redeliver_after_seconds: int = 600
    redis_url: str = "redis://127.0.0.1:6379/0"
    # A Sentinel-managed state Redis: the sentinels (``host:port,...``) and the
    # service name they know its master by; REDIS_URL then gives only the
    # database, user, password and TLS (its host and port are not used).
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    # A Redis Cluster as the state store: REDIS_URL names one of its nodes (the
    # client discovers the others); key names gain hash tags (``keys.py``).
    redis_cluster: bool = False
    celery_broker_url: str | None = None
    celery_broker_sentinel_master: str | None = None
    key_prefix: str = "mem:"
    spool_dir: str = "./var/spool"
    prometheus_multiproc_dir: str | None = None
    log_format: str = "json"
    flower_basic_auth: str | None = dataclasses.field(default=None, repr=False)

    @property
    def broker_url(self) -> str:
        """``CELERY_BROKER_URL``, else the state Redis: through its sentinels when it has
        them (kombu's ``sentinel://`` transport, one URL per sentinel joined by ``;``)."""
        if self.celery_broker_url:
            return self.celery_broker_url
        if self.redis_sentinels:
            # kombu takes the credentials and database from the first URL only.
            parts = urlsplit(self.redis_url)
            auth, at, _ = parts.netloc.rpartition("@")
            first, *others = self.redis_sentinels.split(",")
            return ";".join([urlunsplit(("sentinel", f"{auth}{at}{first}", parts.path, "", "")),
                             *(f"sentinel://{address}" for address in others)])
        return self.redis_url

    @property
    def broker_sentinel_master(self) -> str | None:
        """The service name a ``sentinel://`` broker's master is known by."""
        return self.celery_broker_sentinel_master or self.redis_sentinel_master

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """``REDIS_SENTINELS`` as (host, port) pairs; empty without Sentinel."""
        if not self.redis_sentinels:
            return ()
        pairs = (address.rpartition(":") for address in self.redis_sentinels.split(","))
        return tuple((host.strip("[]"), int(port)) for host, _, port in pairs)

    @property
    def grace_seconds(self) -> int:
        """How long a forced record outlives its hold before Redis drops it (SPEC §4)."""
        return max(120, 10 * self.probe_interval_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, (field, parse) in _VARIABLES.items():
            raw = env.get(variable)
            if raw is None or (raw.strip() == "" and field in _OPTIONAL_WHEN_EMPTY):
                continue
            try:
                values[field] = parse(raw)
            except ValueError as exc:
                raise ConfigError(variable, str(exc)) from None
        settings = cls(**values)
        settings.validate()
        return settings

    def with_redis_url(self, url: str) -> Settings:
        try:
            parsed = _url(*_REDIS_SCHEMES)(url)
        except ValueError as exc:
            raise ConfigError("REDIS_URL", str(exc)) from None
        return dataclasses.replace(self, redis_url=parsed)

    def with_broker_url(self, url: str) -> Settings:
        try:
            parsed = _url_list(*_BROKER_SCHEMES)(url)
        except ValueError as exc:
            raise ConfigError("CELERY_BROKER_URL", str(exc)) from None
        return dataclasses.replace(self, celery_broker_url=parsed)

    def validate(self) -> None:
        """Cross-field rules; single fields were checked while parsing."""
        if self.flag_zep_write or self.flag_zep_read:
            required = "required when FLAG_ZEP_WRITE or FLAG_ZEP_READ is on"
            if not self.zep_api_url:
                raise ConfigError("ZEP_API_URL", required)
            if not self.zep_api_key:
                raise ConfigError("ZEP_API_KEY", required)
        if self.downgrade_hold_max_seconds < self.downgrade_hold_seconds:
            raise ConfigError(
                "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS",
                f"must be at least MEMORY_DOWNGRADE_HOLD_SECONDS ({self.downgrade_hold_seconds})",
            )
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            given, missing = (("REDIS_SENTINELS", "REDIS_SENTINEL_MASTER") if self.redis_sentinels
                              else ("REDIS_SENTINEL_MASTER", "REDIS_SENTINELS"))
            raise ConfigError(missing, f"required when {given} is set (both or neither)")
        if (self.redis_sentinels
                and urlsplit(self.redis_url).scheme not in _SENTINEL_REDIS_SCHEMES):
            raise ConfigError("REDIS_URL", "must be a redis:// or rediss:// URL when "
                                           "REDIS_SENTINELS is set (Sentinel names a host "
                                           "and port)")
        if (self.redis_sentinels and not self.celery_broker_url
                and urlsplit(self.redis_url).scheme == "rediss"):
            # kombu's sentinel:// transport takes TLS from Celery's broker_use_ssl, not a URL.
            raise ConfigError("CELERY_BROKER_URL", "required when REDIS_URL is rediss:// and "
                                                   "REDIS_SENTINELS is set (the broker through "
                                                   "the sentinels would not use TLS)")
        if self.redis_cluster:
            self._validate_cluster()
        if (urlsplit(self.broker_url.split(";", 1)[0]).scheme == "sentinel"
                and not self.broker_sentinel_master):
            raise ConfigError("CELERY_BROKER_SENTINEL_MASTER",
                              "required for a sentinel:// CELERY_BROKER_URL "
                              "(or set REDIS_SENTINEL_MASTER)")
        if 0 < self.read_timeout_ms <= self.latency_downgrade_ms:
            # A read never takes longer than its budget: such a threshold could never fire.
            raise ConfigError(
                "MEMORY_LATENCY_DOWNGRADE_MS",
                f"must be below MEMORY_READ_TIMEOUT_MS ({self.read_timeout_ms}), or 0 to disable; "
                f"got {self.latency_downgrade_ms}",
            )

    def _validate_cluster(self) -> None:
        """What a Redis Cluster state store rules out."""
        if self.redis_sentinels:
            raise ConfigError("REDIS_CLUSTER", "cannot be on with REDIS_SENTINELS (a cluster "
                                               "fails over by itself)")
        url = urlsplit(self.redis_url)
        if url.scheme not in _SENTINEL_REDIS_SCHEMES:
            raise ConfigError("REDIS_URL", "must be a redis:// or rediss:// URL of a cluster "
                                           "node when REDIS_CLUSTER is on")
        if url.path.strip("/") not in ("", "0"):
            raise ConfigError("REDIS_URL", "must name database 0 when REDIS_CLUSTER is on "
                                           "(a cluster has no other)")
        if not self.celery_broker_url:
            raise ConfigError("CELERY_BROKER_URL", "required when REDIS_CLUSTER is on (Celery's "
                                                   "Redis transport cannot use a cluster)")
        if "{" in self.key_prefix or "}" in self.key_prefix:
            raise ConfigError("MEMORY_KEY_PREFIX", "must not contain '{' or '}' when "
                                                   "REDIS_CLUSTER is on (the keys' hash tags "
                                                   "are built from it)")

    def describe(self) -> dict[str, object]:
        """The settings as an operator may see them: secrets reduced to set/unset."""
        shown: dict[str, object] = {}
        for variable, (field, _) in _VARIABLES.items():
            value = getattr(self, field)
            if field in _SECRETS:
                value = "(set)" if value else "(unset)"
            shown[variable] = value
        return shown


_SECRETS = frozenset({"zep_api_key", "flower_basic_auth"})
_OPTIONAL_WHEN_EMPTY = frozenset(
    {"zep_api_url", "zep_api_key", "celery_broker_url", "prometheus_multiproc_dir",
     "flower_basic_auth", "redis_sentinels", "redis_sentinel_master",
     "celery_broker_sentinel_master"}
)

_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "FLAG_ZEP_WRITE": ("flag_zep_write", _boolean),
    "FLAG_ZEP_READ": ("flag_zep_read", _boolean),
    "ZEP_API_VERSION": ("zep_api_version", _choice(*ZEP_API_VERSIONS)),
    "ZEP_API_URL": ("zep_api_url", _url("http", "https")),
    "ZEP_API_KEY": ("zep_api_key", _text),
    "ZEP_TIMEOUT_MS": ("zep_timeout_ms", _integer(1)),
    "MEMORY_READ_TIMEOUT_MS": ("read_timeout_ms", _integer(1)),
    "MEMORY_PROBE_TIMEOUT_MS": ("probe_timeout_ms", _integer(1)),
    "MEMORY_DOWNGRADE_THRESHOLD": ("downgrade_threshold", _integer(1)),
    "MEMORY_DOWNGRADE_WINDOW_SECONDS": ("downgrade_window_seconds", _integer(1)),
    "MEMORY_DOWNGRADE_HOLD_SECONDS": ("downgrade_hold_seconds", _integer(1)),
    "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": ("downgrade_hold_max_seconds", _integer(1)),
    "MEMORY_LATENCY_DOWNGRADE_MS": ("latency_downgrade_ms", _integer(0)),
    "DISABLE_AUTO_DOWNGRADE": ("disable_auto_downgrade", _boolean),
    "MEMORY_PROBE_INTERVAL_SECONDS": ("probe_interval_seconds", _integer(1)),
    "MEMORY_CACHE_TTL_SECONDS": ("cache_ttl_seconds", _integer(1)),
    "MEMORY_NEGATIVE_CACHE_TTL_SECONDS": ("negative_cache_ttl_seconds", _integer(1)),
    "MEMORY_RECENT_LASTN": ("recent_lastn", _integer(1)),
    "MEMORY_REDACT_EMAIL": ("redact_email", _boolean),
    "MEMORY_REDACT_PHONE": ("redact_phone", _boolean),
    "MEMORY_REDACT_ADDRESS": ("redact_address", _boolean),
    "MEMORY_MAX_CONTENT_CHARS": ("max_content_chars", _integer(1)),
    "MEMORY_WRITE_MAX_RETRIES": ("write_max_retries", _integer(0)),
    "MEMORY_WRITE_MAX_AGE_SECONDS": ("write_max_age_seconds", _integer(1)),
    "MEMORY_WRITE_BATCH_MAX": ("write_batch_max", _integer(1, 30)),
    "MEMORY_BROKER_VISIBILITY_TIMEOUT_SECONDS": ("broker_visibility_timeout_seconds", _integer(1)),
    "MEMORY_REDELIVER_AFTER_SECONDS": ("redeliver_after_seconds", _integer(1)),
    "REDIS_URL": ("redis_url", _url(*_REDIS_SCHEMES)),
    "REDIS_SENTINELS": ("redis_sentinels", _host_ports),
    "REDIS_SENTINEL_MASTER": ("redis_sentinel_master", _service_name),
    "REDIS_CLUSTER": ("redis_cluster", _boolean),
    "CELERY_BROKER_URL": ("celery_broker_url", _url_list(*_BROKER_SCHEMES)),
    "CELERY_BROKER_SENTINEL_MASTER": ("celery_broker_sentinel_master", _service_name),
    "MEMORY_KEY_PREFIX": ("key_prefix", _text),
    "MEMORY_SPOOL_DIR": ("spool_dir", _text),
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus_multiproc_dir", _text),
    "MEMORY_LOG_FORMAT": ("log_format", _choice(*_LOG_FORMATS)),
    "FLOWER_BASIC_AUTH": ("flower_basic_auth", _basic_auth),
}

VARIABLES: tuple[str, ...] = tuple(_VARIABLES)
"""The names of every environment variable the project reads."""
