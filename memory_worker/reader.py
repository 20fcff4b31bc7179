"""The guarded read: what ``fetch_thread_context`` decides, free of I/O (SPEC §5).

``ReadPolicy.flow`` is a generator: it yields the I/O it needs (``Snapshot``,
``ZepRead``, ``AfterRead``, ``RunGuard``, ``Pause``) and receives the results,
so the synchronous and the asynchronous read share one copy of the rules and
differ only in how they perform each step (``runtime.py``). A Redis step that
failed comes back as ``None``: the flow then fails open onto the process's
``LocalGuard`` and reads without a cache.

A cache hit or a blocked read costs one Redis round trip (one ``MGET`` of the
forced record, the cache entry and the 429 pause); a cache miss adds the Zep
call and one script that caches, resets the failure count and records the
latency sample together; after a failure, the same script also counts it with
the guard (or forces the downgrade an auth failure calls for). On a Redis
Cluster the cache entry and the deployment's keys are in different slots: the
snapshot is an ``MGET`` of the forced record and the pause and a ``GET`` of
the entry, pipelined (one round trip to each of at most two nodes, sent
together), and the script after a miss is a ``SET`` of the entry and
``AFTER_READ_SHARED`` (``AFTER_FAILURE_SHARED`` after a failure).

Nothing else on the way of a hit or a blocked read waits or allocates much:
the performers take the ``MGET`` step without driving the generator
(``begin``, ``MGET``, ``decide``), the two read counters are per-thread
tallies (``metrics.Tally``), and a forced record and a cache entry are parsed
once per distinct stored value.

The whole read ends within ``MEMORY_READ_TIMEOUT_MS`` + 25 ms: the Zep call gets
what is left of the budget after the snapshot, and each Redis step after it
carries in ``budget_seconds`` what is left of the budget + 25 ms (less a margin
for the flow's own work after it); the performer cuts a step short there, and
a step cut short comes back as ``None`` like any Redis failure.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from memory_worker import cache, metrics
from memory_worker.clock import Clock
from memory_worker.config import Settings
from memory_worker.errors import InvalidRequest
from memory_worker.fallback import LocalGuard
from memory_worker.guard import SCRIPT as GUARD_SCRIPT
from memory_worker.guard import Decision, Guard, ScriptCall
from memory_worker.ids import ID_RULE, is_valid_id
from memory_worker.keys import VIEWS, Keys
from memory_worker.logs import log_event
from memory_worker.modes import ForcedRecord, base_mode, effective_mode, parse_forced
from memory_worker.zep import Failure, Memory, ReadResult, Reason

log = logging.getLogger("memory_worker.reader")

SUMMARY_MESSAGES = 4
LATENCY_WINDOW_MS = 30_000
LATENCY_MIN_SAMPLES = 5
LATENCY_MAX_SAMPLES = 101
_GUARDED = {Reason.TIMEOUT, Reason.SERVER_ERROR, Reason.CONNECTION_ERROR}
READ_SLACK_SECONDS = 0.025  # SPEC §5: a read returns within MEMORY_READ_TIMEOUT_MS + 25 ms
# What the flow may still need after its last Redis step (building meta, a log
# line) and how late a timed-out wait may wake on a busy machine.
FLOW_MARGIN_SECONDS = 0.010
_NEGATIVE = {Reason.NOT_FOUND, Reason.TIMEOUT}

Context = dict[str, Any]
Meta = dict[str, Any]
Result = tuple[Context | None, Meta]

# KEYS: cache entry, latency samples, failure counter, window start, probe failures
# ARGV: now_ms, latency_ms, sample id, cache value ('' = none), cache ttl ms,
#       reset ('1' on success), window ms, min samples, max samples, track ('1'/'0')
# Returns the median latency in ms as a string once enough samples exist, else false.
AFTER_READ = """
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
end
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
end
if ARGV[10] ~= '1' then
  return false
end
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[3] .. ':' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[7]))
local n = redis.call('ZCARD', KEYS[2])
local most = tonumber(ARGV[9])
if n > most then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - most - 1)
  n = most
end
redis.call('PEXPIRE', KEYS[2], ARGV[7])
if n < tonumber(ARGV[8]) then
  return false
end
local values = {}
for i, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  values[i] = tonumber(string.match(member, ':([%d%.]+)$')) or 0
end
table.sort(values)
if n % 2 == 1 then
  return tostring(values[(n + 1) / 2])
end
return tostring((values[n / 2] + values[n / 2 + 1]) / 2)
"""

# Redis Cluster: the cache entry is in its thread's slot, the other keys in the
# deployment's, and a script touches one slot. There the performer sets the
# entry with a SET of its own and then runs this: ``AFTER_READ`` with the entry
# left out (its KEYS from the second on; ARGV as above, the cache value '').
# The two are independent and each is correct alone: an entry cached while the
# script is lost (Redis failed between them) only leaves the failure count to
# the next success; a script run without the entry only costs the next read a
# miss. The entry goes first because it is what the next read of the thread uses.
AFTER_READ_SHARED = "local KEYS = {'', unpack(KEYS)}\n" + AFTER_READ


def _after_failure(after_read: str, after_read_keys: int) -> str:
    """The script after a read that failed with a guarded reason: ``after_read`` (its
    first ``after_read_keys`` KEYS, ten ARGV), then the downgrade script on the rest
    (guard.py), whose reply it returns. One round trip instead of two for every read
    that a sick Zep fails, when the reads of a whole stalled crowd end at once."""
    return (f"local function after_read(KEYS, ARGV)\n{after_read}\nend\n"
            f"local function downgrade(KEYS, ARGV)\n{GUARD_SCRIPT}\nend\n"
            f"after_read({{unpack(KEYS, 1, {after_read_keys})}}, {{unpack(ARGV, 1, 10)}})\n"
            f"return downgrade({{unpack(KEYS, {after_read_keys + 1})}}, {{unpack(ARGV, 11)}})\n")


AFTER_FAILURE = _after_failure(AFTER_READ, 5)
AFTER_FAILURE_SHARED = _after_failure(AFTER_READ_SHARED, 4)  # a cluster's: no entry

# KEYS: pause key; ARGV: until (epoch seconds), ttl ms. Only ever lengthens the pause.
PAUSE = """
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


class Snapshot(NamedTuple):  # a tuple: built on every read, it must be cheap
    keys: list[str]


@dataclass(frozen=True)
class ZepRead:
    thread_id: str
    lastn: int
    budget_seconds: float
    view: str


@dataclass(frozen=True)
class AfterRead:
    """``AFTER_READ``; with ``guard``, ``AFTER_FAILURE``: the failure counted (or the
    downgrade forced) in the same script, whose reply is then the guard's."""

    keys: list[str]
    args: list[str | int | float]
    budget_seconds: float  # the longest this step may take; at most 0: no time left
    guard: ScriptCall | None = None

    def entry(self) -> tuple[str, str, int] | None:
        """The cache entry to set (key, value, TTL in ms), None when there is none."""
        value = str(self.args[3])
        return (self.keys[0], value, int(self.args[4])) if value else None

    def call(self) -> tuple[list[str], list[str | int | float]]:
        """The script's keys and arguments on one server."""
        if self.guard is None:
            return self.keys, self.args
        return [*self.keys, *self.guard.keys], [*self.args, *self.guard.args]

    def shared(self) -> tuple[list[str], list[str | int | float]]:
        """The ``_SHARED`` script's keys and arguments: this step without its entry."""
        keys, args = self.keys[1:], [*self.args[:3], "", *self.args[4:]]
        if self.guard is None:
            return keys, args
        return [*keys, *self.guard.keys], [*args, *self.guard.args]


@dataclass(frozen=True)
class RunGuard:
    call: ScriptCall
    budget_seconds: float


@dataclass(frozen=True)
class Pause:
    keys: list[str]
    args: list[str | int | float]
    budget_seconds: float


Step = Snapshot | ZepRead | AfterRead | RunGuard | Pause
Flow = Generator[Step, Any, Result]


def check_request(thread_id: object, view: object) -> None:
    if not is_valid_id(thread_id):
        raise InvalidRequest(f"thread_id {ID_RULE}")
    if view not in VIEWS:
        raise InvalidRequest(f"view must be one of {', '.join(VIEWS)}; got {view!r}")


@dataclass
class ReadPolicy:
    """What one process needs to decide a read; shared by the sync and async paths.

    ``flow`` is the whole read as one generator. The performers run its first
    step themselves, as the hot path: ``begin`` (the keys of the one ``MGET``),
    the ``MGET``, ``decide`` (the answer of a hit, a blocked read, a negative
    entry, a pause) and, for a miss only, the generator ``miss``. ``flow`` is
    built from the same three, so the rules exist once.
    """

    settings: Settings
    keys: Keys
    guard: Guard
    local: LocalGuard
    clock: Clock
    perf: Callable[[], float] = time.perf_counter
    _last_block_log: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        # Settings are frozen: what every read needs is computed once, off the hot path.
        self.base = base_mode(write=self.settings.flag_zep_write,
                              read=self.settings.flag_zep_read)
        self._base_value = self.base.value
        self._reads = self.base.reads
        self._forced_key = self.keys.forced
        self._pause_key = self.keys.rate_limited_until
        self._ctx_prefix = f"{self.keys.prefix}ctx:"
        self._cluster = self.keys.cluster
        self._grace = self.settings.grace_seconds
        self._all_done = (self.settings.read_timeout_ms / 1000 + READ_SLACK_SECONDS
                          - FLOW_MARGIN_SECONDS)
        self._forced_seen: tuple[str, ForcedRecord | None] = ("", None)
        self._entries = _DecodedEntries()

    def flow(self, thread_id: str, view: str) -> Flow:
        started = self.perf()
        keys = self.begin(thread_id, view)
        if keys is None:
            return self.disabled(started)
        snapshot = yield Snapshot(keys)
        result = self.decide(thread_id, started, snapshot)
        if result is not None:
            return result
        return (yield from self.miss(thread_id, view, started, keys[1], snapshot is not None))

    def begin(self, thread_id: str, view: str) -> list[str] | None:
        """Check and count the call; the keys of its ``MGET``, or None when reads are off."""
        check_request(thread_id, view)
        metrics.read_counts.cell()[metrics.CONTEXT_REQUESTS] += 1
        if not self._reads:
            return None
        if self._cluster:  # the entry's name carries its thread's hash tag
            return [self._forced_key, self.keys.context(thread_id, view), self._pause_key]
        return [self._forced_key, f"{self._ctx_prefix}{thread_id}:{view}", self._pause_key]

    def disabled(self, started: float) -> Result:
        return None, self._meta(started, "disabled", reason="reads_disabled")

    def decide(self, thread_id: str, started: float, snapshot: list[Any] | None
               ) -> Result | None:
        """What the snapshot answers on its own; None when the read must go to Zep.

        ``snapshot``: the ``MGET`` reply (forced record, cache entry, pause), or
        None when Redis failed: then the process's ``LocalGuard`` decides.
        """
        if snapshot is None:
            now = self.clock()
            forced = self.local.forced(now)
            raw, paused = None, self.local.rate_limited(now)
        else:
            forced_raw, raw, pause_raw = snapshot
            forced = None if forced_raw is None else self._forced(forced_raw, self.clock())
            paused = pause_raw is not None and _float(pause_raw) > self.clock()
        if forced is not None:
            self._log_blocked(thread_id, forced)
            meta = self._meta(started, "write_only_forced", reason=forced.reason,
                              mode=effective_mode(self.base, forced).value)
            meta["until"] = forced.until
            return None, meta
        if raw is not None:
            entry = self._entries.get(raw)
            if entry is not None:
                if entry.context is not None:
                    metrics.read_counts.cell()[metrics.CONTEXT_CACHE_HITS] += 1
                    return (_copy(entry.context),
                            self._meta(started, "zep", used=True, cached=True))
                return None, self._meta(started, "negative_cache", reason=entry.reason,
                                        cached=True)
        if paused:
            return None, self._meta(started, "rate_limited", reason=Reason.RATE_LIMITED.value)
        return None

    def miss(self, thread_id: str, view: str, started: float, cache_key: str,
             shared: bool) -> Flow:
        """The read of a miss: Zep within what is left of the budget, then its aftermath."""
        now = self.clock()
        base = self.base
        remaining = self.settings.read_timeout_ms / 1000 - (self.perf() - started)
        call_started = self.perf()
        outcome: ReadResult = Failure(Reason.TIMEOUT)
        if remaining > 0.002:
            outcome = yield ZepRead(thread_id, _lastn(view, self.settings), remaining, view)
        took = self.perf() - call_started
        metrics.safe_inc(metrics.read_requests)
        metrics.safe_observe(metrics.read_latency, took)
        ends = started + self._all_done  # the Redis steps from here on end by then

        if isinstance(outcome, Memory):
            context = shape(view, outcome, self.settings.recent_lastn)
            median = yield self._after_read(cache_key, cache.positive(context),
                                            self.settings.cache_ttl_seconds, took, ends,
                                            success=True)
            self.local.reset()
            if took * 1000 > 0.8 * self.settings.read_timeout_ms:
                log_event(log, "zep_context_slow", logging.WARNING, thread_id=thread_id,
                          took_ms=round(took * 1000, 1))
            decision = None
            if self._too_slow(median):
                decision = yield from self._force("latency", shared, now, ends)
            mode = effective_mode(base, decision.record if decision else None)
            return context, self._meta(started, "zep", used=True, mode=mode.value)

        reason = outcome.reason
        metrics.safe_inc(metrics.context_failures, reason=reason.value)
        negative = cache.negative(reason.value) if reason in _NEGATIVE else ""
        if reason is Reason.TIMEOUT:
            log_event(log, "zep_context_timeout", logging.WARNING, thread_id=thread_id,
                      took_ms=round(took * 1000, 1))
        guarded = reason is Reason.AUTH or reason in _GUARDED
        call = None
        if guarded and shared:  # the guard's script runs in the after-read's
            call = (self.guard.force_call("auth") if reason is Reason.AUTH
                    else self.guard.failure_call())
        reply = yield self._after_read(cache_key, negative,
                                       self.settings.negative_cache_ttl_seconds, took, ends,
                                       success=False, guard=call)
        decision = None
        if call is not None and reply is not None:
            decision = self.guard.conclude(call, reply)
        elif guarded:  # Redis failed: the process's own guard decides
            decision = self._local_decision(
                self.local.force_now("auth", now) if reason is Reason.AUTH
                else self.local.record_failure(now))
        elif reason is Reason.RATE_LIMITED:
            yield from self._pause(outcome, shared, now, ends)
        mode = effective_mode(base, decision.record if decision else None)
        return None, self._meta(started, "error", reason=reason.value, mode=mode.value)

    def _meta(self, started: float, source: str, *, used: bool = False, cached: bool = False,
              reason: str | None = None, mode: str | None = None) -> Meta:
        return {"mode": mode or self._base_value, "used": used, "cached": cached,
                "source": source, "took_ms": round((self.perf() - started) * 1000, 3),
                "reason": reason}

    def _forced(self, raw: str, now: float) -> ForcedRecord | None:
        """The forced record in ``raw``, parsed once per distinct value (it rarely changes)."""
        seen_raw, record = self._forced_seen
        if raw != seen_raw:
            # Parsed as of the beginning of time: never stale there; the check is below.
            record = parse_forced(raw, -math.inf, 0)
            self._forced_seen = (raw, record)
        if record is None or record.stale(now, self._grace):
            return None
        return record

    def _after_read(self, cache_key: str, value: str, ttl_seconds: int, took: float,
                    ends: float, *, success: bool, guard: ScriptCall | None = None
                    ) -> AfterRead:
        keys = [cache_key, self.keys.read_latencies, self.keys.consecutive_failures,
                self.keys.failure_window_start, self.keys.probe_failures]
        track = self.settings.latency_downgrade_ms > 0
        args: list[str | int | float] = [
            int(self.clock() * 1000), round(took * 1000, 3), uuid.uuid4().hex[:12], value,
            ttl_seconds * 1000, "1" if success else "0", LATENCY_WINDOW_MS,
            LATENCY_MIN_SAMPLES, LATENCY_MAX_SAMPLES, "1" if track else "0",
        ]
        return AfterRead(keys, args, ends - self.perf(), guard)

    def _too_slow(self, median: object) -> bool:
        threshold = self.settings.latency_downgrade_ms
        return threshold > 0 and median is not None and _float(median) > threshold

    def _force(self, reason: str, shared: bool, now: float,
               ends: float) -> Generator[Step, Any, Decision]:
        if shared:
            call = self.guard.force_call(reason)
            reply = yield RunGuard(call, ends - self.perf())
            if reply is not None:
                return self.guard.conclude(call, reply)
        return self._local_decision(self.local.force_now(reason, now))

    def _pause(self, outcome: Failure, shared: bool, now: float,
               ends: float) -> Generator[Step, Any, None]:
        wait = outcome.retry_after_seconds if outcome.retry_after_seconds is not None else 5.0
        until = now + min(wait, 300.0)
        self.local.pause(until)
        if shared:
            yield Pause([self.keys.rate_limited_until], [until, int(min(wait, 300.0) * 1000) + 1],
                        ends - self.perf())

    def _local_decision(self, record: ForcedRecord | None) -> Decision:
        if record is None:
            return Decision(0)
        metrics.safe_inc(metrics.downgrades, reason=record.reason)
        log_event(log, "memory_mode_forced", logging.WARNING, prev_mode=self.base.value,
                  next_mode=effective_mode(self.base, record).value, reason=record.reason,
                  source="local", hold_seconds=record.hold_seconds, until=record.until)
        return Decision(0, forced=True, record=record)

    def _log_blocked(self, thread_id: str, forced: ForcedRecord) -> None:
        """One line per second per process at most: a forced deployment must not flood logs."""
        moment = self.perf()
        if moment - self._last_block_log >= 1.0:
            self._last_block_log = moment
            log_event(log, "zep_read_blocked_forced_mode", thread_id=thread_id,
                      reason=forced.reason)


class _DecodedEntries:
    """Cache entries decoded once per distinct stored value, for as long as they are read.

    Keyed by the exact text Redis returned, so an entry can never be stale: a
    new value is a new key, an expired one is never asked for. Decoding is most
    of what a hit costs besides its ``MGET`` (about 10 µs for a summary view);
    a thread read again while its entry lives is answered from here, with a
    copy (``_copy``), so a caller that changes its context changes only its own.
    Bounded by the text it holds; the oldest entries leave first.
    """

    MAX_CHARS = 2_000_000

    def __init__(self) -> None:
        self._entries: dict[str, cache.CacheEntry | None] = {}
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, raw: str) -> cache.CacheEntry | None:
        try:
            return self._entries[raw]
        except KeyError:
            pass
        entry = cache.decode(raw)
        if len(raw) <= self.MAX_CHARS // 16:
            with self._lock:
                while self._entries and self._chars + len(raw) > self.MAX_CHARS:
                    oldest = next(iter(self._entries))
                    del self._entries[oldest]
                    self._chars -= len(oldest)
                if raw not in self._entries:
                    self._entries[raw] = entry
                    self._chars += len(raw)
        return entry


def shape(view: str, memory: Memory, recent_lastn: int) -> Context:
    if view == "summary":
        return {"summary": memory.summary, "context": memory.context,
                "messages": [dict(m) for m in memory.messages[-SUMMARY_MESSAGES:]]}
    if view == "recent":
        return {"messages": [dict(m) for m in memory.messages[-recent_lastn:]]}
    return {"facts": list(memory.facts)}


def _copy(context: Context) -> Context:
    """A caller's own copy of a decoded context: its lists and message dicts are new."""
    return {key: ([dict(item) if type(item) is dict else item for item in value]
                  if type(value) is list else value)
            for key, value in context.items()}


def _lastn(view: str, settings: Settings) -> int:
    return settings.recent_lastn if view == "recent" else SUMMARY_MESSAGES


def _float(value: object) -> float:
    try:
        return float(value) if value is not None else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
