"""How long a thread was held off the CPU by others, measured while it ran.

SPEC §5's budget bounds what a read does: every wait in it ends by its
deadline. It cannot bound how long the kernel leaves a runnable thread without
a CPU, nor a pause of the interpreter's cyclic garbage collector, which stops
every thread of the process. On a 2-core machine that also runs the broker,
Redis, the simulator and a pool of workers, either can last tens of
milliseconds and land inside any read. Tests under such load therefore time a
read twice: on the wall clock (reported) and less what was measured, for that
read, of

* the thread's run-queue wait (Linux ``/proc/thread-self/schedstat``, second
  field: time runnable but not running), and
* the collector's pauses in this process that overlap the read;

and hold the second to the budget. Neither can hide a read that waits too
long for a socket, a lock or Redis: a thread blocked in a wait is not on the
run queue. (A pause of the collector in which this thread was also preempted
counts in both; the sum is capped at the wall time.)
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

_SCHEDSTAT = "/proc/thread-self/schedstat"


def run_queue_seconds() -> float:
    """The calling thread's total run-queue wait so far; 0.0 where the kernel keeps none."""
    try:
        with open(_SCHEDSTAT, "rb") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class CollectorPauses:
    """The cyclic garbage collector's pauses in this process, as ``perf_counter`` spans."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._began = 0.0
        self._pauses: list[tuple[float, float]] = []

    def start(self) -> CollectorPauses:
        gc.callbacks.append(self._noted)
        return self

    def stop(self) -> None:
        """Stop noting pauses; a second call does nothing."""
        if self._noted in gc.callbacks:
            gc.callbacks.remove(self._noted)

    def _noted(self, phase: str, info: dict[str, Any]) -> None:
        # One collection runs at a time: "start" and "stop" alternate.
        if phase == "start":
            self._began = time.perf_counter()
        else:
            with self._lock:
                self._pauses.append((self._began, time.perf_counter()))

    def within(self, begin: float, end: float) -> float:
        """Seconds of pause between ``begin`` and ``end``.

        Pauses are noted in time order: the scan runs back from the newest and
        stops at the first that ended before ``begin``, so a long run's history
        is not read again for each read."""
        total = 0.0
        with self._lock:
            for start, stop in reversed(self._pauses):
                if stop <= begin:
                    break
                total += max(0.0, min(end, stop) - max(begin, start))
        return total


def timed(pauses: CollectorPauses, call: Callable[[], Any]) -> tuple[Any, float, float]:
    """``call()``'s value, its wall seconds and the seconds others held its thread off."""
    queued, begin = run_queue_seconds(), time.perf_counter()
    value = call()
    end = time.perf_counter()
    wall = end - begin
    held = (run_queue_seconds() - queued) + pauses.within(begin, end)
    return value, wall, min(held, wall)
