"""The broker below Celery: what the project configures for Redis and for RabbitMQ.

The choice is made once, by the scheme of ``CELERY_BROKER_URL`` (``redis``,
``rediss``, ``sentinel``: Redis; ``amqp``, ``amqps``, ``pyamqp``: RabbitMQ);
the tasks, enqueue and the outbox do not know which is in use.

**Redis**, also Sentinel-managed (``sentinel://``, with the master's service
name as the ``master_name`` transport option). Direct exchanges, the
visibility timeout and socket timeouts as transport options. The transport
has two gaps that late acknowledgement does not close (see
``memory_worker.ledger``), so beat sweeps the delivery ledger.

**RabbitMQ** (Celery 5.5+, kombu 5.5+):

* ``memory_writes`` and ``memory_control`` are quorum queues
  (``x-queue-type: quorum``): replicated, fsynced before a publish is
  confirmed, recovered after a restart of the broker;
* publisher confirms (``confirm_publish``): a publish returns only once the
  broker has the message, and raises otherwise, so enqueue spools what the
  broker did not take, and a retry that was not confirmed is not acknowledged;
* global QoS off: quorum queues only know per-consumer prefetch, and Celery
  turns global QoS off when it detects them (``worker_detect_quorum_queues``);
* countdowns through Celery's native delayed delivery: the worker declares
  the ``celery_delayed_*`` topology (quorum queues whose TTL dead-letters
  onwards, at least once) and binds the project's queues to it; this needs
  topic exchanges, so the project's exchanges are topic exchanges. A retry
  waits in the broker, not unacknowledged in a worker. The delay is counted
  in whole seconds (kombu encodes it in binary in the routing key, and a
  countdown under one second cannot be encoded), so countdowns are rounded up
  (``DelayedDeliveryTask``).

What late acknowledgement leaves to the ledger on Redis does not happen here:
a delivery moves a message to the consumer's unacknowledged set in one step,
a consumer that dies (killed with -9, or cut off by a broker restart) has its
unacknowledged messages returned to the queue at once, and retries wait in
the broker. So on RabbitMQ beat does not sweep the ledger (``sweeps_ledger``):
its republishing would only add copies of messages waiting in a backlog. The
ledger's entries, with the duplicate check, are kept on both brokers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from celery import Task
from kombu import Exchange, Queue

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
# Socket reads and writes of a broker connection, on both brokers: a broker that
# stalls (a paused process, a blocked connection) cannot hold an enqueue longer.
SOCKET_TIMEOUT_S = 5.0


def is_amqp(url: str) -> bool:
    """Whether ``url`` (the first of a ``;``-separated failover list) names RabbitMQ."""
    return urlsplit(url.split(";", 1)[0].strip()).scheme in AMQP_SCHEMES


def sweeps_ledger(url: str) -> bool:
    """Whether beat sweeps the delivery ledger: on Redis yes, on RabbitMQ no (see above)."""
    return not is_amqp(url)


def broker_config(url: str, queues: Iterable[str], *, visibility_timeout_s: int,
                  sentinel_master: str | None = None) -> dict[str, Any]:
    """The Celery settings that depend on the broker: queues, exchanges, transport options.

    A ``sentinel://`` URL (kombu's Sentinel transport: one URL per sentinel, joined by
    ``;``) is the Redis broker whose master the sentinels know as ``sentinel_master``."""
    names = tuple(queues)
    if not is_amqp(url):
        sentinel = urlsplit(url.split(";", 1)[0].strip()).scheme == "sentinel"
        return {
            "task_queues": tuple(Queue(name, Exchange(name), routing_key=name)
                                 for name in names),
            "broker_transport_options": {
                "visibility_timeout": visibility_timeout_s,
                "socket_timeout": SOCKET_TIMEOUT_S,
                "socket_connect_timeout": 1.0,
                "health_check_interval": 25,
                **({"master_name": sentinel_master} if sentinel else {}),
            },
        }
    return {
        "task_queues": tuple(
            Queue(name, Exchange(name, type="topic", durable=True), routing_key=name,
                  durable=True, queue_arguments={"x-queue-type": "quorum"})
            for name in names),
        "task_default_exchange_type": "topic",
        "task_default_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
        "broker_transport_options": {
            "confirm_publish": True,
            "read_timeout": SOCKET_TIMEOUT_S,
            "write_timeout": SOCKET_TIMEOUT_S,
        },
    }


def whole_seconds(countdown: float | None) -> float | None:
    """A countdown native delayed delivery can carry: positive ones rounded up to seconds."""
    if countdown is None or countdown <= 0:
        return countdown
    return float(math.ceil(countdown))


class DelayedDeliveryTask(Task):  # type: ignore[misc]
    """The app's task class: on RabbitMQ, countdowns are whole seconds.

    Celery routes a countdown through the ``celery_delayed_*`` exchanges by
    ``int(countdown)`` and refuses one under a second, which would turn a
    short retry into a failed publish; rounding up keeps the wait at least as
    long as asked. On Redis countdowns are left as they are.
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None,
                    producer: Any = None, link: Any = None, link_error: Any = None,
                    shadow: str | None = None, **options: Any) -> Any:
        if options.get("countdown") is not None and is_amqp(str(self.app.conf.broker_url)):
            options["countdown"] = whole_seconds(options["countdown"])
        return super().apply_async(args, kwargs, task_id, producer, link, link_error,
                                   shadow, **options)
