"""The FastAPI example over httpx's ASGI transport: real Redis, a real worker, the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from examples.chat_turn import reply_id
from examples.fastapi_chat import create_app
from memory_worker import runtime
from memory_worker.celery_app import WRITE_QUEUE, sender
from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.zep_sim import ZepSimulator
from tests.processes import (
    accepted_adds,
    celery_process,
    deliveries_settled,
    wait_for,
    worker_args,
)

Send = Callable[[str, dict[str, Any]], None]


@pytest.fixture
def app_settings(read_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(read_settings, spool_dir=str(tmp_path / "spool"))


@pytest.fixture
def publishing(app_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Send:
    """The test Redis as broker (the library's Celery app may hold an earlier test's)."""
    return sender(app_settings)


@pytest.fixture
def app(app_settings: Settings, conn: redis.Redis, publishing: Send,
        monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setattr(runtime, "_default", runtime._default)  # restored after the test
    return create_app(app_settings)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def post_chat(http: httpx.AsyncClient, body: object) -> tuple[int, dict[str, Any]]:
    response = await http.post("/api/chat/", content=json.dumps(body),
                               headers={"Content-Type": "application/json"})
    return response.status_code, response.json()


def test_a_chat_turn_is_stored_once_redacted_and_read_back_on_the_next_turn(
    app: FastAPI, env: dict[str, str], conn: redis.Redis, sim: ZepSimulator, tmp_path: Path
) -> None:
    """The message and the reply land in Zep once each, PII gone; turn two sees them."""

    async def first_turn() -> tuple[int, dict[str, Any]]:
        async with client(app) as http:
            return await post_chat(http, {
                "message": "Mail deniz@example.com.tr or call 0533 123 45 67",
                "thread_id": "fa-thread", "client_msg_id": "fa-1"})

    async def second_turn() -> tuple[int, dict[str, Any]]:
        async with client(app) as http:
            return await post_chat(http, {"message": "in Girne", "thread_id": "fa-thread"})

    with celery_process(worker_args("fastapi"), env, tmp_path / "worker.log"):
        status, first = asyncio.run(first_turn())
        assert status == 200, first
        assert first["trace"]["memory"]["used"] is False  # a new thread: nothing to read yet
        assert first["trace"]["writes"]["user"]["redactions"] == {"email": 1, "phone": 1,
                                                                  "address": 0}
        wait_for(lambda: len(sim.messages("fa-thread")) == 2, 30, "both messages in Zep")
        wait_for(lambda: deliveries_settled(conn, Keys()), 30, "every copy accounted for")
    assert accepted_adds(sim, "fa-1") == 1 and accepted_adds(sim, reply_id("fa-1")) == 1
    stored = [m["content"] for m in sim.messages("fa-thread")]
    assert stored[0] == "Mail [EMAIL] or call [PHONE]"

    # The first read's miss is negative-cached; drop it, as `memory-worker invalidate` does.
    conn.delete(*(f"mem:ctx:fa-thread:{view}" for view in ("summary", "recent", "facts")))
    status, second = asyncio.run(second_turn())
    memory = second["trace"]["memory"]
    assert status == 200 and (memory["used"], memory["source"]) == (True, "zep")
    assert second["reply"] == "Noted. I can see 2 recent message(s) of this conversation."


def test_an_enqueue_stuck_on_the_broker_does_not_block_the_event_loop(
    app: FastAPI, app_settings: Settings, env: dict[str, str], conn: redis.Redis,
    sim: ZepSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a chat request waits for a broker that hangs, a heartbeat ticks and a metrics
    request is answered; released, the request completes and the worker stores its writes.

    Only the event loop releases the broker: were the loop blocked by the enqueue, the
    broker would wait out its patience and say so."""
    hanging = HangingBroker(sender(app_settings))
    monkeypatch.setattr(runtime.default_runtime(), "send", hanging)

    async def scenario() -> tuple[int, int, httpx.Response]:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        async with client(app) as http:
            beating = asyncio.create_task(heartbeat())
            chat = asyncio.create_task(post_chat(http, {
                "message": "hello", "thread_id": "fa-slow", "client_msg_id": "slow-1"}))
            while not hanging.entered.is_set():  # the enqueue reaches the broker, hangs there
                await asyncio.sleep(0.005)
            ticks_before = ticks
            metrics = await http.get("/api/metrics/")
            while ticks < ticks_before + 20:
                await asyncio.sleep(0.001)
            assert not chat.done()  # still waiting on the broker, yet the loop went on
            hanging.release.set()
            status, _ = await chat
            beating.cancel()
            return status, ticks - ticks_before, metrics

    with celery_process(worker_args("fastapi-slow"), env, tmp_path / "worker.log"):
        status, ticked, metrics = asyncio.run(scenario())
        assert not hanging.gave_up, "the event loop stood still while the broker hung"
        assert status == 200 and ticked >= 20
        assert metrics.status_code == 200 and "memory_zep_" in metrics.text
        wait_for(lambda: len(sim.messages("fa-slow")) == 2, 30, "both messages in Zep")


class HangingBroker:
    """The first publish hangs until the test releases it (or gives up, after a while)."""

    PATIENCE_S = 15.0

    def __init__(self, send: Send) -> None:
        self.send = send
        self.entered, self.release = threading.Event(), threading.Event()
        self.gave_up = False

    def __call__(self, task_id: str, kwargs: dict[str, Any]) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.gave_up = not self.release.wait(self.PATIENCE_S)
        self.send(task_id, kwargs)


@pytest.mark.parametrize(("body", "kind", "field"), [
    ({"thread_id": "t"}, "InvalidMessage", "message"),
    ({"message": 42, "thread_id": "t"}, "InvalidMessage", "message"),
    ({"message": "hi"}, "InvalidRequest", "thread_id"),
    ({"message": "hi", "thread_id": "bad/thread"}, "InvalidRequest", "thread_id"),
    ({"message": "hi", "thread_id": "t", "client_msg_id": "has space"},
     "InvalidMessage", "client_msg_id"),
    (["not", "an", "object"], "InvalidRequest", "body"),
])
def test_bad_input_is_a_400_naming_the_field_and_publishes_nothing(
    app: FastAPI, conn: redis.Redis, body: object, kind: str, field: str
) -> None:
    async def send() -> tuple[int, dict[str, Any]]:
        async with client(app) as http:
            return await post_chat(http, body)

    status, answer = asyncio.run(send())
    assert status == 400
    assert (answer["error"]["type"], answer["error"]["field"]) == (kind, field)
    assert conn.llen(WRITE_QUEUE) == 0


def test_a_retried_request_publishes_nothing_twice(app: FastAPI, conn: redis.Redis) -> None:
    async def twice() -> dict[str, Any]:
        async with client(app) as http:
            body = {"message": "hello", "thread_id": "fa-retry", "client_msg_id": "fa-r"}
            await post_chat(http, body)
            return (await post_chat(http, body))[1]

    writes = asyncio.run(twice())["trace"]["writes"]
    assert writes["user"]["duplicate"] and writes["assistant"]["duplicate"]
    assert conn.llen(WRITE_QUEUE) == 2


def test_the_mounted_metrics_helper_serves_the_memory_metrics_and_the_live_mode(
    app: FastAPI, conn: redis.Redis
) -> None:
    async def scrape() -> tuple[httpx.Response, httpx.Response]:
        async with client(app) as http:
            await post_chat(http, {"message": "hello", "thread_id": "fa-metrics"})
            return (await http.get("/api/metrics/"),
                    await http.get("/api/metrics", follow_redirects=True))

    metrics, unslashed = asyncio.run(scrape())
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'memory_mode_gauge{mode="read_write"} 1.0' in metrics.text
    assert "memory_zep_context_requests_total" in metrics.text
    assert "memory_write_dlq_size 0.0" in metrics.text
    assert unslashed.status_code == 200 and "memory_mode_gauge" in unslashed.text
