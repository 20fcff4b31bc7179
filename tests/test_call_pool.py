"""The threads under synchronous Zep calls (``zep_http.CallPool``): bounded, deadline-bound."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from memory_worker.zep_http import Call, CallPool

TAG: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")


def soon(seconds: float = 5.0) -> Call:
    return Call(time.monotonic() + seconds)


def test_a_call_returns_its_value_and_raises_its_error_in_the_caller() -> None:
    pool = CallPool(2, "t")

    def fails() -> None:
        raise ValueError("from the call")

    assert pool.run(soon(), lambda: 41 + 1) == 42
    with pytest.raises(ValueError, match="from the call"):
        pool.run(soon(), fails)
    pool.close()


def test_the_caller_s_context_reaches_the_call_and_the_call_s_does_not_come_back() -> None:
    pool = CallPool(1, "t")
    TAG.set("caller")

    def read_and_set() -> str:
        seen = TAG.get()
        TAG.set("call")
        return seen

    assert pool.run(soon(), read_and_set) == "caller"
    assert TAG.get() == "caller"
    pool.close()


def test_no_more_threads_than_its_size_run_calls_at_once() -> None:
    pool = CallPool(3, "bounded")
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def call() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(5)
        with lock:
            running -= 1

    callers = [threading.Thread(target=pool.run, args=(soon(), call)) for _ in range(8)]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 5
    while most < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # a fourth thread, were there one, would be running by now
    assert most == 3
    release.set()
    for caller in callers:
        caller.join(5)
    assert most == 3
    assert sum(t.name.startswith("bounded_") for t in threading.enumerate()) == 3
    pool.close()


def test_the_caller_stops_waiting_at_the_deadline_and_a_queued_call_past_it_never_runs() -> None:
    pool = CallPool(1, "t")
    release = threading.Event()
    ran: list[str] = []
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        pool.run(Call(started + 0.2), lambda: release.wait(5))  # holds the only thread
    assert time.monotonic() - started < 1.0
    with pytest.raises(TimeoutError):  # queued behind it, past its deadline when it starts
        pool.run(Call(time.monotonic() + 0.1), lambda: ran.append("late"))
    release.set()
    assert pool.run(soon(), lambda: "next") == "next"  # the thread is free again
    assert ran == []
    pool.close()
