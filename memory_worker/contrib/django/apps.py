"""The Django app: ``ready()`` configures this process's runtime from ``settings.MEMORY_WORKER``.

Precedence: an environment variable set to a non-empty value wins over the
same key of ``MEMORY_WORKER``, which wins over the default of SPEC §3. The
values taken from the dict are then put into ``os.environ`` (never over a
variable already set), so that every part of the library in this process
reads one configuration: the runtime, the Celery app that publishes the
writes, and the CLI run by ``manage.py memory_worker``. The Celery worker
and beat are processes of their own and read their environment.

A bad value stops the process at start with ``ImproperlyConfigured`` naming
the variable. Under ``manage.py memory_worker`` the command reports it
instead, in one line, and exits 1 (as ``memory-worker`` does).
"""

from __future__ import annotations

import os
import sys

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from memory_worker import logs, runtime
from memory_worker.contrib.django.config import SETTING, resolve
from memory_worker.errors import ConfigError

COMMAND = "memory_worker"  # the management command's name
HOST_LOGGING = "MEMORY_WORKER_HOST_LOGGING"

_configured_pid: int | None = None
_error: ConfigError | None = None


class MemoryWorkerConfig(AppConfig):  # type: ignore[misc]  # django ships no types
    name = "memory_worker.contrib.django"
    label = "memory_worker"
    verbose_name = "Memory worker"

    def ready(self) -> None:
        configure_process()


def configure_process() -> None:
    """Configure the runtime from the Django settings, once per process."""
    global _configured_pid, _error
    if _configured_pid == os.getpid():
        return
    try:
        resolved = resolve(getattr(settings, SETTING, None))
        host_logging = getattr(settings, HOST_LOGGING, False)
        if not isinstance(host_logging, bool):
            raise ConfigError(HOST_LOGGING, f"expected True or False, got {host_logging!r}")
    except ConfigError as exc:
        if running_command():
            _error = exc  # the command says it in one line and exits 1
            return
        raise ImproperlyConfigured(f"memory_worker: configuration error: {exc}") from None
    for variable, value in resolved.from_setting.items():
        os.environ[variable] = value
    runtime.configure(resolved.settings)
    if host_logging:
        logs.use_host_logging()
    _configured_pid, _error = os.getpid(), None


def configuration_error() -> ConfigError | None:
    """Why ``ready()`` left the runtime unconfigured under ``manage.py memory_worker``."""
    return _error


def running_command() -> bool:
    """Whether this process is ``manage.py memory_worker ...`` (or ``django-admin``)."""
    return sys.argv[1:2] == [COMMAND]
