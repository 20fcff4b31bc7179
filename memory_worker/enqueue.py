"""``enqueue_message``: validate, redact, publish once — or keep it on disk (SPEC §6).

Order matters: validation first (nothing is published for bad input), then
the mode gate, then redaction (no email or phone number reaches the broker),
then the duplicate check (``SET NX`` on ``mem:write:enqueued:{client_msg_id}``,
together with the delivery-ledger entry), then the publish. When the broker
cannot be reached the message is appended to the local outbox (fsync'd) and a
background thread of this process drains it as soon as the broker answers;
``memory-worker spool drain`` does the same by hand. A broker that just failed
is not tried again for a few seconds, so an outage costs each enqueue a disk
append, not a connection timeout.

The duplicate check and the ledger entry are never skipped. The enqueue path
has a Redis client of its own (``ENQUEUE_REDIS_TIMEOUT_S``, one retry: a pause
of Redis is waited out, a web handler is still never held for long). When
Redis does not answer, the message goes to the outbox marked ``unchecked``
and ``spooled=True`` says so; the drain makes the check and the entry before
it publishes such a record, drops it when it proves a duplicate, and waits
(keeping the order) while Redis is still away.

The drainer thread hands over without a gap: ``_spooling`` and ``_drainer``
change only under ``_drainer_lock``, and the drainer ends only after seeing,
under that lock, that nothing was spooled since its last drain; an enqueue
that spools afterwards finds no drainer and starts one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from memory_worker import metrics
from memory_worker.clock import Clock
from memory_worker.config import Settings
from memory_worker.errors import OutboxUnavailable
from memory_worker.keys import Keys
from memory_worker.ledger import Ledger
from memory_worker.logs import log_event
from memory_worker.messages import (
    Payload,
    check_flat_metadata,
    check_metadata,
    message_uuid,
    validate,
)
from memory_worker.modes import base_mode
from memory_worker.redaction import RedactionCounts, Redactor, phone_plan
from memory_worker.redis_clients import StateRedis, state_redis
from memory_worker.spool import DrainReport, Outbox, Record

log = logging.getLogger("memory_worker.enqueue")

ENQUEUED_MARKER_TTL_S = 24 * 3600
BROKER_BACKOFF_S = 5.0
# Long enough to wait out a pause of Redis (a fork for a snapshot, a failover), short
# enough that a web handler is not held: at most two tries of this, then the outbox.
ENQUEUE_REDIS_TIMEOUT_S = 1.0
REDIS_BACKOFF_S = 2.0  # after Redis failed, enqueues go straight to the outbox this long
UNCHECKED = "unchecked"  # an outbox record whose duplicate check and ledger entry are owed
DRAIN_INTERVALS_S = (1.0, 2.0, 5.0, 10.0, 30.0)

Send = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class EnqueueResult:
    """What ``enqueue_message`` did with one message.

    ``task_id``: the Celery task id of the message, derived from ``client_msg_id`` (the
    same for every enqueue of it); ``None`` when skipped.
    ``duplicate``: this ``client_msg_id`` was enqueued before; nothing was published.
    ``skipped``: the effective mode has no writes (``FLAG_ZEP_WRITE`` off); nothing was
    published.
    ``spooled``: the broker (or Redis, for the duplicate check) did not answer; the
    message is durably in the outbox of ``MEMORY_SPOOL_DIR`` and is published by a
    background drain as soon as they answer. Still delivered exactly once.
    ``redactions``: replacements made before publishing, per field type
    (``email``, ``phone``, ``address``), content and metadata together.
    """

    task_id: str | None
    duplicate: bool = False
    skipped: bool = False
    spooled: bool = False
    redactions: dict[str, int] = field(default_factory=dict)


def enqueue_redis(settings: Settings) -> StateRedis:
    """The enqueue path's Redis client: bounded timeouts, one retry after a short pause."""
    return state_redis(
        settings, decode_responses=True, socket_timeout=ENQUEUE_REDIS_TIMEOUT_S,
        socket_connect_timeout=ENQUEUE_REDIS_TIMEOUT_S / 2,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
        health_check_interval=30,
    )


class Publisher:
    """The write side of one process: its redactor, its broker and its outbox."""

    def __init__(self, settings: Settings, conn: StateRedis, send: Send, *,
                 clock: Clock, outbox: Outbox | None = None) -> None:
        self._settings = settings
        self._conn = conn
        self._send = send
        self._clock = clock
        self._keys = Keys.of(settings)
        self._ledger = Ledger(conn, self._keys, settings.redeliver_after_seconds)
        self._outbox = outbox or Outbox(settings.spool_dir)
        self._redact = Redactor(redact_email=settings.redact_email,
                                redact_phone=settings.redact_phone,
                                redact_address=settings.redact_address)
        if settings.redact_phone:  # off the caller's path: a hostile first message pays nothing
            threading.Thread(target=phone_plan.warm, name="memory-redaction-warm",
                             daemon=True).start()
        self._broker_down_until = 0.0
        self._redis_down_until = 0.0
        self._drainer: threading.Thread | None = None
        self._drainer_lock = threading.Lock()
        # While older messages wait in the outbox, new ones queue behind them, in order.
        self._spooling = False
        if self._outbox.pending() > 0:
            self._spooled()

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    def enqueue(self, thread_id: str, role: str, content: str, client_msg_id: str,
                user_id: str | None = None, metadata: dict[str, Any] | None = None
                ) -> EnqueueResult:
        validate(thread_id, role, content, client_msg_id, user_id, metadata,
                 max_content_chars=self._settings.max_content_chars)
        if metadata is not None and self._settings.zep_api_version == "v4":
            check_flat_metadata(metadata)
        task_id = message_uuid(client_msg_id)
        if not base_mode(write=self._settings.flag_zep_write,
                         read=self._settings.flag_zep_read).writes:
            metrics.safe_inc(metrics.write_skipped, reason="mode")
            return EnqueueResult(task_id=None, skipped=True)

        redacted = self._redact(content)
        counts = _counts(redacted["redactions"])
        clean_metadata = None
        if metadata is not None:
            clean_metadata = self._redact_tree(metadata, counts)
            # Placeholders can be longer than what they replace: check what is published,
            # so the worker never refuses a message this call accepted.
            check_metadata(clean_metadata, after=" after redaction")
        for field_type, replaced in counts.items():  # counted where redacted (SPEC §9)
            if replaced:
                metrics.safe_inc(metrics.redactions, replaced, field_type=field_type)
        payload = Payload(thread_id=thread_id, role=role, content=redacted["text"],
                          client_msg_id=client_msg_id, user_id=user_id,
                          metadata=clean_metadata, enqueued_at=self._clock())

        record: Record = {"task_id": task_id, "payload": payload.to_json()}
        first = self._first_enqueue(client_msg_id, record)
        if first is False:
            metrics.safe_inc(metrics.write_skipped, reason="duplicate")
            return EnqueueResult(task_id=task_id, duplicate=True, redactions=counts)
        if first is None:  # Redis did not answer: the check is owed, the outbox keeps it
            self._spool({**record, UNCHECKED: True})
            return EnqueueResult(task_id=task_id, spooled=True, redactions=counts)
        if self._publish_or_spool(record):
            return EnqueueResult(task_id=task_id, redactions=counts)
        return EnqueueResult(task_id=task_id, spooled=True, redactions=counts)

    def publish(self, record: Record) -> None:
        """Publish one stored record (outbox, dead-letter replay); raises when it cannot."""
        self._send(str(record["task_id"]), {"payload": record["payload"]})

    def drain(self) -> DrainReport:
        """Publish the outbox; once it is empty, new messages are published directly again."""
        report = self._outbox.drain(self._publish_spooled)
        if report.published:
            self._broker_down_until = 0.0  # it answered
        if not report.busy and report.error is None and report.remaining == 0:
            with self._drainer_lock:
                # Under the lock an append that completed is visible to pending(), and an
                # enqueue that appends later sets the flag again after this.
                self._spooling = self._outbox.pending() > 0
        return report

    def _publish_spooled(self, record: Record) -> None:
        """Publish an outbox record, first making the check an ``unchecked`` one owes.

        A Redis error stops the drain here (the record and those after it wait, in
        order). A record whose marker was set already is dropped when its message
        has left the ledger (done or dead-lettered); while the ledger still holds
        it, it is published: the marker may be this very record's, set by the
        enqueue whose answer Redis never delivered, and a second copy is harmless
        (the worker's done-marker and lease keep the Zep write single).
        """
        if record.get(UNCHECKED):
            record = {k: v for k, v in record.items() if k != UNCHECKED}
            client_msg_id = str(record["payload"]["client_msg_id"])
            entered = self._ledger.first_enqueue(client_msg_id, record, self._clock(),
                                                 ENQUEUED_MARKER_TTL_S)
            if not entered and not self._ledger.pending(client_msg_id):
                metrics.safe_inc(metrics.write_skipped, reason="duplicate")
                log_event(log, "memory_spooled_duplicate_dropped", client_msg_id=client_msg_id)
                return
        self.publish(record)

    def _first_enqueue(self, client_msg_id: str, record: Record) -> bool | None:
        """Set the duplicate marker and enter the message in the delivery ledger, at once.

        True: entered; False: a duplicate; None: Redis did not answer (nor recently).
        """
        if time.monotonic() < self._redis_down_until:
            return None
        try:
            return self._ledger.first_enqueue(client_msg_id, record, self._clock(),
                                              ENQUEUED_MARKER_TTL_S)
        except redis.RedisError as exc:
            self._redis_down_until = time.monotonic() + REDIS_BACKOFF_S
            metrics.safe_inc(metrics.redis_errors, op="enqueue")
            log_event(log, "memory_enqueue_redis_unavailable", logging.WARNING,
                      error=type(exc).__name__, client_msg_id=client_msg_id)
            return None

    def _publish_or_spool(self, record: Record) -> bool:
        """True when published; False when kept in the outbox."""
        if not self._spooling and time.monotonic() >= self._broker_down_until:
            try:
                self.publish(record)
                return True
            except Exception as exc:  # kombu, redis, amqp and socket errors alike
                self._broker_down_until = time.monotonic() + BROKER_BACKOFF_S
                log_event(log, "memory_broker_unreachable", logging.WARNING,
                          error=type(exc).__name__)
        self._spool(record)
        return False

    def _spool(self, record: Record) -> None:
        """Append to the outbox and make sure a drainer will publish it."""
        try:
            self._outbox.append(record)
        except OSError as exc:
            if not record.get(UNCHECKED):
                self._forget(str(record["payload"]["client_msg_id"]),
                             str(record["payload"]["thread_id"]))
            raise OutboxUnavailable(
                f"{'Redis' if record.get(UNCHECKED) else 'broker'} unreachable and the outbox "
                f"at {self._settings.spool_dir} cannot be written: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        log_event(log, "memory_message_spooled", logging.WARNING,
                  client_msg_id=record["payload"]["client_msg_id"])
        self._spooled()

    def _forget(self, client_msg_id: str, thread_id: str) -> None:
        """Undo the marker and ledger entry of a message that was neither published nor kept."""
        try:
            self._conn.delete(self._keys.enqueued(client_msg_id))
            self._ledger.settle(client_msg_id, thread_id=thread_id)
        except redis.RedisError:
            metrics.safe_inc(metrics.redis_errors, op="enqueue")

    def _spooled(self) -> None:
        """Note that the outbox holds messages and make sure a drainer runs, in one step."""
        with self._drainer_lock:
            self._spooling = True
            if self._drainer is None:
                self._drainer = threading.Thread(target=self._drain_until_empty,
                                                 name="memory-outbox-drain", daemon=True)
                self._drainer.start()

    def _drainer_may_stop(self) -> bool:
        """The hand-over: stop only if nothing was spooled since the last drain."""
        with self._drainer_lock:
            if self._spooling:
                return False
            self._drainer = None
            return True

    def _drain_until_empty(self) -> None:
        failed = 0  # drains in a row that failed or published nothing
        while True:
            # Jittered: the web processes of one host share the outbox and lost the
            # broker at the same moment; in step, they would meet at its lock every time.
            interval = DRAIN_INTERVALS_S[min(failed, len(DRAIN_INTERVALS_S) - 1)]
            time.sleep(interval * random.uniform(0.8, 1.2))
            try:
                report = self.drain()
                # What arrived during a drain that got through is drained at once: each
                # round is shorter than the last, so steady traffic cannot keep the
                # outbox from ever being found empty (and new messages spooling).
                while self._spooling and report.published and report.error is None:
                    report = self.drain()
            except Exception as exc:
                log_event(log, "memory_spool_drain_failed", logging.WARNING,
                          error=type(exc).__name__)
                failed += 1
                continue
            if self._drainer_may_stop():
                return
            # Another process draining the shared outbox publishes this one's messages
            # too: that is progress, so look again soon rather than back off.
            failed = 0 if report.published or report.busy else failed + 1

    def _redact_tree(self, value: Any, counts: dict[str, int]) -> Any:
        """Metadata reaches the broker too: redact every string in it."""
        if isinstance(value, str):
            result = self._redact(value)
            for kind, n in _counts(result["redactions"]).items():
                counts[kind] = counts.get(kind, 0) + n
            return result["text"]
        if isinstance(value, Mapping):
            return {k: self._redact_tree(v, counts) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redact_tree(v, counts) for v in value]
        return value


def _counts(found: RedactionCounts) -> dict[str, int]:
    return {"email": found["email"], "phone": found["phone"], "address": found["address"]}
