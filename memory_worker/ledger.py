"""The delivery ledger: every message from enqueue until done, so none vanishes in transit.

Two gaps of a Redis broker that late acknowledgement does not close:

* a worker takes a message with ``BRPOP``, which removes it from the queue,
  and records it as unacknowledged in a second command; a worker killed with
  -9 between the two takes the message with it (kombu's Redis transport has no
  atomic move);
* the messages a worker held (reserved, or retries waiting for their ETA) when
  it was killed with -9, or when it lost a broker that restarted, stay
  invisible for the broker's visibility timeout, an hour by default.

So the ledger keeps, in the state Redis, each message that is on its way and
a deadline by which a worker must have attempted it again or finished it:

``{prefix}write:pending``
    sorted set: ``client_msg_id`` → deadline (epoch seconds). Kept without a
    TTL, like the DLQ: its members leave when their message is done.
``{prefix}write:pending:{client_msg_id}``
    hash: ``record``, what to publish again (``{"task_id", "payload"}``, the
    payload already redacted), and ``republished``, how often it was; expires
    after ``RECORD_TTL_S``.

Enqueue records a message with its duplicate marker, in one script. Each
attempt that ends in a retry moves the deadline past its countdown; done or
dead-lettered removes it. The sweep (``memory.sweep_pending``, run by beat)
publishes again each message past its deadline that is neither done nor being
written, and moves its deadline on: a second copy is harmless (the
done-marker and the derived uuid store it once), a lost one is not.

Every deadline leaves ``MEMORY_REDELIVER_AFTER_SECONDS`` of slack: longer than
the queue normally takes to reach a message. A message that waits longer, in a
backlog, is published again all the same (the sweep cannot tell it from a lost
one); so each republish doubles the wait before the next (up to 64 times the
slack), and a backlog of an hour adds a handful of copies of a message, not one
per sweep.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from memory_worker import metrics, write_slots
from memory_worker.connections import as_text
from memory_worker.keys import Keys
from memory_worker.logs import log_event
from memory_worker.redis_clients import StateRedis

log = logging.getLogger("memory_worker.ledger")

RECORD_TTL_S = 7 * 24 * 3600
SWEEP_BATCH = 500

MAX_BACKOFF_DOUBLINGS = 6

# KEYS: pending set, record, duplicate marker, thread index. ARGV: record JSON, record
# TTL, deadline, client_msg_id, marker TTL ('' for no marker: the message is entered
# whatever the marker), enqueue time (the thread index's score). With a marker, the
# message is entered only when the marker was not set yet. 1 when it was entered.
_ENTER = """
if ARGV[5] ~= '' and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[5]) then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'record', ARGV[1], 'republished', 0)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[2])
return 1
"""

# KEYS: pending set, record, done-marker, lease. ARGV: client_msg_id, now, slack,
# max doublings. {0}: not due (another sweep took it); {1}: done or its record is
# gone, so it left the ledger; {2}: due but a worker is writing it; {3, record}:
# due and this caller's to publish again. A due entry's next deadline is
# now + slack × 2^(times republished, capped).
_CLAIM = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return {0} end
local record = redis.call('HGET', KEYS[2], 'record')
if not record or redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return {1}
end
local n = redis.call('HINCRBY', KEYS[2], 'republished', 1)
local gap = tonumber(ARGV[3]) * 2 ^ math.min(n, tonumber(ARGV[4]))
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + gap, ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 1 then return {2} end
return {3, record}
"""


# ``settle(keys, cmid, done_ttl)`` for a script that settles a message inside its own
# work (the writer's, after a stored write); keys: pending set, record, attempted
# marker, done-marker. Sets the done-marker and takes the message out of the ledger.
SETTLE_LUA = """
local function settle(keys, cmid, done_ttl)
  redis.call('SET', keys[4], '1', 'EX', done_ttl)
  redis.call('ZREM', keys[1], cmid)
  redis.call('DEL', keys[2], keys[3])
end
"""


class Ledger:
    """The deployment's pending writes, seen from one process."""

    def __init__(self, conn: StateRedis, keys: Keys, redeliver_after_s: float) -> None:
        self._conn = conn
        self._keys = keys
        self._slack = redeliver_after_s
        self._enter: Callable[..., Any]
        self._claim: Callable[..., Any]
        if keys.cluster:  # a message's keys and the index are in different slots
            self._enter, self._claim = write_slots.Enter(conn), write_slots.Claim(conn)
        else:
            self._enter, self._claim = conn.register_script(_ENTER), conn.register_script(_CLAIM)

    def first_enqueue(self, client_msg_id: str, record: Mapping[str, Any], now: float,
                      marker_ttl_s: int) -> bool:
        """Set the duplicate marker; if it was not set yet, record the message too."""
        return self._run_enter(client_msg_id, record, now, marker_ttl_s)

    def record(self, client_msg_id: str, record: Mapping[str, Any], now: float) -> None:
        """(Re)record a message published outside enqueue (a dead letter replayed)."""
        self._run_enter(client_msg_id, record, now, None)

    def _run_enter(self, client_msg_id: str, record: Mapping[str, Any], now: float,
                   marker_ttl_s: int | None) -> bool:
        keys = [self._keys.write_pending, self._keys.write_pending_record(client_msg_id)]
        args: list[str | int] = [json.dumps(record), RECORD_TTL_S, repr(now + self._slack),
                                 client_msg_id]
        if self._keys.cluster:  # no thread index: a cluster sends each message alone
            if marker_ttl_s is not None:
                keys.append(self._keys.enqueued(client_msg_id))
                args.append(marker_ttl_s)
            return bool(self._enter(keys=keys, args=args))
        thread_id = str(record["payload"]["thread_id"])
        keys += [self._keys.enqueued(client_msg_id), self._keys.write_thread(thread_id)]
        args += ["" if marker_ttl_s is None else marker_ttl_s, repr(now)]
        return bool(self._enter(keys=keys, args=args))

    def pending(self, client_msg_id: str) -> bool:
        """Whether the message is on its way: entered, neither done nor dead-lettered."""
        return bool(self._conn.exists(self._keys.write_pending_record(client_msg_id)))

    def postpone(self, client_msg_id: str, now: float, countdown: float) -> None:
        """A retry is scheduled: expect the next attempt after its countdown."""
        self._conn.zadd(self._keys.write_pending,
                        {client_msg_id: now + countdown + self._slack}, xx=True)

    def settle_keys(self, client_msg_id: str) -> list[str]:
        """The keys ``SETTLE_LUA``'s ``settle`` takes, in its order."""
        return [self._keys.write_pending, self._keys.write_pending_record(client_msg_id),
                self._keys.write_attempted(client_msg_id), self._keys.write_done(client_msg_id)]

    def settle(self, client_msg_id: str, *, done_marker_ttl_s: int | None = None,
               thread_id: str | None = None) -> None:
        """Done (with its done-marker, in the same transaction) or dead-lettered. Without
        ``thread_id`` the thread index keeps the entry until a worker finds it settled."""
        if self._keys.cluster:
            self._settle_by_slot(client_msg_id, done_marker_ttl_s)
            return
        pipe = self._conn.pipeline(transaction=True)
        if done_marker_ttl_s is not None:
            pipe.set(self._keys.write_done(client_msg_id), "1", ex=done_marker_ttl_s)
        pipe.zrem(self._keys.write_pending, client_msg_id)
        if thread_id is not None:
            pipe.zrem(self._keys.write_thread(thread_id), client_msg_id)
        pipe.delete(self._keys.write_pending_record(client_msg_id),
                    self._keys.write_attempted(client_msg_id))
        pipe.execute()

    def _settle_by_slot(self, client_msg_id: str, done_marker_ttl_s: int | None) -> None:
        """``settle`` on a Redis Cluster: the message's keys in one transaction of its
        slot, then the index entry. A process that dies between the two leaves an entry
        whose record is gone, which the sweep takes out without publishing."""
        pipe = self._conn.pipeline(transaction=True)
        if done_marker_ttl_s is not None:
            pipe.set(self._keys.write_done(client_msg_id), "1", ex=done_marker_ttl_s)
        pipe.delete(self._keys.write_pending_record(client_msg_id),
                    self._keys.write_attempted(client_msg_id))
        pipe.execute()
        self._conn.zrem(self._keys.write_pending, client_msg_id)

    def sweep(self, publish: Callable[[dict[str, Any]], None], now: float,
              limit: int = SWEEP_BATCH) -> SweepReport:
        """Publish again what is overdue; drop what is done or whose record expired."""
        report = SweepReport()
        due = self._conn.zrangebyscore(self._keys.write_pending, "-inf", repr(now),
                                       start=0, num=limit, withscores=True)
        for entry in due:
            raw, score = cast(tuple[object, float], entry)
            client_msg_id, deadline = as_text(raw) or "", float(score)
            reply = self._claim(
                keys=[self._keys.write_pending, self._keys.write_pending_record(client_msg_id),
                      self._keys.write_done(client_msg_id), self._keys.write_lease(client_msg_id)],
                args=[client_msg_id, repr(now), repr(self._slack), MAX_BACKOFF_DOUBLINGS])
            verdict = int(reply[0])
            if verdict == 0:  # another sweep took it
                continue
            if verdict == 1:  # done, or its record expired: the script took it out
                report.settled += 1
                continue
            if verdict == 2:  # a worker is writing it right now
                report.in_flight += 1
                continue
            record = _record(reply[1])
            if record is None:  # unreadable: nothing to publish, take it out
                self.settle(client_msg_id)
                report.settled += 1
                continue
            try:
                publish(record)
            except Exception as exc:  # the broker: try again at the next deadline
                log_event(log, "zep_write_republish_failed", logging.WARNING,
                          client_msg_id=client_msg_id, error=type(exc).__name__)
                report.failed += 1
                continue
            metrics.safe_inc(metrics.write_republished)
            log_event(log, "zep_write_republished", logging.WARNING,
                      client_msg_id=client_msg_id, overdue_seconds=round(now - deadline, 3))
            report.republished += 1
        return report


@dataclass
class SweepReport:
    republished: int = 0
    settled: int = 0
    in_flight: int = 0
    failed: int = 0


def _record(stored: object) -> dict[str, Any] | None:
    text = as_text(stored)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("payload"), dict):
        return None
    return record
