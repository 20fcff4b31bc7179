"""The stall measure the load tests subtract from a read's time (``tests/stalls.py``)."""

from __future__ import annotations

import gc
import threading
import time

from tests.stalls import CollectorPauses, run_queue_seconds, timed


def test_pause_overlap_counts_only_the_part_inside_the_window() -> None:
    pauses = CollectorPauses()
    pauses._pauses = [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]
    assert pauses.within(3.5, 5.5) == 1.0  # half of the second, half of the third
    assert pauses.within(0.0, 10.0) == 3.0
    assert pauses.within(6.0, 9.0) == 0.0
    assert pauses.within(2.5, 2.9) == 0.0


def test_a_collection_inside_the_call_is_held_time_and_capped_at_the_wall() -> None:
    garbage: list[list[object]] = [[] for _ in range(200_000)]
    for item in garbage:  # cycles, so that the collection has work to do
        item.append(item)

    def collect() -> int:
        return gc.collect()

    with_pauses = CollectorPauses().start()
    try:
        found, wall, held = timed(with_pauses, collect)
    finally:
        with_pauses.stop()
        with_pauses.stop()  # a second stop does nothing
    assert found == 0 and wall > 0  # nothing unreachable yet: still referenced
    assert 0 < held <= wall
    del garbage


def test_a_blocked_wait_is_not_held_time() -> None:
    """A thread waiting on an event is off the run queue: its wait stays the read's own."""
    pauses = CollectorPauses()
    event = threading.Event()
    _, wall, held = timed(pauses, lambda: event.wait(0.2))
    assert wall >= 0.2
    assert held < wall / 2


def test_the_run_queue_total_never_goes_back() -> None:
    first = run_queue_seconds()
    deadline = time.perf_counter() + 0.05
    while time.perf_counter() < deadline:
        pass
    assert run_queue_seconds() >= first
