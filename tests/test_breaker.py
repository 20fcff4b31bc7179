"""The shared write circuit breaker: when it opens, what it admits, how it closes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from memory_worker.breaker import Breaker, BreakerPolicy, CircuitState, circuit_state
from memory_worker.keys import Keys
from tests.conftest import FakeClock
from tests.proc_breaker_race import GO, READY

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 8


def _opens() -> float:
    return REGISTRY.get_sample_value("memory_circuit_breaker_opens_total") or 0.0


@pytest.fixture
def breaker(conn: redis.Redis, keys: Keys, clock: FakeClock) -> Breaker:
    return Breaker(conn, keys, clock=clock)


def _open(breaker: Breaker, clock: FakeClock) -> None:
    """A run of failures as long as the policy asks for, in count and in time."""
    for _ in range(breaker.policy.failure_threshold - 1):
        breaker.record_failure()
    clock.advance(breaker.policy.failure_run_seconds)
    breaker.record_failure()
    assert breaker.state() is CircuitState.OPEN


def _fail_trials(breaker: Breaker) -> bool:
    """Fail trials until the circuit reopens; what the last ``record_failure`` said."""
    for n in range(breaker.policy.trial_failures_to_reopen):
        assert breaker.allow().trial
        reopened = breaker.record_failure(trial=True)
        assert reopened is (n == breaker.policy.trial_failures_to_reopen - 1)
    return reopened


def test_five_consecutive_failures_open_the_circuit(
    breaker: Breaker, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """Four failures leave it closed; a fifth a second after the first opens it, and says so."""
    assert [breaker.record_failure() for _ in range(4)] == [False] * 4
    assert breaker.state() is CircuitState.CLOSED

    clock.advance(1.0)
    assert breaker.record_failure() is True

    assert circuit_state(conn, keys, now=clock()) is CircuitState.OPEN
    assert conn.hget(keys.write_circuit, "reason") == "consecutive_failures"


def test_a_burst_of_failures_shorter_than_a_second_does_not_open_the_circuit(
    breaker: Breaker, clock: FakeClock
) -> None:
    """A busy worker pool meets five failures in a row within milliseconds on a flaky Zep."""
    for _ in range(12):
        assert breaker.record_failure() is False
        clock.advance(0.05)
    assert breaker.state() is CircuitState.CLOSED
    # A success ends the run; the next run is timed from its own first failure.
    breaker.record_success()
    for _ in range(5):
        assert breaker.record_failure() is False
    clock.advance(0.99)
    assert breaker.record_failure() is False
    clock.advance(0.02)  # the run now spans 1.01 s
    assert breaker.record_failure() is True
    assert breaker.policy.min_calls > 19  # the run opened it, not the rate of 18 in 19


def test_a_success_breaks_the_run_of_failures(breaker: Breaker) -> None:
    """Four failures, a success, four failures: never five in a row, so still closed."""
    for _ in range(4):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state() is CircuitState.CLOSED


def test_half_of_the_floor_of_calls_failing_in_the_window_opens_the_circuit(
    breaker: Breaker, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """Success and failure alternate (no run at all); the call that makes the floor of
    calls (50) with half of them failed opens the circuit, not one before it."""
    pairs = breaker.policy.min_calls // 2
    opened = []
    for _ in range(pairs):
        breaker.record_success()
        clock.advance(0.5)
        opened.append(breaker.record_failure())
        clock.advance(0.5)
    assert opened == [False] * (pairs - 1) + [True]
    assert conn.hget(keys.write_circuit, "reason") == "failure_rate"


def test_failures_that_left_the_window_no_longer_count_toward_the_rate(
    breaker: Breaker, clock: FakeClock
) -> None:
    """49 calls, 24 failed; 30 s later one more failure would make 25 of 50, had they stayed."""
    for _ in range(breaker.policy.min_calls // 2 - 1):
        breaker.record_success()
        breaker.record_failure()
    breaker.record_success()

    clock.advance(30)

    assert breaker.record_failure() is False
    assert breaker.state() is CircuitState.CLOSED


def test_fewer_calls_than_the_floor_never_open_on_rate(breaker: Breaker) -> None:
    """Three failures out of four calls is 75 %, but a quiet deployment does not open on it."""
    for outcome in (False, True, True, True):
        breaker.record_failure() if outcome else breaker.record_success()
    assert breaker.state() is CircuitState.CLOSED


def test_a_closed_circuit_admits_every_call(breaker: Breaker) -> None:
    """Closed: allowed, not a trial, nothing to wait for."""
    admission = breaker.allow()
    assert (admission.allowed, admission.trial, admission.retry_at) == (True, False, None)
    assert admission.state is CircuitState.CLOSED


def test_an_open_circuit_admits_nothing_until_reopen_at(
    breaker: Breaker, clock: FakeClock
) -> None:
    """Every caller is told no, and when to come back: the moment it half-opens."""
    _open(breaker, clock)
    reopen_at = clock() + 30

    for _ in range(3):
        admission = breaker.allow()
        assert (admission.allowed, admission.retry_at) == (False, reopen_at)
        assert admission.state is CircuitState.OPEN
    clock.advance(29.9)
    assert breaker.allow().allowed is False

    clock.advance(0.1)
    assert breaker.state() is CircuitState.HALF_OPEN
    assert breaker.allow().trial is True


def test_half_open_admits_one_trial_and_turns_the_others_away_until_its_lease_ends(
    breaker: Breaker, clock: FakeClock
) -> None:
    """The first caller gets the trial; the rest are told to come back at the lease's end."""
    _open(breaker, clock)
    clock.advance(30)

    first = breaker.allow()
    others = [breaker.allow() for _ in range(3)]

    assert (first.allowed, first.trial) == (True, True)
    assert all(not a.allowed and not a.trial for a in others)
    assert {a.retry_at for a in others} == {clock() + 15}
    assert {a.state for a in others} == {CircuitState.HALF_OPEN}


def test_a_successful_trial_closes_the_circuit_and_resets_its_counters(
    breaker: Breaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """After the trial succeeds, it takes five new failures to open it again."""
    _open(breaker, clock)
    clock.advance(30)
    assert breaker.allow().trial

    with caplog.at_level(logging.INFO, logger="memory_worker"):
        assert breaker.record_success(trial=True) is True

    assert breaker.state() is CircuitState.CLOSED
    assert breaker.allow().allowed
    closed = [r for r in caplog.records if r.getMessage() == "memory_circuit_closed"]
    assert len(closed) == 1
    assert [breaker.record_failure() for _ in range(4)] == [False] * 4
    clock.advance(1.0)
    assert breaker.record_failure() is True


def test_a_failed_trial_reopens_for_twice_as_long_up_to_the_cap(
    breaker: Breaker, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """30 s, then 60, 120, 240, and never more than 300 s; a success resets it to 30."""
    _open(breaker, clock)
    holds = []
    for _ in range(6):
        reopen_at = float(conn.hget(keys.write_circuit, "reopen_at") or 0)
        holds.append(round(reopen_at - clock()))
        clock.now = reopen_at
        assert _fail_trials(breaker) is True
    assert holds == [30, 60, 120, 240, 300, 300]
    assert conn.hget(keys.write_circuit, "reason") == "trial_failed"

    clock.now = float(conn.hget(keys.write_circuit, "reopen_at") or 0)
    assert breaker.allow().trial and breaker.record_success(trial=True)
    _open(breaker, clock)
    assert breaker.allow().retry_at == clock() + 30


def test_a_failed_trial_short_of_three_hands_the_next_trial_to_the_next_caller(
    breaker: Breaker, clock: FakeClock
) -> None:
    """Two failed trials keep the circuit half-open with the lease free; a success closes it."""
    _open(breaker, clock)
    clock.advance(30)
    assert breaker.allow().trial
    assert breaker.allow().allowed is False  # one trial at a time
    assert breaker.record_failure(trial=True) is False
    assert breaker.state() is CircuitState.HALF_OPEN
    assert breaker.allow().trial  # at once, not after the 15 s lease
    assert breaker.record_failure(trial=True) is False
    assert breaker.allow().trial
    assert breaker.record_success(trial=True) is True
    assert breaker.state() is CircuitState.CLOSED
    # The failed trials of that half-open spell do not carry over to the next one.
    _open(breaker, clock)
    clock.advance(30)
    assert _fail_trials(breaker) is True


def test_a_degraded_zep_failing_a_third_of_calls_rarely_reopens_the_circuit(
    breaker: Breaker, clock: FakeClock
) -> None:
    """Over 300 half-open spells at a 1-in-3 trial failure rate, reopening stays near 1 in 27."""
    import random

    rng = random.Random(3)
    reopened = 0
    for _ in range(300):
        _open(breaker, clock)
        clock.advance(30)
        while breaker.state() is CircuitState.HALF_OPEN:
            assert breaker.allow().trial
            if rng.random() < 1 / 3:
                reopened += breaker.record_failure(trial=True)
            else:
                breaker.record_success(trial=True)
        if breaker.state() is CircuitState.OPEN:
            clock.advance(400)
            assert breaker.allow().trial and breaker.record_success(trial=True)
    # Expected 300/27 ≈ 11 (one trial alone: 100); binomial 5 sigma ≈ 16.
    assert reopened <= 11 + 16


def test_a_crashed_trials_lease_expires_so_another_worker_can_try(
    breaker: Breaker, clock: FakeClock
) -> None:
    """A trial that never reports back blocks the circuit for its lease, 15 s, no longer."""
    _open(breaker, clock)
    clock.advance(30)
    assert breaker.allow().trial  # ...and the worker dies

    clock.advance(14.9)
    assert breaker.allow().allowed is False
    clock.advance(0.1)
    assert breaker.allow().trial is True


def test_results_of_calls_admitted_before_the_opening_are_ignored(
    breaker: Breaker, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """Late non-trial results neither close an open circuit nor push its reopen_at."""
    _open(breaker, clock)
    reopen_at = conn.hget(keys.write_circuit, "reopen_at")

    assert breaker.record_success() is False
    assert breaker.record_failure() is False
    assert breaker.record_failure(trial=True) is False  # not half-open yet: not a trial's result

    assert breaker.state() is CircuitState.OPEN
    assert conn.hget(keys.write_circuit, "reopen_at") == reopen_at


def test_circuit_state_agrees_with_the_breaker_through_a_whole_cycle(
    breaker: Breaker, conn: redis.Redis, keys: Keys, clock: FakeClock
) -> None:
    """What `memory-worker status` reads is what the workers act on."""
    seen = [circuit_state(conn, keys, now=clock())]
    _open(breaker, clock)
    seen.append(circuit_state(conn, keys, now=clock()))
    clock.advance(30)
    seen.append(circuit_state(conn, keys, now=clock()))
    breaker.allow()
    breaker.record_success(trial=True)
    seen.append(circuit_state(conn, keys, now=clock()))
    assert seen == [CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN,
                    CircuitState.CLOSED]


def test_the_opens_counter_goes_up_by_exactly_one_per_opening(
    breaker: Breaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening on a run, then reopening after a failed trial: two openings, two counts, two logs."""
    before = _opens()
    with caplog.at_level(logging.INFO, logger="memory_worker"):
        for _ in range(8):
            breaker.record_failure()
            clock.advance(0.2)
        assert _opens() == before + 1
        clock.advance(30)
        _fail_trials(breaker)

    assert _opens() == before + 2
    opened = [r for r in caplog.records if r.getMessage() == "memory_circuit_opened"]
    assert [r.__dict__["event_fields"]["reason"] for r in opened] == [
        "consecutive_failures", "trial_failed"]


def test_the_policy_numbers_are_parameters(conn: redis.Redis, keys: Keys, clock: FakeClock
                                           ) -> None:
    """Two failures over no time at all, open 10 s: opens on the second, reopens after 10 s."""
    breaker = Breaker(conn, keys, clock=clock, policy=BreakerPolicy(
        failure_threshold=2, failure_run_seconds=0, open_seconds=10))
    breaker.record_failure()
    assert breaker.record_failure() is True
    assert breaker.allow().retry_at == clock() + 10


def _race(redis_url: str, conn: redis.Redis, now: float, action: str, metrics_dir: Path
          ) -> list[dict[str, bool]]:
    """Start the children, fire the gun once all are ready, collect what each did."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "MEMORY_LOG_FORMAT": "json"}
    children = [
        subprocess.Popen([sys.executable, "-m", "tests.proc_breaker_race", redis_url, repr(now),
                          action], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 60
        while int(conn.get(READY) or 0) < PROCESSES:
            assert time.monotonic() < deadline, "children did not get ready"
            assert all(c.poll() is None for c in children), "a child died before the gun"
            time.sleep(0.02)
        conn.rpush(GO, *["go"] * PROCESSES)
        outputs = [c.communicate(timeout=60) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
    assert all(c.returncode == 0 for c in children), [err for _, err in outputs]
    return [json.loads(out) for out, _ in outputs]


def _multiprocess_opens(metrics_dir: Path) -> float | None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    return registry.get_sample_value("memory_circuit_breaker_opens_total")


def test_half_open_admits_exactly_one_trial_across_eight_racing_processes(
    conn: redis.Redis, redis_url: str, breaker: Breaker, clock: FakeClock, tmp_path: Path
) -> None:
    """Eight workers ask at the same instant of a half-open circuit: one trial, seven waits."""
    _open(breaker, clock)
    clock.advance(30)

    admissions = _race(redis_url, conn, clock(), "allow", tmp_path)

    assert sum(a["trial"] for a in admissions) == 1
    assert sum(a["allowed"] for a in admissions) == 1


def test_eight_processes_failing_at_once_open_the_circuit_exactly_once(
    conn: redis.Redis, redis_url: str, keys: Keys, clock: FakeClock, tmp_path: Path
) -> None:
    """A run began a second ago; eight simultaneous failures cross five: one opening."""
    Breaker(conn, keys, clock=clock).record_failure()
    clock.advance(1.0)
    admissions = _race(redis_url, conn, clock(), "fail", tmp_path)

    assert sum(a["opened"] for a in admissions) == 1
    assert circuit_state(conn, keys, now=clock()) is CircuitState.OPEN
    assert _multiprocess_opens(tmp_path) == 1.0
