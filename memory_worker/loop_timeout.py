"""A timeout on a server's answer that an event loop's own stalls do not spend.

A socket timeout on an event loop measures the loop as much as the server: when the
loop is busy elsewhere (a crowd of reads parsing their responses, a handler using the
CPU, the collector), a reply that arrived in time waits unread in the socket, and a
timer that fires after the stall cancels the read that would have found it. On a
loop running a thousand reads, that blamed a healthy Redis several times a second.

``LoopTimeout`` gives the server ``seconds`` of the loop's attention. Its timer, when it
fires late (the loop was away), looks again a moment later instead of cancelling; when
it fires on time, it cancels only after the callbacks already due, so a reply that came
in the same pass of the loop is read first. It gives up after ``ceiling`` seconds in
all, however busy the loop, and then raises ``redis.TimeoutError`` in the task.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import redis

# A timer this late says the loop was away: what arrived meanwhile has not been read.
LATE_S = 0.005


class LoopTimeout:
    """``async with LoopTimeout(0.05, ceiling=0.25):`` around the awaits of one exchange
    with the server. Nests with ``asyncio.timeout`` (the cancellations are counted as
    the standard library's own timeout counts them)."""

    __slots__ = ("_cancelling", "_ceiling", "_due", "_expired", "_handle", "_loop",
                 "_seconds", "_started", "_task")

    def __init__(self, seconds: float, *, ceiling: float) -> None:
        if not 0 < seconds <= ceiling:
            raise ValueError(f"a timeout of {seconds} s needs 0 < seconds <= ceiling "
                             f"({ceiling} s)")
        self._seconds = seconds
        self._ceiling = ceiling
        self._expired = False

    async def __aenter__(self) -> LoopTimeout:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("LoopTimeout must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._started = self._loop.time()
        self._arm(self._started + self._seconds)
        return self

    def _arm(self, due: float) -> None:
        self._due = due
        self._handle: asyncio.Handle = self._loop.call_at(due, self._on_time)

    def _on_time(self) -> None:
        now = self._loop.time()
        if now - self._due > LATE_S and now + LATE_S - self._started < self._ceiling:
            self._arm(now + LATE_S)  # the loop was away: let it read what came meanwhile
        else:  # after the callbacks of this pass: a reply that came in it wakes its reader
            self._handle = self._loop.call_soon(self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._handle.cancel()
        if (self._expired and self._task.uncancel() <= self._cancelling
                and exc_type is asyncio.CancelledError):
            raise redis.TimeoutError(
                f"no answer within {self._seconds * 1000:.0f} ms of the event loop's "
                f"time") from exc
