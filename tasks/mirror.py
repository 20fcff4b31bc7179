"""``memory.mirror_message``: one message to Zep, exactly once (SPEC §6).

Late acknowledgement and requeue on worker loss come from the app's settings;
the retry count that matters (``failures``) travels in the task's kwargs, so a
wait for the circuit breaker to half-open never uses up an attempt. Nothing
this task meets may lose the message: a Redis outage or an unexpected error
becomes a retry, and a dead letter that cannot be stored is retried too.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded

from memory_worker import dlq, tracing
from memory_worker.celery_app import MIRROR_TASK, app
from memory_worker.errors import StateUnavailable
from memory_worker.logs import log_event
from memory_worker.messages import Payload
from memory_worker.runtime import Runtime, default_runtime
from memory_worker.writer import DeadLetter, Done, Retry, Verdict, backoff

log = logging.getLogger("memory_worker.tasks.mirror")


@app.task(bind=True, name=MIRROR_TASK, acks_late=True,  # type: ignore[untyped-decorator]
          reject_on_worker_lost=True, max_retries=None, ignore_result=True)
def mirror_message(self: Any, payload: dict[str, Any], failures: int = 0) -> dict[str, Any]:
    runtime = default_runtime()
    retries = int(self.request.retries or 0)
    with tracing.span("memory.mirror_message", failures=failures, retries=retries) as current:
        verdict = _attempt(runtime, payload, failures, retries)
        _record(current, verdict)
    client_msg_id = str(payload.get("client_msg_id", "")) if isinstance(payload, dict) else ""
    if isinstance(verdict, DeadLetter):
        try:
            _dead_letter(runtime, payload, failures, verdict)
            return {"status": "dead_lettered", "reason": verdict.reason}
        except (redis.RedisError, StateUnavailable):
            verdict = Retry(backoff(failures), "redis_unavailable", counts=False)
    if isinstance(verdict, Done):
        return {"status": verdict.status}
    next_failures = failures + (1 if verdict.counts else 0)
    _postpone(runtime, client_msg_id, verdict.countdown)
    log_event(log, "zep_write_retry", logging.WARNING, client_msg_id=client_msg_id,
              reason=verdict.reason, countdown=round(verdict.countdown, 3),
              failures=next_failures)
    try:
        raise self.retry(kwargs={"payload": payload, "failures": next_failures},
                         countdown=verdict.countdown, max_retries=None)
    except Reject as exc:
        # Celery rejects *without* requeue when it cannot publish the retry (the
        # broker went away mid-task), which would drop the message. Requeue it
        # instead; should the broker not take even that, the message stays
        # unacknowledged and comes back after the visibility timeout.
        log_event(log, "zep_write_retry_unpublished", logging.WARNING,
                  client_msg_id=client_msg_id, error=type(exc.reason).__name__)
        raise Reject(exc.reason, requeue=True) from None


def _record(current: Any, verdict: Verdict) -> None:
    """The attempt's outcome on its span: ``stored``, ``already_done``, ``retry`` or
    ``dead_letter``, with the reason and status code of a failure."""
    if isinstance(verdict, Done):
        tracing.record(current, outcome=verdict.status)
    else:
        tracing.record(current, outcome="retry" if isinstance(verdict, Retry) else "dead_letter",
                       reason=verdict.reason, status_code=verdict.status_code)


def _postpone(runtime: Runtime, client_msg_id: str, countdown: float) -> None:
    """Tell the delivery ledger when to expect the next attempt (best effort: a missed
    update at worst lets the sweep publish a harmless second copy)."""
    with contextlib.suppress(redis.RedisError):
        runtime.ledger().postpone(client_msg_id, runtime.clock(), countdown)


def _attempt(runtime: Runtime, payload: Any, failures: int, retries: int) -> Verdict:
    try:
        message = Payload.from_json(payload)
    except (TypeError, ValueError) as exc:
        return DeadLetter(f"invalid_payload: {exc}"[:200], None)
    try:
        return runtime.writer().deliver(message, failures, retries)
    except SoftTimeLimitExceeded:
        return Retry(backoff(failures), "timeout", counts=True)
    except (redis.RedisError, StateUnavailable):
        return Retry(backoff(failures), "redis_unavailable", counts=False)
    except Exception as exc:  # a bug must not lose the message: retry, then dead-letter
        log_event(log, "zep_write_unexpected_error", logging.ERROR, error=type(exc).__name__,
                  client_msg_id=message.client_msg_id)
        if failures + 1 > runtime.settings.write_max_retries:
            return DeadLetter(f"unexpected_error: {type(exc).__name__}", None)
        return Retry(backoff(failures), "unexpected_error", counts=True)


def _dead_letter(runtime: Runtime, payload: Any, failures: int, verdict: DeadLetter) -> None:
    data = payload if isinstance(payload, dict) else {"raw": repr(payload)[:1000]}
    entry = dlq.DeadLetter(
        client_msg_id=str(data.get("client_msg_id", "")), thread_id=str(data.get("thread_id", "")),
        payload=dict(data), reason=verdict.reason, status_code=verdict.status_code,
        attempts=failures + 1, failed_at=runtime.clock(),
    )
    dlq.push(runtime.ops_conn, runtime.keys, entry)
    with contextlib.suppress(redis.RedisError):  # the DLQ holds it now; a missed update
        runtime.ledger().settle(entry.client_msg_id,  # at worst dead-letters a second copy
                                thread_id=entry.thread_id or None)
    log_event(log, "zep_write_dead_lettered", logging.ERROR, client_msg_id=entry.client_msg_id,
              reason=verdict.reason, status_code=verdict.status_code, attempts=failures + 1)
