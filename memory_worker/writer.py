"""Delivering one message to Zep, exactly once: the decision, free of Celery (SPEC §6).

``Writer.deliver`` makes one attempt and returns a verdict — ``Done``,
``Retry`` (with its countdown) or ``DeadLetter`` — that the task carries out.
Exactly once rests on three things together:

- the Zep uuids are derived from ``client_msg_id``, so Zep refuses a second
  copy (``already_stored`` counts as success);
- a done-marker ``mem:write:done:{client_msg_id}`` set after success ends any
  later redelivery before it calls Zep;
- an in-flight lease ``mem:write:lease:{client_msg_id}`` (``SET NX PX``) keeps
  two workers from writing the same message at the same moment;
- after an attempt whose outcome is unknown (a timeout or a dropped connection
  after the request was sent, a 5xx that may have stored, a worker killed
  mid-call), the next attempt asks Zep which chunks of the message already
  landed (``ZepApi.landed``: its ``client_msg_id`` in the metadata of the
  thread's latest messages) and sends only the others. v4 Zep refuses no
  repeated message, so there this check carries the promise; on v2 it also
  mends a batch that Zep reports as "already exists" while only some of its
  chunks were stored. ``mem:write:attempted:{client_msg_id}`` marks that an
  attempt began.

One delivery makes two round trips to Redis: one script before the Zep call
(the done check, the lease, the circuit breaker's admission and the attempted
marker, set only when the call is admitted) and, after a stored write, one
after it (the breaker's success, the done-marker, the ledger settled, the
lease released). A failed call records the failure with the breaker and
releases the lease, as two more. On a Redis Cluster each of the two scripts
runs as steps of one slot (``write_slots``: three before the call, two after
it), in an order that keeps the guarantees above.

Retries: 429 waits ``Retry-After`` plus jitter and is no breaker failure;
timeouts, 5xx and connection errors are breaker failures and back off
exponentially with full jitter (base 2 s, cap 300 s); 401/403 retry on the same
schedule; an open breaker reschedules to its half-open time. Only attempts
that may be the message's own fault (timeouts, 5xx, connection errors) use up
one of ``MEMORY_WRITE_MAX_RETRIES``: a rate limit, a rejected key, an open
circuit, the failure that opened it or a failed trial met the state of Zep,
not the message. Whatever it waits for, a message still not stored
``MEMORY_WRITE_MAX_AGE_SECONDS`` after its enqueue is dead-lettered with reason
``expired``; any other 4xx is dead-lettered at once, as is the last counted
failure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memory_worker import metrics, write_slots
from memory_worker.breaker import ALLOW_LUA, LUA_HELPERS, SUCCESS_LUA, Admission, Breaker
from memory_worker.clock import Clock
from memory_worker.config import Settings
from memory_worker.connections import as_text, delete_if_value
from memory_worker.keys import Keys
from memory_worker.ledger import SETTLE_LUA, Ledger
from memory_worker.logs import log_event
from memory_worker.messages import BATCH_SIZE, Payload, batches, split, zep_messages
from memory_worker.redis_clients import StateRedis
from memory_worker.zep import (
    Failure,
    OutgoingMessage,
    Reason,
    WriteResult,
    WriteStatus,
    Written,
    ZepApi,
)

log = logging.getLogger("memory_worker.writer")

BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0
RATE_LIMIT_JITTER_S = 1.0
DONE_MARKER_TTL_S = 30 * 24 * 3600  # longer than any redelivery can arrive
EXPIRED = "expired"
_BREAKER_FAILURES = {Reason.TIMEOUT, Reason.SERVER_ERROR, Reason.CONNECTION_ERROR}
_RETRIED = _BREAKER_FAILURES | {Reason.AUTH, Reason.RATE_LIMITED}


@dataclass(frozen=True)
class Done:
    status: str  # "stored" | "already_done"


@dataclass(frozen=True)
class Retry:
    countdown: float
    reason: str
    counts: bool  # uses up one of MEMORY_WRITE_MAX_RETRIES
    status_code: int | None = None


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    status_code: int | None


Verdict = Done | Retry | DeadLetter

# One delivery is two round trips to Redis: ``_BEGIN`` before the Zep call,
# ``_FINISH`` after a stored write (a failed one records it with the breaker and
# releases the lease, as before).
#
# _BEGIN. KEYS: done-marker, lease, attempted marker, circuit[, thread index]. ARGV:
# lease token, lease ms, marker ttl s, expired (1|0), then ``allow``'s arguments (now,
# trial lease), then the settle time in seconds[, how many of the thread's queued
# messages to list]. {0}: done already; {6}: done already, stored with another
# message's add (the done-marker reads 'b' until this, the message's own delivery,
# comes: from then on it reads '1' and a later copy is a duplicate); {1, pttl}: another
# worker holds the lease; {3}: expired (lease released); {5, ms}: an earlier attempt
# began less than the settle time ago, wait this long before looking at what it stored
# (lease released); {4, n, verdict, until}: the circuit admits no call now (lease
# released); {2, n, verdict[, until]}: this caller holds the lease and may call Zep,
# the attempted marker holds the start of this attempt. n = 1 when an earlier attempt
# began (its outcome may be unknown). When no earlier attempt began and the circuit is
# closed, {2, 0, 'closed', ...} goes on with the first ids of the thread index, the
# thread's messages on their way in enqueue order (the caller's own among them).
_BEGIN = LUA_HELPERS + ALLOW_LUA + """
local done = redis.call('GET', KEYS[1])
if done then
  if done == 'b' then
    redis.call('SET', KEYS[1], '1', 'KEEPTTL')
    return {6}
  end
  return {0}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('PTTL', KEYS[2])}
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
  return {3}
end
local started = redis.call('GET', KEYS[3])
local before = 0
if started then
  before = 1
  local left = tonumber(started) + tonumber(ARGV[7]) - tonumber(ARGV[5])
  if left > 0 then
    redis.call('DEL', KEYS[2])
    return {5, math.ceil(left * 1000)}
  end
end
local admission = allow(KEYS[4], {ARGV[5], ARGV[6]})
if admission[1] == 'open' or admission[1] == 'busy' then
  redis.call('DEL', KEYS[2])
  return {4, before, admission[1], admission[2]}
end
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[3])
if admission[1] == 'closed' and before == 0 and KEYS[5] and tonumber(ARGV[8]) > 0 then
  return {2, 0, 'closed', unpack(redis.call('ZRANGE', KEYS[5], 0, tonumber(ARGV[8]) - 1))}
end
return {2, before, admission[1], admission[2]}
"""

# _GATHER, the companions of a write: queued messages of the same thread that nobody is
# writing and nobody has tried to write. KEYS: thread index, then four per candidate:
# done-marker, attempted marker, lease, ledger record. ARGV: lease token, lease ms, now,
# marker ttl s, how many to take at most, then the candidates' ids. Each one taken gets
# the caller's lease and its attempted marker, as its own delivery would; an entry
# whose message is done or has left the ledger leaves the index. Returns id, record,
# id, record... of those taken.
_GATHER = """
local taken = {}
for i = 6, #ARGV do
  if #taken >= 2 * tonumber(ARGV[5]) then break end
  local k = 2 + (i - 6) * 4
  local record = redis.call('HGET', KEYS[k + 3], 'record')
  if not record or redis.call('EXISTS', KEYS[k]) == 1 then
    redis.call('ZREM', KEYS[1], ARGV[i])
  elseif redis.call('EXISTS', KEYS[k + 1]) == 0
      and redis.call('SET', KEYS[k + 2], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('SET', KEYS[k + 1], ARGV[3], 'EX', ARGV[4])
    taken[#taken + 1] = ARGV[i]
    taken[#taken + 1] = record
  end
end
return taken
"""

# _RELEASE, companions that were not stored. KEYS: two per companion: lease, attempted
# marker. ARGV: lease token, forget (1|0: nothing of them can have reached Zep, so their
# own delivery need not look before sending). Only while the lease is still the caller's.
_RELEASE = """
for k = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[k]) == ARGV[1] then
    redis.call('DEL', KEYS[k])
    if ARGV[2] == '1' then redis.call('DEL', KEYS[k + 1]) end
  end
end
return 1
"""

# _FINISH, after a stored write. KEYS: circuit, then ``settle``'s keys (pending set,
# record, attempted marker, done-marker), lease[, thread index, then four per companion
# stored in the same add: done-marker, attempted marker, lease, record]. ARGV:
# ``success``'s five arguments, client_msg_id, done-marker ttl s, lease token, then the
# companions' ids. A companion's done-marker reads 'b' (see _BEGIN). Returns
# ``success``'s reply.
_FINISH = LUA_HELPERS + SUCCESS_LUA + SETTLE_LUA + """
local closed = success(KEYS[1], {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]})
settle({KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, ARGV[6], ARGV[7])
if redis.call('GET', KEYS[6]) == ARGV[8] then redis.call('DEL', KEYS[6]) end
if KEYS[7] then
  redis.call('ZREM', KEYS[7], ARGV[6])
  for i = 9, #ARGV do
    local k = 8 + (i - 9) * 4
    redis.call('SET', KEYS[k], 'b', 'EX', ARGV[7])
    redis.call('DEL', KEYS[k + 1], KEYS[k + 3])
    if redis.call('GET', KEYS[k + 2]) == ARGV[8] then redis.call('DEL', KEYS[k + 2]) end
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('ZREM', KEYS[7], ARGV[i])
  end
end
return closed
"""


def backoff(failures: int, rand: Callable[[float, float], float] = random.uniform) -> float:
    """Full jitter: uniform over [0, min(cap, base × 2^failures)]."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * float(2 ** min(failures, 16)))
    return rand(0.0, ceiling)


class Writer:
    def __init__(self, conn: StateRedis, settings: Settings, zep: ZepApi, *,
                 clock: Clock, keys: Keys | None = None, breaker: Breaker | None = None,
                 rand: Callable[[float, float], float] = random.uniform) -> None:
        self._conn = conn
        self._settings = settings
        self._zep = zep
        self._clock = clock
        self._keys = keys or Keys.of(settings)
        self._breaker = breaker or Breaker(conn, self._keys, clock=clock)
        self._ledger = Ledger(conn, self._keys, settings.redeliver_after_seconds)
        self._begin: Callable[..., Any]
        self._finish_script: Callable[..., Any]
        # How many ids of a thread's queue to look at for companions: twice as many as
        # an add takes, so that some held by another worker do not leave it short. A
        # Redis Cluster keeps no thread index (a message's keys are in its own slot).
        self._listed = 0
        if self._keys.cluster:  # a message's keys and the shared ones are in different slots
            self._begin, self._finish_script = write_slots.Begin(conn), write_slots.Finish(conn)
        else:
            self._begin = conn.register_script(_BEGIN)
            self._finish_script = conn.register_script(_FINISH)
            self._gather_script = conn.register_script(_GATHER)
            self._release_script = conn.register_script(_RELEASE)
            if settings.write_batch_max > 1:
                self._listed = 2 * settings.write_batch_max
        self._rand = rand

    def deliver(self, payload: Payload, failures: int = 0, retries: int | None = None
                ) -> Verdict:
        """One attempt; ``failures`` earlier attempts counted against the retry limit,
        ``retries`` earlier attempts in all (the exponent of waits that count nothing)."""
        cmid = payload.client_msg_id
        lease_key = self._keys.write_lease(cmid)
        token = secrets.token_hex(8)
        keys = [self._keys.write_done(cmid), lease_key, self._keys.write_attempted(cmid),
                self._breaker.key]
        args = [token, self._lease_ms(), self._marker_ttl(),
                "1" if self._expired(payload) else "0", *self._breaker.allow_args(),
                self._settle_seconds()]
        if self._listed:
            keys.append(self._keys.write_thread(payload.thread_id))
            args.append(self._listed)
        reply = [as_text(item) or "" for item in self._begin(keys=keys, args=args)]
        code = int(reply[0])
        if code == 0:
            metrics.safe_inc(metrics.write_skipped, reason="already_done")
            return Done("already_done")
        if code == 6:  # stored with another message's add: this is its first delivery
            return Done("batched")
        if code == 1:
            wait = max(1.0, (int(reply[1]) if int(reply[1]) > 0 else 1000) / 1000)
            return Retry(wait + self._rand(0.0, 1.0), "in_flight", counts=False)
        if code == 3:
            return DeadLetter(EXPIRED, None)
        if code == 5:  # too soon to tell what the previous attempt stored
            settling: Verdict = Retry(int(reply[1]) / 1000 + self._rand(0.0, 0.5), "settling",
                                      counts=False)
            return self._within_age(payload, settling)
        listed: list[str] = []
        if reply[2] == "closed":
            admission, listed = self._breaker.admission(reply[2:3]), reply[3:]
        else:
            admission = self._breaker.admission(reply[2:])
        if code == 4:
            metrics.safe_inc(metrics.write_failures, reason="circuit_open")
            wait = max(0.5, (admission.retry_at or self._clock()) - self._clock())
            verdict: Verdict = Retry(wait + self._rand(0.0, 1.0), "circuit_open", counts=False)
            return self._within_age(payload, verdict)
        token_held = True
        try:
            verdict = self._attempt(payload, failures, failures if retries is None else retries,
                                    unsure=reply[1] == "1", admission=admission, token=token,
                                    listed=listed)
            token_held = not isinstance(verdict, Done)  # _FINISH released it
        finally:
            if token_held:
                delete_if_value(self._conn, lease_key, token)
        return self._within_age(payload, verdict)

    def _marker_ttl(self) -> int:
        """How long an attempted marker outlives the message's last possible attempt."""
        return self._settings.write_max_age_seconds + 3600

    def _expired(self, payload: Payload) -> bool:
        return self._age(payload) > self._settings.write_max_age_seconds

    def _age(self, payload: Payload) -> float:
        # A payload without its enqueue time (written before it was kept) is young.
        return self._clock() - payload.enqueued_at if payload.enqueued_at > 0 else 0.0

    def _within_age(self, payload: Payload, verdict: Verdict) -> Verdict:
        """A retry never waits past the message's expiry: the attempt then dead-letters it."""
        if not isinstance(verdict, Retry) or payload.enqueued_at <= 0:
            return verdict
        left = self._settings.write_max_age_seconds - self._age(payload)
        if verdict.countdown <= left:
            return verdict
        return dataclasses.replace(verdict, countdown=max(0.0, left) + 0.5)

    def _settle_seconds(self) -> float:
        """How long after an attempt began the next one waits before asking Zep what it
        stored: a request the client gave up on may still reach Zep's handler after its
        deadline (a loaded server, a queue in front of it). Twice the write budget and a
        second; a request Zep handles later than that can still be stored twice."""
        return 2 * self._settings.zep_timeout_ms / 1000 + 1.0

    def _lease_ms(self) -> int:
        """Long enough for one attempt (a session call and a few batches at the write budget).

        Short enough that an attempt killed mid-call holds the message back only
        seconds. Should a slow attempt outlive it, a second attempt writes the
        same uuids, which Zep refuses: the lease saves calls, it does not carry
        the exactly-once promise.
        """
        return 4 * self._settings.zep_timeout_ms + 2000

    def _attempt(self, payload: Payload, failures: int, retries: int, *, unsure: bool,
                 admission: Admission, token: str, listed: list[str]) -> Verdict:
        companions = self._gather(payload, listed, token) if listed else []
        outcome, stored_some, carried = self._write_with(payload, companions, token,
                                                         unsure=unsure)
        if isinstance(outcome, Written):
            self._finish(payload, admission.trial, token, carried)
            return Done("stored")

        reason = outcome.reason
        if not unsure and not stored_some and _refused(outcome):
            # Zep answered and refused (401, 429, ...): nothing of this message can have
            # landed, so the next attempt need not wait and look before sending.
            self._conn.delete(self._keys.write_attempted(payload.client_msg_id))
        metrics.safe_inc(metrics.write_failures, reason=_metric_reason(reason))
        if reason in _BREAKER_FAILURES:
            opened = self._breaker.record_failure(admission.trial)
            if opened:
                waiting = self._wait_for_circuit(reason.value, outcome.status_code)
                if waiting is not None:
                    return waiting
            elif admission.trial:  # failed, but the circuit waits for more trials: be one soon
                return Retry(self._rand(0.5, 2.0), reason.value, counts=False,
                             status_code=outcome.status_code)
        else:
            self._breaker.record_success(admission.trial)  # Zep answered: it is up
        if reason not in _RETRIED:
            return DeadLetter(reason.value, outcome.status_code)
        if reason is Reason.RATE_LIMITED:
            wait = outcome.retry_after_seconds if outcome.retry_after_seconds is not None else 5.0
            countdown = min(wait, BACKOFF_CAP_S) + self._rand(0.0, RATE_LIMIT_JITTER_S)
            return Retry(countdown, reason.value, counts=False, status_code=outcome.status_code)
        if reason is Reason.AUTH:  # keys get fixed: the same schedule, no attempt spent
            return Retry(backoff(retries, self._rand), reason.value, counts=False,
                         status_code=outcome.status_code)
        if failures + 1 > self._settings.write_max_retries:
            return DeadLetter(reason.value, outcome.status_code)
        return Retry(backoff(failures, self._rand), reason.value, counts=True,
                     status_code=outcome.status_code)

    def _wait_for_circuit(self, reason: str, status_code: int | None) -> Retry | None:
        """The circuit is open: wait for it like every other write, without using an attempt.

        The call that opened the circuit, or the trial that failed, only found
        the outage every write is waiting out; counting it against this message
        would dead-letter whichever message happened to be the trial.
        """
        admission = self._breaker.allow()
        if admission.allowed or admission.retry_at is None:
            return None
        wait = max(0.5, admission.retry_at - self._clock())
        return Retry(wait + self._rand(0.0, 1.0), reason, counts=False, status_code=status_code)

    def _write(self, payload: Payload, *, unsure: bool) -> tuple[WriteResult, bool]:
        """Every chunk once, in order; ``unsure``: an earlier attempt may have stored some.
        Also whether this attempt stored a batch before it failed."""
        messages = zep_messages(payload)
        if unsure:
            missing = self._missing(payload, messages)
            if isinstance(missing, Failure):
                return missing, False
            if not missing:
                log_event(log, "zep_write_found_landed", client_msg_id=payload.client_msg_id)
                return Written(WriteStatus.ALREADY_STORED), False
            messages = missing
        outcome: WriteResult = Failure(Reason.CLIENT_ERROR, message="nothing to write")
        for index, batch in enumerate(batches(messages)):
            outcome = self._add_batch(payload, batch)
            if isinstance(outcome, Failure):
                return outcome, index > 0
        return outcome, True

    def _add_batch(self, payload: Payload, batch: list[OutgoingMessage]) -> WriteResult:
        outcome = self._add_creating(payload, batch)
        if (isinstance(outcome, Written) and outcome.status is WriteStatus.ALREADY_STORED
                and len(batch) > 1):
            # Zep refused the batch for a uuid it has: maybe only some of the batch.
            missing = self._missing(payload, batch)
            if isinstance(missing, Failure):
                return missing
            if missing:
                outcome = self._add(payload, missing)
        return outcome

    def _add_creating(self, payload: Payload, batch: list[OutgoingMessage],
                      messages: int = 1) -> WriteResult:
        """One add, and when the thread is missing its creation and the add again."""
        outcome = self._add(payload, batch, messages)
        if isinstance(outcome, Failure) and outcome.reason is Reason.SESSION_NOT_FOUND:
            created = self._create_session(payload)
            if isinstance(created, Failure):
                return created
            outcome = self._add(payload, batch, messages)
        return outcome

    # Companions: when a worker reaches a message while more of its thread are queued
    # behind it (a backlog after an outage, a burst), it sends up to
    # MEMORY_WRITE_BATCH_MAX of them in its one add (at most BATCH_SIZE Zep messages).
    # Each companion is taken as its own delivery would take it (its lease, its attempted
    # marker), and only when nobody holds or has tried it, so the exactly-once rules of
    # one message hold for each. Stored, each gets a done-marker its own delivery later
    # turns into an ordinary one. Not stored, each is released to its own delivery: at
    # once when Zep refused the add (nothing of it landed), after the settle time and a
    # look at what landed when the outcome is unknown. An add refused for what may be one
    # message's fault (a 4xx other than 401/403/429) is sent again with this message
    # alone, so one bad message never holds the others back.

    def _gather(self, payload: Payload, listed: list[str], token: str) -> list[Payload]:
        """Companions for ``payload``'s add, in the ledger's words, leased to ``token``."""
        candidates = [cmid for cmid in listed if cmid != payload.client_msg_id]
        if not candidates:  # the thread has nothing else queued: the usual case
            return []
        room = min(self._settings.write_batch_max - 1,
                   BATCH_SIZE - len(split(payload.content)))
        if room <= 0:
            return []
        keys = [self._keys.write_thread(payload.thread_id)]
        for cmid in candidates:
            keys += [self._keys.write_done(cmid), self._keys.write_attempted(cmid),
                     self._keys.write_lease(cmid), self._keys.write_pending_record(cmid)]
        reply = [as_text(item) or "" for item in self._gather_script(
            keys=keys, args=[token, self._lease_ms(), self._clock(), self._marker_ttl(),
                             room, *candidates])]
        taken: list[Payload] = []
        left: list[str] = []
        for cmid, record in zip(reply[::2], reply[1::2], strict=True):
            companion = _companion(record, payload.thread_id)
            chunks = 0 if companion is None else len(split(companion.content))
            if (companion is None or companion.client_msg_id != cmid or self._expired(companion)
                    or chunks > room):
                left.append(cmid)  # its own delivery will deal with it
                continue
            room -= chunks
            taken.append(companion)
        self._release(left, token, forget=True)
        return taken

    def _release(self, cmids: list[str], token: str, *, forget: bool) -> None:
        if not cmids:
            return
        keys = [key for cmid in cmids
                for key in (self._keys.write_lease(cmid), self._keys.write_attempted(cmid))]
        self._release_script(keys=keys, args=[token, "1" if forget else "0"])

    def _write_with(self, payload: Payload, companions: list[Payload], token: str, *,
                    unsure: bool) -> tuple[WriteResult, bool, list[Payload]]:
        """``_write``'s answer and the companions stored with ``payload``."""
        if companions:
            group = sorted([payload, *companions], key=lambda p: p.enqueued_at)
            messages = [message for member in group for message in zep_messages(member)]
            others = [companion.client_msg_id for companion in companions]
            try:
                outcome = self._add_creating(payload, messages, len(group))
            except BaseException:
                self._release(others, token, forget=False)  # the outcome is unknown
                raise
            if isinstance(outcome, Written) and outcome.status is not WriteStatus.ALREADY_STORED:
                log_event(log, "zep_write_batched", client_msg_id=payload.client_msg_id,
                          messages=len(group))
                return outcome, True, companions
            refused = isinstance(outcome, Failure) and _refused(outcome)
            self._release(others, token, forget=refused)
            if isinstance(outcome, Written):  # v2 has a uuid of the add: look, then send
                unsure = True
            elif outcome.reason in _RETRIED or not refused:
                return outcome, False, []
        outcome, stored_some = self._write(payload, unsure=unsure)
        return outcome, stored_some, []

    def _missing(self, payload: Payload, messages: list[OutgoingMessage]
                 ) -> list[OutgoingMessage] | Failure:
        """The messages among ``messages`` whose chunk Zep does not have yet."""
        landed = self._zep.landed(payload.thread_id, payload.client_msg_id)
        if isinstance(landed, Failure):
            return landed
        return [m for m in messages if _chunk(m) not in landed]

    def _add(self, payload: Payload, batch: list[OutgoingMessage], messages: int = 1
             ) -> WriteResult:
        """One add to Zep; ``messages``: how many enqueued messages it carries."""
        metrics.safe_inc(metrics.write_requests)
        started = time.perf_counter()
        outcome = self._zep.add_messages(payload.thread_id, batch)
        metrics.safe_observe(metrics.write_latency, time.perf_counter() - started)
        if isinstance(outcome, Written):
            metrics.safe_inc(metrics.write_success, messages)
        return outcome

    def _create_session(self, payload: Payload) -> WriteResult:
        created = self._zep.add_session(payload.thread_id, payload.user_id)
        if isinstance(created, Failure) and created.reason is Reason.USER_NOT_FOUND:
            if payload.user_id is None:
                return created
            user = self._zep.add_user(payload.user_id)
            if isinstance(user, Failure):
                return user
            created = self._zep.add_session(payload.thread_id, payload.user_id)
        if isinstance(created, Written):
            log_event(log, "zep_session_created", thread_id=payload.thread_id)
        return created

    def _finish(self, payload: Payload, trial: bool, token: str,
                companions: list[Payload]) -> None:
        """In one script: the breaker's success, the done-markers, the ledger settled, the
        leases released. The thread's cached context is left to its TTL on purpose: every
        chat turn writes, so dropping it here would make nearly every read a miss; the app
        holds the last turns itself, and ``memory-worker invalidate`` is there when it
        matters."""
        cmid = payload.client_msg_id
        args = self._breaker.success_args(trial)
        keys = [self._breaker.key, *self._ledger.settle_keys(cmid), self._keys.write_lease(cmid)]
        more: list[str] = []
        if not self._keys.cluster:
            keys.append(self._keys.write_thread(payload.thread_id))
            for companion in companions:
                other = companion.client_msg_id
                keys += [self._keys.write_done(other), self._keys.write_attempted(other),
                         self._keys.write_lease(other), self._keys.write_pending_record(other)]
                more.append(other)
        reply = self._finish_script(keys=keys, args=[*args, cmid, DONE_MARKER_TTL_S, token, *more])
        self._breaker.succeeded([as_text(item) or "" for item in reply], args)


def _companion(record: str, thread_id: str) -> Payload | None:
    """The payload of a ledger record, when it is a readable message of ``thread_id``."""
    try:
        data = json.loads(record)
        payload = Payload.from_json(data["payload"])
    except (ValueError, TypeError, KeyError):
        return None
    return payload if payload.thread_id == thread_id else None


def _refused(failure: Failure) -> bool:
    """Zep answered with a 4xx: the request was refused, nothing of it stored."""
    return failure.status_code is not None and 400 <= failure.status_code < 500


def _chunk(message: OutgoingMessage) -> int:
    chunk = (message.get("metadata") or {}).get("chunk", 1)
    return int(chunk) if isinstance(chunk, int) else 1


def _metric_reason(reason: Reason) -> str:
    if reason in (Reason.SESSION_NOT_FOUND, Reason.USER_NOT_FOUND, Reason.NOT_FOUND):
        return "client_error"
    return reason.value
