"""Many reads at once in one process: the async MGETs pipelined, the sync hot path shared."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import redis
import redis.asyncio as aredis

from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.runtime import Runtime
from memory_worker.zep_sim import ZepSimulator


def test_concurrent_async_reads_share_round_trips_and_each_gets_its_own_answer(
    read_settings: Settings, sim: ZepSimulator, conn: redis.Redis, keys: Keys
) -> None:
    """300 afetch calls at once: one pipeline carries their MGETs; each gets its own reply."""
    runtime = Runtime(read_settings)
    for i in range(300):
        conn.set(keys.context(f"c-{i}", "facts"), json.dumps({"context": {"facts": [f"f{i}"]}}))

    async def scenario() -> tuple[list[Any], int]:
        results = await asyncio.gather(*(runtime.afetch(f"c-{i}", "facts") for i in range(300)))
        client = runtime._async_redis().conn
        assert isinstance(client, aredis.Redis)  # one server: one pool
        pool = client.connection_pool
        return list(results), len(pool._available_connections) + len(pool._in_use_connections)

    results, connections = asyncio.run(scenario())
    assert [context for context, _ in results] == [{"facts": [f"f{i}"]} for i in range(300)]
    assert all(meta["cached"] is True and meta["source"] == "zep" for _, meta in results)
    assert connections <= 2
    assert sim.requests() == []


def test_concurrent_async_reads_fail_open_together_when_redis_fails(
    read_settings: Settings, sim: ZepSimulator
) -> None:
    """A pipelined MGET that fails fails every read in it open: each goes on to Zep."""
    runtime = Runtime(dataclasses.replace(
        read_settings, redis_url="redis://127.0.0.1:1/0", read_timeout_ms=5000,
        disable_auto_downgrade=True))  # a slow machine's timeouts must not block the reads
    sim.seed("down", summary="s")

    async def scenario() -> list[Any]:
        return list(await asyncio.gather(*(runtime.afetch("down", "summary")
                                           for _ in range(20))))

    results = asyncio.run(scenario())
    assert [meta["source"] for _, meta in results] == ["zep"] * 20
    assert all(meta["cached"] is False for _, meta in results)
