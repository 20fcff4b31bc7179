"""Modes: the flag table, the forced overlay and the forced record's life cycle."""

from __future__ import annotations

import json

import pytest
import redis

from memory_worker import modes
from memory_worker.connections import as_text
from memory_worker.keys import Keys
from memory_worker.modes import ForcedRecord, Mode
from tests.conftest import FakeClock

GRACE = 120


@pytest.mark.parametrize(
    ("write", "read", "base", "forced"),
    [
        (True, True, Mode.READ_WRITE, Mode.WRITE_ONLY),
        (True, False, Mode.WRITE_ONLY, Mode.WRITE_ONLY),
        (False, True, Mode.READ_ONLY, Mode.OFF),
        (False, False, Mode.OFF, Mode.OFF),
    ],
)
def test_the_mode_table(write: bool, read: bool, base: Mode, forced: Mode) -> None:
    """Flags give the base mode; a forced record removes reads, never writes."""
    assert modes.base_mode(write=write, read=read) is base
    record = ForcedRecord.new(reason="auth", source="guard", now=0, hold_seconds=300)
    assert modes.effective_mode(base, None) is base
    assert modes.effective_mode(base, record) is forced
    assert modes.effective_mode(base, record).writes == base.writes


def _force(conn: redis.Redis, keys: Keys, clock: FakeClock, hold: int = 300,
           reason: str = "auth", source: str = "guard") -> ForcedRecord:
    record = ForcedRecord.new(reason=reason, source=source, now=clock(), hold_seconds=hold)
    modes.force(conn, keys, record, base=Mode.READ_WRITE, grace_seconds=GRACE, now=clock())
    return record


def test_forced_record_is_stored_as_the_contract_json(
    conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """The record at mem:mode:forced:v1 has exactly the documented fields."""
    _force(conn, keys, clock, hold=300)
    stored = json.loads(conn.get("mem:mode:forced:v1") or "")
    assert stored == {"mode": "write_only", "reason": "auth", "source": "guard",
                      "forced_at": clock.now, "until": clock.now + 300, "hold_seconds": 300}


def test_forced_record_carries_a_redis_ttl_of_hold_plus_grace(
    conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """So a dead beat cannot block reads forever, Redis drops the record after hold + grace."""
    _force(conn, keys, clock, hold=300)
    ttl_ms = conn.pttl(keys.forced)
    assert (300 + GRACE) * 1000 - 2000 < ttl_ms <= (300 + GRACE) * 1000


def test_forced_record_life_cycle_follows_the_clock(
    conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """Held; still blocking after `until` (only a probe or clear lifts it); gone after grace."""
    _force(conn, keys, clock, hold=300)
    during = modes.get_forced(conn, keys, now=clock(), grace_seconds=GRACE)
    assert during is not None and during.remaining_seconds(clock()) == 300

    clock.advance(299.5)
    assert modes.get_forced(conn, keys, now=clock(), grace_seconds=GRACE) is not None

    clock.advance(0.5 + 60)  # past until, inside grace
    after = modes.get_forced(conn, keys, now=clock(), grace_seconds=GRACE)
    assert after is not None and after.expired(clock()) and after.remaining_seconds(clock()) == 0

    clock.advance(GRACE - 60)  # until + grace reached
    assert modes.get_forced(conn, keys, now=clock(), grace_seconds=GRACE) is None


def test_clear_removes_the_record_and_reports_it(
    conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """clear returns what it removed, and None when there was nothing."""
    _force(conn, keys, clock, reason="maintenance", source="ops")
    removed = modes.clear(conn, keys, base=Mode.READ_WRITE, now=clock(), grace_seconds=GRACE,
                          reason="ops_clear")
    assert removed is not None and removed.reason == "maintenance"
    assert conn.exists(keys.forced) == 0
    assert modes.clear(conn, keys, base=Mode.READ_WRITE, now=clock(), grace_seconds=GRACE,
                       reason="ops_clear") is None


def test_compare_and_clear_keeps_a_newer_record(
    conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """A probe clears only the record it evaluated: an operator's newer force stays."""
    _force(conn, keys, clock, reason="consecutive_failures")
    evaluated = as_text(conn.get(keys.forced))
    assert evaluated is not None
    clock.advance(1)
    _force(conn, keys, clock, reason="maintenance", source="ops")
    assert not modes.clear_if_same(conn, keys, evaluated, base=Mode.READ_WRITE, reason="probe")
    kept = modes.get_forced(conn, keys, now=clock(), grace_seconds=GRACE)
    assert kept is not None and kept.reason == "maintenance"
    assert modes.clear_if_same(conn, keys, as_text(conn.get(keys.forced)) or "",
                               base=Mode.READ_WRITE,
                               reason="probe")
    assert conn.exists(keys.forced) == 0


@pytest.mark.parametrize("garbage", ["not json", "[]", '{"reason": "auth"}', '{"until": "x"}'])
def test_an_unreadable_record_does_not_block_reads(
    conn: redis.Redis, keys: Keys, clock: FakeClock, garbage: str
) -> None:
    """Garbage in the forced key is logged and treated as no record, never raised."""
    conn.set(keys.forced, garbage)
    assert modes.get_forced(conn, keys, now=clock(), grace_seconds=GRACE) is None


def test_operator_force_replaces_a_guard_record_and_says_what_it_replaced(
    conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """force() is unconditional and returns the previous record."""
    _force(conn, keys, clock, reason="auth")
    record = ForcedRecord.new(reason="deploy", source="ops", now=clock(), hold_seconds=60)
    previous = modes.force(conn, keys, record, base=Mode.READ_WRITE, grace_seconds=GRACE,
                           now=clock())
    assert previous is not None and previous.reason == "auth"
    current = modes.get_forced(conn, keys, now=clock(), grace_seconds=GRACE)
    assert current == record


def test_a_forced_record_to_json_carries_every_field_sorted_and_parses_back() -> None:
    """Written by hand for speed: a field added to ForcedRecord must not be left out."""
    import dataclasses
    import json

    from memory_worker.modes import ForcedRecord

    record = ForcedRecord.new(reason="auth", source="ops", now=100.5, hold_seconds=30)
    text = record.to_json()
    assert list(json.loads(text)) == sorted(f.name for f in dataclasses.fields(ForcedRecord))
    assert ForcedRecord.from_json(text) == record
