"""The Celery application: ``celery -A memory_worker worker|beat``.

Configuration is computed from ``Settings`` when Celery first needs it, not at
import; a bad environment stops ``celery worker`` and ``celery beat`` with one
line naming the variable, and raises ``ConfigError`` anywhere else.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import click
from celery import Celery
from celery.signals import after_setup_logger, worker_process_init

from memory_worker import logs
from memory_worker.broker import DelayedDeliveryTask, broker_config, sweeps_ledger
from memory_worker.config import Settings
from memory_worker.errors import ConfigError

WRITE_QUEUE = "memory_writes"
CONTROL_QUEUE = "memory_control"
MIRROR_TASK = "memory.mirror_message"
PROBE_TASK = "memory.probe_recovery"
SWEEP_TASK = "memory.sweep_pending"

# The longest a write waits between two attempts (SPEC §6: backoff capped at
# 300 s; a 429's Retry-After is capped at 300 s too) plus its jitter.
LONGEST_RETRY_COUNTDOWN_S = 330
# A task that is not acknowledged within the visibility timeout
# (MEMORY_BROKER_VISIBILITY_TIMEOUT_SECONDS, default 3600 s) is handed to
# another worker by the Redis transport. Retries are scheduled with an ETA and
# held unacknowledged by the worker until then, so by default the timeout
# exceeds the longest countdown by a wide margin and a waiting retry never runs
# twice. It is also how long the tasks a worker held come back after that
# worker was killed with -9 or lost a broker that restarted: a shorter timeout
# recovers them sooner, and a retry that waits longer than it runs twice (the
# done-marker and the derived uuid still store it once).
# One attempt: session creation plus up to four chunk batches at the write
# budget each; the soft limit lets the task record its state before the kill.
TASK_SOFT_TIME_LIMIT_S = 50
TASK_TIME_LIMIT_S = 60


def sweep_interval_seconds(settings: Settings) -> float:
    """How often the delivery ledger is swept: a quarter of its slack, 1 to 60 s."""
    return min(60.0, max(1.0, settings.redeliver_after_seconds / 4))


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # A broker that does not answer must not hang a web handler's enqueue:
        # the caller spools to the outbox instead (SPEC §6).
        "broker_connection_timeout": 2.0,
        # Workers reconnect forever: a broker restart must not end them.
        "broker_connection_max_retries": None,
        "broker_heartbeat": 30,  # amqp only
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_compression": None,
        "task_ignore_result": True,
        "result_backend": None,
        # Exactly-once delivery relies on redelivery of unfinished work: ack
        # after the task ran, requeue when the worker process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": TASK_SOFT_TIME_LIMIT_S,
        "task_time_limit": TASK_TIME_LIMIT_S,
        "task_default_queue": WRITE_QUEUE,
        "task_routes": {
            MIRROR_TASK: {"queue": WRITE_QUEUE, "routing_key": WRITE_QUEUE},
            PROBE_TASK: {"queue": CONTROL_QUEUE, "routing_key": CONTROL_QUEUE},
            SWEEP_TASK: {"queue": CONTROL_QUEUE, "routing_key": CONTROL_QUEUE},
        },
        "beat_schedule": {
            "memory-probe-recovery": {
                "task": PROBE_TASK,
                "schedule": timedelta(seconds=settings.probe_interval_seconds),
                # A probe that could not run in its interval is worthless later.
                "options": {"queue": CONTROL_QUEUE,
                            "expires": float(settings.probe_interval_seconds)},
            },
        },
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Keep the project's own log handler: Celery configures the root logger only.
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
    }
    # Queues, exchanges and transport options of the broker in use (memory_worker.broker).
    config.update(broker_config(settings.broker_url, (WRITE_QUEUE, CONTROL_QUEUE),
                                visibility_timeout_s=settings.broker_visibility_timeout_seconds,
                                sentinel_master=settings.broker_sentinel_master))
    if sweeps_ledger(settings.broker_url):
        config["beat_schedule"]["memory-sweep-pending"] = {
            "task": SWEEP_TASK,
            "schedule": timedelta(seconds=sweep_interval_seconds(settings)),
            "options": {"queue": CONTROL_QUEUE, "expires": sweep_interval_seconds(settings)},
        }
    return config


class _ConfigurationExit(click.ClickException):
    """Raised inside a ``celery`` command: click prints one line and exits 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        print(f"memory_worker: configuration error: {self.message}", file=sys.stderr)


def _configuration() -> dict[str, Any]:
    try:
        return celery_config(Settings.from_env())
    except ConfigError as exc:
        if click.get_current_context(silent=True) is not None:
            raise _ConfigurationExit(str(exc)) from None
        raise


def sender(settings: Settings) -> Callable[[str, dict[str, Any]], None]:
    """Publish ``memory.mirror_message`` to the broker of ``settings``, once, no kombu retries.

    For processes whose settings are not the environment's (tools, benchmarks,
    tests); the default runtime publishes through ``app``.
    """
    publisher = Celery("memory_worker_publisher", set_as_current=False)
    publisher.conf.update(celery_config(settings))

    def send(task_id: str, kwargs: dict[str, Any]) -> None:
        publish_mirror(publisher, task_id, kwargs)

    return send


def publish_mirror(celery: Celery, task_id: str, kwargs: dict[str, Any]) -> None:
    """Publish ``memory.mirror_message`` once: no kombu retries (the outbox retries).

    The task and its ``task-sent`` event go out together, in one round trip on a
    Redis broker (a producer batch; other transports publish each at once). What
    Flower and the events show of the arguments is the message's id, not its
    content: the content is redacted already, but a monitoring tool need not hold
    it, and the short text spares two ``repr`` walks of the payload per publish.
    """
    payload = kwargs.get("payload")
    shown = payload.get("client_msg_id") if isinstance(payload, dict) else None
    with celery.producer_or_acquire() as producer, producer.batch():
        celery.send_task(MIRROR_TASK, kwargs=kwargs, task_id=task_id, retry=False,
                         producer=producer, argsrepr="()",
                         kwargsrepr=f"{{'payload': <client_msg_id={shown!r}>}}")


# A library must not change its host's Celery defaults: not the current app (the host's
# `@shared_task` would land on memory_writes), and no fix-ups (Django's makes an app
# the default one). `celery -A memory_worker worker|beat` makes it current in its own processes.
app = Celery("memory_worker",
             include=["memory_worker.tasks.probe", "memory_worker.tasks.mirror",
                      "memory_worker.tasks.sweep"],
             set_as_current=False, fixups=[], task_cls=DelayedDeliveryTask)
app.add_defaults(_configuration)



def _quiet_http_clients(**_: object) -> None:
    """``celery -A memory_worker worker|beat``: no per-request httpx lines in the logs.
    Another app's worker in a host process keeps its own logging as it is."""
    from celery import current_app

    if current_app.main == app.main:
        logs.quiet_http_clients()


after_setup_logger.connect(_quiet_http_clients, weak=False,
                           dispatch_uid="memory_worker.celery_app.quiet_http")


def _trace_pool_process(**_: object) -> None:
    """Each pool process of ``celery -A memory_worker worker`` traces when the worker has
    a tracer provider by now (``memory_worker.tracing``); nothing without OpenTelemetry."""
    from celery import current_app

    if current_app.main == app.main:
        from memory_worker import tracing

        try:
            tracing.instrument()
        except Exception as exc:  # tracing is a hook: the pool process works without it
            logs.log_event(logging.getLogger("memory_worker.tracing"),
                           "memory_tracing_failed", logging.WARNING, error=type(exc).__name__)


worker_process_init.connect(_trace_pool_process, weak=False,
                            dispatch_uid="memory_worker.celery_app.tracing")


# Pool processes clear and mark their metric files (prometheus_client multiprocess mode).
from memory_worker import exposition as _exposition  # noqa: E402, F401
