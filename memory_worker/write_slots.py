"""The write path's scripts on a Redis Cluster: each split into steps of one slot.

On one server the delivery ledger and the writer each change a message's keys
and deployment-wide keys (the ledger's index, the write circuit) in one
script. On a cluster a script touches one slot, and a message's keys are in
its own (``keys.py``), so each such script is run here as a few scripts, one
slot each, called with the keys and arguments of the single script and
answering as it does; ``Ledger`` and ``Writer`` take these instead when
``REDIS_CLUSTER`` is on. Between two steps another process may act, and a
process may die: the comment of each class says why its order still keeps
every message delivered (nothing lost) and written to Zep once.
"""

from __future__ import annotations

from typing import Any

from memory_worker.breaker import ALLOW_LUA, LUA_HELPERS, SUCCESS_LUA
from memory_worker.connections import as_text
from memory_worker.redis_clients import StateRedis

# KEYS: record[, duplicate marker]. ARGV: record JSON, record TTL[, marker TTL].
# ``ledger._ENTER`` without the index: 1 when entered, 0 for a duplicate.
_ENTER_RECORD = """
if KEYS[2] and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'republished', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: pending set. ARGV: client_msg_id, now, claimed deadline. 1 when the entry was
# due and now carries the claimed deadline (this caller's to look at), else 0.
_CLAIM_INDEX = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: record, done-marker, lease. {1}: done or its record is gone (record deleted);
# {2, n}: a worker is writing it; {3, n, record}: publish it again. n: times republished.
_CLAIM_RECORD = """
local record = redis.call('HGET', KEYS[1], 'record')
if not record or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[1])
  return {1}
end
local n = redis.call('HINCRBY', KEYS[1], 'republished', 1)
if redis.call('EXISTS', KEYS[3]) == 1 then return {2, n} end
return {3, n, record}
"""

# KEYS: pending set. ARGV: client_msg_id, claimed deadline, next deadline ('' = take
# the entry out). Only while the entry still carries the claimed deadline: a worker's
# postpone or settle since the claim stands.
_RESCHEDULE = """
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""

# KEYS: done-marker, lease, attempted marker. ARGV: lease token, lease ms, expired
# (1|0), now, settle time s. ``writer._BEGIN`` up to the breaker: its replies {0},
# {1, pttl}, {3}, {5, ms}; {2, n} when this caller now holds the lease.
_BEGIN_MESSAGE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('PTTL', KEYS[2])}
end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  return {3}
end
local started = redis.call('GET', KEYS[3])
local before = 0
if started then
  before = 1
  local left = tonumber(started) + tonumber(ARGV[5]) - tonumber(ARGV[4])
  if left > 0 then
    redis.call('DEL', KEYS[2])
    return {5, math.ceil(left * 1000)}
  end
end
return {2, before}
"""

_ALLOW = LUA_HELPERS + ALLOW_LUA + "return allow(KEYS[1], ARGV)"

# KEYS: lease, attempted marker. ARGV: lease token, admitted (1|0), now, marker TTL s.
# While the lease is this caller's: admitted, mark the attempt begun; else release the
# lease. 0 when the lease was no longer this caller's.
_BEGIN_END = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS: record, attempted marker, done-marker, lease. ARGV: done-marker TTL s, token.
_FINISH_MESSAGE = """
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2])
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
"""

# KEYS: circuit, pending set. ARGV: ``success``'s five arguments, client_msg_id.
_FINISH_SHARED = LUA_HELPERS + SUCCESS_LUA + """
local closed = success(KEYS[1], {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]})
redis.call('ZREM', KEYS[2], ARGV[6])
return closed
"""


class Enter:
    """``ledger._ENTER`` by slot: the index entry first, then the marker and the record.

    In this order every message the duplicate marker admits is already in the
    index, so a process that dies after setting the marker (before publishing)
    leaves the message to the sweep, which publishes it once its deadline
    passes; the other order would leave a marker that refuses the caller's
    retry of a message nobody will publish. With a marker the entry is added
    only when absent (``NX``): a duplicate never moves the deadline of the
    message it repeats, and the entry a duplicate of a finished message adds
    is taken out by the sweep, which finds no record.
    """

    def __init__(self, conn: StateRedis) -> None:
        self._conn = conn
        self._record = conn.register_script(_ENTER_RECORD)

    def __call__(self, keys: list[str], args: list[str | int]) -> int:
        pending, record, *marker = keys
        record_json, record_ttl, deadline, client_msg_id, *marker_ttl = args
        self._conn.zadd(pending, {str(client_msg_id): float(deadline)}, nx=bool(marker))
        return int(self._record(keys=[record, *marker], args=[record_json, record_ttl,
                                                                *marker_ttl]))


class Claim:
    """``ledger._CLAIM`` by slot: claim the due entry, look at the message, reschedule.

    The claim moves a due entry's deadline one slack ahead in one step, so of
    two sweeps only one sees it due and may publish it. The record is then
    read in its own slot. The reschedule (the backed-off deadline, or taking
    the entry out when the message is done or its record gone) applies only
    while the entry still carries the claimed deadline, so a retry's postpone
    or a settle since then is kept. A sweep that dies after the claim leaves
    the entry due again one slack later: never lost, at worst looked at again.
    """

    def __init__(self, conn: StateRedis) -> None:
        self._index = conn.register_script(_CLAIM_INDEX)
        self._record = conn.register_script(_CLAIM_RECORD)
        self._reschedule = conn.register_script(_RESCHEDULE)

    def __call__(self, keys: list[str], args: list[str | int]) -> list[Any]:
        pending, record, done, lease = keys
        client_msg_id, now, slack, max_doublings = args
        claimed = repr(float(now) + float(slack))
        if not int(self._index(keys=[pending], args=[client_msg_id, now, claimed])):
            return [0]
        reply = self._record(keys=[record, done, lease])
        verdict = int(reply[0])
        deadline = ""
        if verdict != 1:
            gap = float(slack) * 2 ** min(int(reply[1]), int(max_doublings))
            deadline = repr(float(now) + gap)
        self._reschedule(keys=[pending], args=[client_msg_id, claimed, deadline])
        return [verdict, *reply[2:]]


class Begin:
    """``writer._BEGIN`` by slot: the message's checks and lease, the breaker, the mark.

    The lease is taken first, in the message's slot, with the done check, so a
    message already written never takes the breaker's trial and only one
    worker goes on. The breaker admits (or not) in the deployment's slot.
    Then, back in the message's slot and only while the lease is still this
    worker's, an admitted attempt sets the attempted marker before Zep is
    called (so an attempt whose outcome is unknown always leaves it, and the
    next one asks Zep what landed), and a refused one releases the lease. A
    lease lost in between (an attempt slower than the lease) is answered like
    another worker's lease: wait, and try again.
    """

    def __init__(self, conn: StateRedis) -> None:
        self._message = conn.register_script(_BEGIN_MESSAGE)
        self._allow = conn.register_script(_ALLOW)
        self._end = conn.register_script(_BEGIN_END)

    def __call__(self, keys: list[str], args: list[Any]) -> list[Any]:
        done, lease, attempted, circuit = keys
        token, lease_ms, marker_ttl, expired, now, trial_lease, settle = args
        first = self._message(keys=[done, lease, attempted],
                              args=[token, lease_ms, expired, now, settle])
        if int(first[0]) != 2:
            return list(first)
        admission = [as_text(item) or "" for item in self._allow(keys=[circuit],
                                                                args=[now, trial_lease])]
        admitted = admission[0] not in ("open", "busy")
        held = int(self._end(keys=[lease, attempted],
                             args=[token, int(admitted), now, marker_ttl]))
        if not admitted:
            return [4, first[1], *admission]
        if not held:
            return [1, 0]
        return [2, first[1], *admission]


class Finish:
    """``writer._FINISH`` by slot: the message's done-marker first, then the shared state.

    The done-marker (with the record and attempted marker deleted and the
    lease released) is what keeps every later copy of the message from
    reaching Zep, so it is set first. The breaker's success and the index
    entry's removal follow in the deployment's slot; if they are lost, the
    sweep takes the entry out when it finds the done-marker, and the breaker
    misses one success (a trial's lease then runs out and another write is
    the next trial).
    """

    def __init__(self, conn: StateRedis) -> None:
        self._message = conn.register_script(_FINISH_MESSAGE)
        self._shared = conn.register_script(_FINISH_SHARED)

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        circuit, pending, record, attempted, done, lease = keys
        *success, client_msg_id, done_ttl, token = args
        self._message(keys=[record, attempted, done, lease], args=[done_ttl, token])
        return self._shared(keys=[circuit, pending], args=[*success, client_msg_id])
