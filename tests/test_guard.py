"""The auto-downgrade guard: threshold, window, reset, immediate forces, shadow mode, holds."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import redis
from prometheus_client import REGISTRY

from memory_worker import modes
from memory_worker.config import Settings
from memory_worker.guard import Guard, escalated_hold
from memory_worker.keys import Keys
from tests.conftest import FakeClock


def _downgrades(reason: str) -> float:
    return REGISTRY.get_sample_value("memory_zep_downgrades_total", {"reason": reason}) or 0.0


@pytest.fixture
def guard(conn: redis.Redis, settings: Settings, clock: FakeClock) -> Guard:
    return Guard(conn, settings, clock=clock)


def test_three_failures_inside_the_window_force_write_only(
    guard: Guard, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """Given the default threshold of 3, the third failure creates the forced record."""
    before = _downgrades("consecutive_failures")
    assert not guard.record_failure().forced
    clock.advance(10)
    assert not guard.record_failure().forced
    clock.advance(10)
    decision = guard.record_failure()
    assert decision.forced and decision.fail_count == 3
    record = modes.get_forced(conn, keys, now=clock(), grace_seconds=120)
    assert record is not None
    assert (record.reason, record.source, record.hold_seconds) == ("consecutive_failures",
                                                                   "guard", 300)
    assert record.until == clock() + 300
    assert _downgrades("consecutive_failures") == before + 1


def test_a_failure_seen_after_a_later_one_still_counts_in_its_window(
    guard: Guard, clock: FakeClock
) -> None:
    """Two connections (or two hosts' clocks) can bring Redis a failure stamped a moment
    before the window began: it counts; one stamped seconds before starts a new window."""
    clock.advance(10)
    assert guard.record_failure().fail_count == 1
    clock.advance(-0.5)
    assert guard.record_failure().fail_count == 2
    clock.advance(-2)
    assert guard.record_failure().fail_count == 1


def test_failures_spread_wider_than_the_window_never_downgrade(
    guard: Guard, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """The count restarts MEMORY_DOWNGRADE_WINDOW_SECONDS after the first failure."""
    guard.record_failure()
    clock.advance(30)
    guard.record_failure()
    clock.advance(30)  # 60 s after the first: a new window starts
    decision = guard.record_failure()
    assert decision.fail_count == 1 and not decision.forced
    assert conn.exists(keys.forced) == 0


def test_a_success_resets_the_count(guard: Guard, conn: redis.Redis, keys: Keys) -> None:
    """Two failures, a success, two failures: no downgrade."""
    guard.record_failure()
    guard.record_failure()
    guard.reset_failures()
    assert guard.failure_count() == 0
    guard.record_failure()
    assert not guard.record_failure().forced
    assert conn.exists(keys.forced) == 0


def test_the_counter_is_a_plain_integer_operators_can_read(
    guard: Guard, conn: redis.Redis
) -> None:
    """`redis-cli GET mem:read:consec_failures` shows the count, with a TTL of the window."""
    guard.record_failure()
    guard.record_failure()
    assert conn.get("mem:read:consec_failures") == "2"
    assert 0 < conn.pttl("mem:read:consec_failures") <= 60_000


def test_auth_forces_at_once_and_only_once(
    guard: Guard, conn: redis.Redis, keys: Keys, clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 401 forces with reason auth; a second one while forced changes nothing."""
    before = _downgrades("auth")
    with caplog.at_level(logging.INFO, logger="memory_worker"):
        first = guard.force_now("auth")
        clock.advance(1)
        second = guard.force_now("auth")
    assert first.forced and not second.forced
    assert _downgrades("auth") == before + 1
    events = [r.getMessage() for r in caplog.records]
    assert events.count("memory_mode_forced") == 1
    assert events.count("zep_auth_failure_auto_downgrade") == 1
    forced_line = next(r for r in caplog.records if r.getMessage() == "memory_mode_forced")
    fields = forced_line.event_fields  # type: ignore[attr-defined]
    assert fields["prev_mode"] == "read_write" and fields["next_mode"] == "write_only"
    assert fields["reason"] == "auth" and fields["hold_seconds"] == 300


def test_a_downgrade_does_not_override_an_operator_force(
    guard: Guard, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """With a live ops record, the guard leaves it alone."""
    ops = modes.ForcedRecord.new(reason="deploy", source="ops", now=clock(), hold_seconds=600)
    modes.force(conn, keys, ops, base=modes.Mode.READ_WRITE, grace_seconds=120, now=clock())
    assert not guard.force_now("auth").forced
    assert json.loads(conn.get(keys.forced) or "")["reason"] == "deploy"


def test_a_record_past_hold_and_grace_is_replaced(
    guard: Guard, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """A record Redis has not dropped yet but the clock says is stale does not block a new one."""
    guard.force_now("auth")
    clock.advance(300 + 120)
    decision = guard.force_now("consecutive_failures")
    assert decision.forced
    assert json.loads(conn.get(keys.forced) or "")["reason"] == "consecutive_failures"


def test_the_count_restarts_after_a_downgrade(guard: Guard) -> None:
    """The incident is over once it forced: the next incident counts from zero."""
    for _ in range(3):
        guard.record_failure()
    assert guard.failure_count() == 0


def test_shadow_mode_detects_logs_and_counts_but_does_not_force(
    conn: redis.Redis, settings: Settings, keys: Keys, clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DISABLE_AUTO_DOWNGRADE: reads go on; the would-be downgrade is logged once per incident."""
    shadow = Guard(conn, dataclasses.replace(settings, disable_auto_downgrade=True), clock=clock)
    before = REGISTRY.get_sample_value("memory_zep_shadow_downgrades_total",
                                       {"reason": "consecutive_failures"}) or 0.0
    real_before = _downgrades("consecutive_failures")
    with caplog.at_level(logging.INFO, logger="memory_worker"):
        decisions = [shadow.record_failure() for _ in range(5)]
        auth = shadow.force_now("auth")
    assert conn.exists(keys.forced) == 0
    assert [d.suppressed for d in decisions] == [False, False, True, False, False]
    assert not auth.forced
    assert decisions[-1].fail_count == 5
    events = [r.getMessage() for r in caplog.records]
    assert events.count("memory_mode_force_suppressed") == 1
    assert "memory_mode_forced" not in events
    after = REGISTRY.get_sample_value("memory_zep_shadow_downgrades_total",
                                      {"reason": "consecutive_failures"})
    assert after == before + 1
    assert _downgrades("consecutive_failures") == real_before


def test_escalated_hold_doubles_per_failed_probe_with_jitter_and_a_cap() -> None:
    """base × 2^n, n = 1 on the first failed probe, ±10 %, capped."""
    assert escalated_hold(300, 1, 3600, jitter=lambda a, b: 1.0) == 600
    assert escalated_hold(300, 2, 3600, jitter=lambda a, b: 1.0) == 1200
    assert escalated_hold(300, 3, 3600, jitter=lambda a, b: 1.0) == 2400
    assert escalated_hold(300, 4, 3600, jitter=lambda a, b: 1.0) == 3600
    assert escalated_hold(300, 1, 3600, jitter=lambda a, b: a) == 540
    assert escalated_hold(300, 1, 3600, jitter=lambda a, b: b) == 660
    assert escalated_hold(300, 500, 3600) == 3600


def test_probe_failures_escalate_the_hold_and_reset(guard: Guard) -> None:
    """Each failed probe lengthens the next hold until a success resets the exponent."""
    holds = [guard.next_probe_hold() for _ in range(3)]
    assert 540 <= holds[0] <= 660 and 1080 <= holds[1] <= 1320 and 2160 <= holds[2] <= 2640
    guard.reset_probe_failures()
    assert 540 <= guard.next_probe_hold() <= 660
