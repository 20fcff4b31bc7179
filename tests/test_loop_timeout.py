"""LoopTimeout: a timeout on a server's answer that the event loop's own stalls do not
spend, on futures (the timing rules) and on a real Redis (a reply read after a stall)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from memory_worker.loop_timeout import LoopTimeout
from tests.processes import silent_redis


def _run(body: Any) -> Any:
    return asyncio.run(body())


def test_an_answer_that_came_during_a_stall_of_the_loop_is_read_not_timed_out() -> None:
    """The answer comes 10 ms in, while the loop is away for 120 ms: the timer, due at
    50 ms, fires late and looks again instead of cancelling. A plain ``asyncio.timeout``
    in the same place cancels the read that had its answer waiting."""
    async def wait(timeout: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.01, answer.set_result, "answer")
        loop.call_soon(time.sleep, 0.12)  # the loop is away
        async with timeout():
            return await answer

    assert _run(lambda: wait(lambda: LoopTimeout(0.05, ceiling=0.5))) == "answer"
    with pytest.raises(TimeoutError):
        _run(lambda: wait(lambda: asyncio.timeout(0.05)))


def test_an_answer_that_came_in_the_same_pass_as_the_timer_is_read() -> None:
    """The answer (due at 49 ms) and the timer (at 50 ms) both come due in the pass
    after a 52 ms stall, the timer on time: it cancels only after the callbacks already
    due, so the waiting task gets its answer first."""
    async def wait() -> str:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.049, answer.set_result, "answer")
        loop.call_soon(time.sleep, 0.052)
        async with LoopTimeout(0.05, ceiling=0.5):
            return await answer

    assert _run(wait) == "answer"


def test_no_answer_on_an_attentive_loop_times_out_after_its_seconds() -> None:
    async def wait() -> float:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError, match="no answer within 40 ms"):
            async with LoopTimeout(0.04, ceiling=0.5):
                await asyncio.get_running_loop().create_future()
        return time.monotonic() - started

    assert 0.04 <= _run(wait) < 0.5


def test_a_loop_that_stays_away_reaches_the_ceiling() -> None:
    """Every pass of the loop takes 30 ms, so every look is late; without an answer the
    timeout still ends, at its ceiling."""
    async def wait() -> float:
        loop = asyncio.get_running_loop()
        busy = True

        def hog() -> None:
            time.sleep(0.03)
            if busy:
                loop.call_soon(hog)

        loop.call_soon(hog)
        started = time.monotonic()
        try:
            with pytest.raises(redis.TimeoutError):
                async with LoopTimeout(0.02, ceiling=0.2):
                    await loop.create_future()
        finally:
            busy = False
        return time.monotonic() - started

    assert 0.2 <= _run(wait) < 0.5


def test_an_outer_timeout_that_ends_first_is_its_own_and_the_task_is_not_left_cancelled(
) -> None:
    """Nested in ``asyncio.timeout``: the shorter outer timeout raises the standard
    ``TimeoutError``; the inner one expiring inside a longer outer one raises
    ``redis.TimeoutError``; either way the task goes on uncancelled."""
    async def wait(outer_s: float, inner_s: float) -> tuple[type[BaseException], int]:
        try:
            async with asyncio.timeout(outer_s):
                async with LoopTimeout(inner_s, ceiling=1.0):
                    await asyncio.get_running_loop().create_future()
        except (TimeoutError, redis.TimeoutError) as exc:
            task = asyncio.current_task()
            assert task is not None
            return type(exc), task.cancelling()
        raise AssertionError("no timeout")

    assert _run(lambda: wait(0.01, 0.2)) == (TimeoutError, 0)
    assert _run(lambda: wait(1.0, 0.01)) == (redis.TimeoutError, 0)


def test_a_cancellation_from_elsewhere_goes_through_as_a_cancellation() -> None:
    async def wait() -> None:
        async with LoopTimeout(0.5, ceiling=1.0):
            await asyncio.get_running_loop().create_future()

    async def scenario() -> None:
        task = asyncio.ensure_future(wait())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    _run(scenario)


@pytest.mark.parametrize("seconds, ceiling", [(0.0, 1.0), (0.5, 0.1), (-1.0, 1.0)])
def test_a_timeout_outside_zero_to_its_ceiling_is_refused(seconds: float,
                                                           ceiling: float) -> None:
    with pytest.raises(ValueError, match="0 < seconds <= ceiling"):
        LoopTimeout(seconds, ceiling=ceiling)


def test_a_redis_reply_that_arrives_while_the_loop_is_stalled_is_read(redis_url: str) -> None:
    """On a real Redis: the loop stalls for 150 ms right after the command is sent, so
    the reply waits unread in the socket past the 50 ms; it is read, not timed out."""
    async def scenario() -> Any:
        loop = asyncio.get_running_loop()
        client = aredis.Redis.from_url(redis_url, socket_timeout=1.0)
        try:
            await client.ping()  # connected beforehand: the stall meets the reply only
            send: Callable[..., Awaitable[Any]] = client.execute_command

            async def stalled_after_sending(*args: Any, **options: Any) -> Any:
                loop.call_soon(time.sleep, 0.15)  # runs once this task waits for the reply
                return await send(*args, **options)

            client.execute_command = stalled_after_sending  # type: ignore[method-assign]
            async with LoopTimeout(0.05, ceiling=0.5):
                return await client.echo("still here")
        finally:
            await client.aclose()

    assert _run(scenario) == b"still here"


def test_a_redis_that_never_answers_times_out_within_the_ceiling() -> None:
    async def scenario(url: str) -> float:
        client = aredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        started = time.monotonic()
        try:
            with pytest.raises(redis.TimeoutError):
                async with LoopTimeout(0.05, ceiling=0.5):
                    await client.ping()
        finally:
            await client.aclose()
        return time.monotonic() - started

    with silent_redis() as url:
        assert 0.05 <= asyncio.run(scenario(url)) < 0.5
