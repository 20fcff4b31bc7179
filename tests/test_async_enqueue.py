"""``aenqueue_message``: the write path for asyncio applications, never blocking the loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_worker import aenqueue_message, runtime
from memory_worker.config import Settings
from memory_worker.errors import InvalidMessage
from memory_worker.messages import message_uuid


class SlowBroker:
    """A publish that takes as long as the test says: a broker connect that hangs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sent: list[str] = []

    def __call__(self, task_id: str, kwargs: dict[str, Any]) -> None:
        self.entered.set()
        self.release.wait(10)
        self.sent.append(task_id)


@pytest.fixture
def slow_broker(settings: Settings, conn: redis.Redis, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> SlowBroker:
    broker = SlowBroker()
    monkeypatch.setattr(runtime, "_default", runtime._default)
    runtime.configure(dataclasses.replace(settings, spool_dir=str(tmp_path / "spool"))
                      ).send = broker
    return broker


def test_a_publish_that_hangs_does_not_stop_the_event_loop(slow_broker: SlowBroker) -> None:
    """While the broker hangs, other tasks of the loop keep running; then the result comes."""

    async def scenario() -> tuple[int, Any]:
        ticks = 0
        enqueue = asyncio.ensure_future(aenqueue_message("t-a", "user", "hello", "a-1"))
        # The loop runs other work while the enqueue is stuck in the broker...
        while not slow_broker.entered.is_set() or ticks < 20:
            await asyncio.sleep(0.001)
            ticks += 1
        assert not enqueue.done()
        slow_broker.release.set()  # ...and the enqueue completes once the broker answers.
        return ticks, await enqueue

    ticks, result = asyncio.run(scenario())
    assert ticks >= 20
    assert result.task_id == message_uuid("a-1") and not result.spooled
    assert slow_broker.sent == [message_uuid("a-1")]


def test_invalid_input_raises_from_the_await(slow_broker: SlowBroker) -> None:
    """InvalidMessage names the field, as from enqueue_message; nothing is published."""
    slow_broker.release.set()
    with pytest.raises(InvalidMessage) as info:
        asyncio.run(aenqueue_message("..", "user", "hello", "a-2"))
    assert info.value.field == "thread_id" and slow_broker.sent == []


def test_a_repeated_client_msg_id_is_a_duplicate(slow_broker: SlowBroker) -> None:
    """The same dedupe as the synchronous call."""
    slow_broker.release.set()

    async def twice() -> list[bool]:
        first = await aenqueue_message("t-a", "user", "hello", "a-3")
        second = await aenqueue_message("t-a", "user", "hello", "a-3")
        return [first.duplicate, second.duplicate]

    assert asyncio.run(twice()) == [False, True]
