"""The write dead-letter queue: the Redis list ``mem:write:dlq`` (SPEC §6, §8).

Each entry is one JSON object, oldest at the head: ``client_msg_id``,
``thread_id``, the redacted ``payload`` (the task's message payload),
``reason``, ``status_code`` (int or null), ``attempts``, ``failed_at``
(epoch seconds). Plain functions, the connection passed in.

Replay moves entries one at a time, never loses one, and never lets two
replays publish the same entry:

1. A replay takes a lock (``SET NX PX``, a token of its own); a second replay
   finds it taken and returns at once with ``busy=True``.
2. It first puts back, at the head of the queue, whatever a crashed replay
   left in the side list ``mem:write:dlq:replaying``.
3. Then, for as many entries as the queue held when it started, one script
   checks the lock is still its own, renews it and ``LMOVE``\\ s the head entry
   into the side list; the entry is published; then it is removed from the
   side list. A failed publish puts the entry back at the head and stops the
   replay, an unreadable entry goes back to the tail and is reported. Entries
   dead-lettered again during the replay wait for the next one.

A crash between a publish and the removal leaves that one entry in the side
list, and the next replay publishes it again: the task's done-marker and the
message uuid derived from ``client_msg_id`` keep the Zep write single. Until
then the entry still counts in ``size`` and shows in ``entries``.

Redis errors surface as ``StateUnavailable``.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from memory_worker.connections import as_text, delete_if_value
from memory_worker.errors import StateUnavailable
from memory_worker.keys import Keys
from memory_worker.logs import log_event
from memory_worker.redis_clients import StateRedis

log = logging.getLogger("memory_worker.dlq")

REPLAY_LOCK_SECONDS = 60.0


@dataclass(frozen=True)
class DeadLetter:
    """One message that could not be written to Zep, and why."""

    client_msg_id: str
    thread_id: str
    payload: dict[str, Any]
    reason: str
    status_code: int | None
    attempts: int
    failed_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DeadLetter:
        """Check every field's type; ``ValueError`` names the first that is wrong."""

        def field(name: str, *types: type) -> Any:
            if name not in data:
                raise ValueError(f"missing field {name!r}")
            value = data[name]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                raise ValueError(f"field {name!r} has type {type(value).__name__}")
            return value

        failed_at = float(field("failed_at", int, float))
        if not math.isfinite(failed_at):
            raise ValueError("field 'failed_at' is not a finite number")
        return cls(
            client_msg_id=field("client_msg_id", str),
            thread_id=field("thread_id", str),
            payload=dict(field("payload", dict)),
            reason=field("reason", str),
            status_code=field("status_code", int, type(None)),
            attempts=field("attempts", int),
            failed_at=failed_at,
        )

    @classmethod
    def from_json(cls, raw: str) -> DeadLetter:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"entry is a JSON {type(data).__name__}, not an object")
        return cls.from_mapping(data)


@dataclass(frozen=True)
class Unreadable:
    """An entry that is not a dead letter (hand-edited, truncated, foreign); kept, reported."""

    raw: str
    error: str


@dataclass(frozen=True)
class ReplayReport:
    """What one replay did; ``busy`` when another replay held the lock and nothing was done.

    ``error`` says why it stopped early: the type of the exception ``publish``
    raised, or ``lock_lost`` when its lock expired during a publish slower
    than ``lock_seconds``.
    """

    replayed: int = 0
    unreadable: int = 0
    remaining: int = 0
    busy: bool = False
    error: str | None = None


def replaying_key(keys: Keys) -> str:
    return f"{keys.dlq}:replaying"


def replay_lock_key(keys: Keys) -> str:
    return f"{keys.dlq}:replay_lock"


def push(conn: StateRedis, keys: Keys, entry: DeadLetter | Mapping[str, Any]) -> int:
    """Append ``entry`` at the tail; return the queue's new length."""
    letter = entry if isinstance(entry, DeadLetter) else DeadLetter.from_mapping(entry)
    try:
        return int(conn.rpush(keys.dlq, letter.to_json()))
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc


def parse(raw: str) -> DeadLetter | Unreadable:
    try:
        return DeadLetter.from_json(raw)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return Unreadable(raw, str(exc))


def entries(conn: StateRedis, keys: Keys, limit: int | None = None
            ) -> list[DeadLetter | Unreadable]:
    """Oldest first, an entry being replayed included; unreadable ones as ``Unreadable``."""
    if limit is not None and limit < 0:
        raise ValueError("limit must not be negative")
    if limit == 0:
        return []
    try:
        pipe = conn.pipeline(transaction=True)
        pipe.lrange(replaying_key(keys), 0, -1)
        pipe.lrange(keys.dlq, 0, -1 if limit is None else limit - 1)
        in_flight, queued = pipe.execute()
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc
    raws = [as_text(raw) or "" for raw in [*in_flight, *queued]]
    return [parse(raw) for raw in raws[:limit]]


def size(conn: StateRedis, keys: Keys) -> int:
    """Entries waiting, an entry being replayed (or stranded by a crashed replay) included."""
    try:
        pipe = conn.pipeline(transaction=True)
        pipe.llen(keys.dlq)
        pipe.llen(replaying_key(keys))
        queued, in_flight = pipe.execute()
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc
    return int(queued) + int(in_flight)


def purge(conn: StateRedis, keys: Keys) -> int:
    """Empty the queue; return how many entries were dropped."""
    try:
        pipe = conn.pipeline(transaction=True)
        pipe.llen(keys.dlq)
        pipe.llen(replaying_key(keys))
        pipe.delete(keys.dlq, replaying_key(keys))
        queued, in_flight, _ = pipe.execute()
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc
    dropped = int(queued) + int(in_flight)
    log_event(log, "memory_dlq_purged", logging.WARNING, dropped=dropped)
    return dropped


# KEYS: queue, side list. Puts a crashed replay's entries back at the head, in order.
_RECOVER = """
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT') do n = n + 1 end
return n
"""

# KEYS: lock, queue, side list. ARGV: token, lock ms.
# Returns {0} lock lost, {1} queue empty, {2, entry} moved to the side list.
_TAKE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local raw = redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
if not raw then return {1} end
return {2, raw}
"""

# KEYS: side list, queue. ARGV: entry, where ('head' | 'tail' | 'none').
_SETTLE = """
local removed = redis.call('LREM', KEYS[1], -1, ARGV[1])
if removed > 0 and ARGV[2] == 'head' then redis.call('LPUSH', KEYS[2], ARGV[1]) end
if removed > 0 and ARGV[2] == 'tail' then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return removed
"""


def replay(conn: StateRedis, keys: Keys, publish: Callable[[DeadLetter], object], *,
           lock_seconds: float = REPLAY_LOCK_SECONDS) -> ReplayReport:
    """Republish every entry, oldest first, removing each only once its publish succeeded.

    ``publish`` sends one entry back to the write queue, bypassing the
    duplicate check; whatever it raises stops the replay with the entry kept.
    ``lock_seconds`` must exceed the slowest single publish.
    """
    token = uuid.uuid4().hex
    lock_ms = max(1, int(lock_seconds * 1000))
    lock, side = replay_lock_key(keys), replaying_key(keys)
    try:
        if not conn.set(lock, token, nx=True, px=lock_ms):
            return ReplayReport(busy=True, remaining=size(conn, keys))
        try:
            conn.eval(_RECOVER, 2, keys.dlq, side)
            report = _replay_entries(conn, keys, publish, token, lock_ms, int(conn.llen(keys.dlq)))
        finally:
            delete_if_value(conn, lock, token)
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc
    log_event(log, "memory_dlq_replayed", logging.WARNING if report.error else logging.INFO,
              replayed=report.replayed, unreadable=report.unreadable, remaining=report.remaining,
              error=report.error)
    return report


def _replay_entries(conn: StateRedis, keys: Keys, publish: Callable[[DeadLetter], object],
                    token: str, lock_ms: int, count: int) -> ReplayReport:
    side = replaying_key(keys)
    replayed = unreadable = 0
    error: str | None = None
    for _ in range(count):
        reply = conn.eval(_TAKE, 3, replay_lock_key(keys), keys.dlq, side, token, lock_ms)
        if int(reply[0]) == 0:
            error = "lock_lost"
            break
        if int(reply[0]) == 1:
            break
        raw = as_text(reply[1]) or ""
        letter = parse(raw)
        if isinstance(letter, Unreadable):
            conn.eval(_SETTLE, 2, side, keys.dlq, raw, "tail")
            unreadable += 1
            log_event(log, "memory_dlq_entry_unreadable", logging.WARNING, error=letter.error)
            continue
        try:
            publish(letter)
        except Exception as exc:
            conn.eval(_SETTLE, 2, side, keys.dlq, raw, "head")
            error = type(exc).__name__
            break
        conn.eval(_SETTLE, 2, side, keys.dlq, raw, "none")
        replayed += 1
    return ReplayReport(replayed=replayed, unreadable=unreadable, remaining=size(conn, keys),
                        error=error)


def _unavailable(exc: redis.RedisError) -> StateUnavailable:
    return StateUnavailable(f"dead-letter queue: {type(exc).__name__}")
