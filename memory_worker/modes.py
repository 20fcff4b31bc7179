"""Memory modes and the forced-mode record shared by every process (SPEC §4).

The base mode comes from the two feature flags. A *forced record* at
``mem:mode:forced:v1`` removes reads from it, giving the effective mode. The
record blocks reads until a successful probe or an operator clears it, also
after its ``until``; its Redis TTL (hold + grace) only guarantees that a dead
beat cannot block reads forever. Past ``until + grace`` a record still in Redis
(clock skew between hosts) is treated as gone.

Plain functions, the connection passed in, like rq's ``suspension`` module.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from memory_worker.connections import as_text, delete_if_value
from memory_worker.keys import Keys
from memory_worker.logs import log_event
from memory_worker.redis_clients import StateRedis

log = logging.getLogger("memory_worker.modes")


class Mode(enum.StrEnum):
    READ_WRITE = "read_write"
    WRITE_ONLY = "write_only"
    READ_ONLY = "read_only"
    OFF = "off"

    @property
    def reads(self) -> bool:
        return self in (Mode.READ_WRITE, Mode.READ_ONLY)

    @property
    def writes(self) -> bool:
        return self in (Mode.READ_WRITE, Mode.WRITE_ONLY)


_WITHOUT_READS = {Mode.READ_WRITE: Mode.WRITE_ONLY, Mode.READ_ONLY: Mode.OFF}


def base_mode(*, write: bool, read: bool) -> Mode:
    if write:
        return Mode.READ_WRITE if read else Mode.WRITE_ONLY
    return Mode.READ_ONLY if read else Mode.OFF


def effective_mode(base: Mode, forced: ForcedRecord | None) -> Mode:
    """A forced record removes reads; it never removes writes."""
    if forced is None:
        return base
    return _WITHOUT_READS.get(base, base)


@dataclass(frozen=True)
class ForcedRecord:
    reason: str
    source: str  # "guard" | "ops"
    forced_at: float
    until: float
    hold_seconds: int
    mode: str = Mode.WRITE_ONLY.value

    @classmethod
    def new(cls, *, reason: str, source: str, now: float, hold_seconds: int) -> ForcedRecord:
        return cls(reason=reason, source=source, forced_at=now, until=now + hold_seconds,
                   hold_seconds=hold_seconds)

    def to_json(self) -> str:
        # Every field by hand, sorted: ``asdict`` would deep-copy each of them, on every
        # failed read (the guard's script carries the record it may set).
        return json.dumps({"forced_at": self.forced_at, "hold_seconds": self.hold_seconds,
                           "mode": self.mode, "reason": self.reason, "source": self.source,
                           "until": self.until})

    @classmethod
    def from_json(cls, raw: str) -> ForcedRecord:
        """Parse a stored record; ``ValueError`` when it is not one."""
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("forced record is not a JSON object")
        try:
            record = cls(
                reason=_text(data["reason"]),
                source=_text(data.get("source", "guard")),
                forced_at=float(data["forced_at"]),
                until=float(data["until"]),
                hold_seconds=int(data.get("hold_seconds", 0)),
                mode=_text(data.get("mode", Mode.WRITE_ONLY.value)),
            )
        except (KeyError, TypeError, OverflowError) as exc:
            raise ValueError(f"forced record lacks a field: {exc}") from None
        if not (math.isfinite(record.forced_at) and math.isfinite(record.until)):
            raise ValueError("forced record has a non-finite time")
        return record

    def remaining_seconds(self, now: float) -> int:
        """Whole seconds of hold left; 0 once ``until`` has passed."""
        return max(0, math.ceil(self.until - now))

    def expired(self, now: float) -> bool:
        return now >= self.until

    def stale(self, now: float, grace_seconds: int) -> bool:
        """Past hold + grace: as good as deleted, whatever Redis still holds."""
        return now >= self.until + grace_seconds


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def record_ttl_ms(hold_seconds: int, grace_seconds: int) -> int:
    return (hold_seconds + grace_seconds) * 1000


def parse_forced(raw: str | None, now: float, grace_seconds: int) -> ForcedRecord | None:
    if raw is None:
        return None
    try:
        record = ForcedRecord.from_json(raw)
    except ValueError as exc:
        log_event(log, "memory_forced_record_unreadable", logging.WARNING, error=str(exc))
        return None
    return None if record.stale(now, grace_seconds) else record


def read_forced_raw(conn: StateRedis, keys: Keys) -> str | None:
    return as_text(conn.get(keys.forced))


def get_forced(conn: StateRedis, keys: Keys, *, now: float, grace_seconds: int
               ) -> ForcedRecord | None:
    return parse_forced(read_forced_raw(conn, keys), now, grace_seconds)


def force(conn: StateRedis, keys: Keys, record: ForcedRecord, *, base: Mode,
          grace_seconds: int, now: float) -> ForcedRecord | None:
    """Write ``record`` unconditionally (an operator's force); return the record it replaced."""
    previous_raw = as_text(conn.set(
        keys.forced, record.to_json(), px=record_ttl_ms(record.hold_seconds, grace_seconds),
        get=True,
    ))
    previous = parse_forced(previous_raw, now, grace_seconds)
    announce_forced(base, previous, record)
    return previous


def clear(conn: StateRedis, keys: Keys, *, base: Mode, now: float, grace_seconds: int,
          reason: str) -> ForcedRecord | None:
    """Remove the forced record whatever it holds; return it (None when there was none)."""
    removed = parse_forced(as_text(conn.getdel(keys.forced)), now, grace_seconds)
    if removed is not None:
        log_event(log, "memory_mode_restored", mode=base.value, reason=reason,
                  cleared_reason=removed.reason)
    return removed


def clear_if_same(conn: StateRedis, keys: Keys, raw: str, *, base: Mode, reason: str) -> bool:
    """Compare-and-delete: clear only the record that was evaluated, not a newer one."""
    deleted = delete_if_value(conn, keys.forced, raw)
    if deleted:
        log_event(log, "memory_mode_restored", mode=base.value, reason=reason)
    return deleted


def announce_forced(base: Mode, previous: ForcedRecord | None, record: ForcedRecord) -> None:
    log_event(
        log, "memory_mode_forced", logging.WARNING,
        prev_mode=effective_mode(base, previous).value,
        next_mode=effective_mode(base, record).value,
        reason=record.reason, source=record.source,
        hold_seconds=record.hold_seconds, until=record.until,
    )
