"""Many reads at once in one process: the async Redis steps pipelined, the sync hot path
shared, and a loop's crowd of reads kept within the budget."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from prometheus_client import REGISTRY

from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.reader import RunGuard, ZepRead
from memory_worker.runtime import Runtime
from memory_worker.zep import Failure, Reason
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.processes import silent_redis


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


def test_concurrent_async_failures_are_each_recorded_in_pipelines_after_a_script_flush(
    read_settings: Settings, sim: ZepSimulator, conn: redis.Redis, keys: Keys
) -> None:
    """200 reads failing at once (Zep answers 500): each failure reaches the guard, their
    scripts going out in pipelines on a couple of connections, and Redis having lost
    its scripts (a restart, a flush) costs a reload, not the failures."""
    runtime = Runtime(dataclasses.replace(read_settings, disable_auto_downgrade=True,
                                          read_timeout_ms=10_000))
    sim.add_fault(Fault(method="GET", path="*/memory", status=500))
    conn.script_flush()

    async def scenario() -> tuple[list[Any], int]:
        results = await asyncio.gather(*(runtime.afetch(f"f-{i}", "summary")
                                         for i in range(200)))
        client = runtime._async_redis().conn
        assert isinstance(client, aredis.Redis)
        pool = client.connection_pool
        return list(results), len(pool._available_connections) + len(pool._in_use_connections)

    results, connections = asyncio.run(scenario())
    assert {(meta["source"], meta["reason"]) for _, meta in results} == {("error",
                                                                          "server_error")}
    assert int(conn.get(keys.consecutive_failures) or 0) == 200
    assert connections <= 20  # a pipeline per pass of the loop, not a connection per read
    assert runtime._redis_down_until == 0.0


def test_a_sync_read_after_a_script_flush_still_caches_and_counts_its_failure(
    read_settings: Settings, sim: ZepSimulator, conn: redis.Redis, keys: Keys
) -> None:
    """Redis having lost its scripts costs a synchronous read's step an ``EVAL``, not the
    step: the success is cached, the failure counted, and Redis is not blamed."""
    runtime = Runtime(read_settings)
    sim.seed("ok", summary="s")
    conn.script_flush()
    assert runtime.fetch("ok", "summary")[1]["cached"] is False
    assert runtime.fetch("ok", "summary")[1]["cached"] is True
    sim.add_fault(Fault(method="GET", path="*/memory", status=500))
    conn.script_flush()
    assert runtime.fetch("bad", "summary")[1]["reason"] == "server_error"
    assert conn.get(keys.consecutive_failures) == "1"
    assert runtime._redis_down_until == 0.0


@pytest.mark.parametrize("budget_s, blamed", [(0.01, False), (0.2, True)],
                         ids=["cut-by-the-budget", "whole-socket-timeout"])
@pytest.mark.parametrize("side", ["sync", "async"])
def test_only_a_redis_step_that_had_its_whole_timeout_takes_the_process_off_redis(
    read_settings: Settings, side: str, budget_s: float, blamed: bool
) -> None:
    """A step after the Zep call that ran out of the read's budget (10 ms left) says
    nothing about Redis; one that waited its full 50 ms socket timeout does."""
    with silent_redis() as url:
        runtime = Runtime(dataclasses.replace(read_settings, redis_url=url))
        assert perform(runtime, RunGuard(runtime.guard.failure_call(), budget_s), side) is None
        assert (runtime._redis_down_until > 0) is blamed


def perform(runtime: Runtime, step: Any, side: str) -> Any:
    """``step`` performed as a synchronous read performs it, or on an event loop."""
    if side == "sync":
        return runtime._perform(step)

    async def scenario() -> Any:
        return await runtime._aperform(step, runtime._async_redis())

    return asyncio.run(scenario())


@pytest.mark.parametrize("side", ["sync", "async"])
def test_a_lost_after_read_script_carrying_the_guards_count_is_the_guards_redis_error(
    read_settings: Settings, side: str
) -> None:
    """A failed read's one script is its negative entry and its failure count: when Redis
    does not answer it, ``memory_redis_errors_total`` counts it under ``op="guard"``."""
    def errors(op: str) -> float:
        return REGISTRY.get_sample_value("memory_redis_errors_total", {"op": op}) or 0.0

    with silent_redis() as url:
        runtime = Runtime(dataclasses.replace(read_settings, redis_url=url))
        policy = runtime.policy
        step = policy._after_read("ctx", "", 60, 0.01, policy.perf() + 0.2, success=False,
                                  guard=runtime.guard.failure_call())
        before = {op: errors(op) for op in ("guard", "cache")}
        assert perform(runtime, step, side) is None
        assert errors("guard") == before["guard"] + 1
        assert errors("cache") == before["cache"]


def test_an_async_zep_call_ends_early_by_what_the_loop_needs_to_wind_up_the_others(
    read_settings: Settings,
) -> None:
    """A read alone gets its whole remaining budget; beside 100 others 10 ms less; beside
    any number at most a fifth of the read budget less; with nothing left it fails
    without calling Zep."""
    budgets: list[float] = []

    class Recording:
        async def aget_memory(self, thread_id: str, lastn: int, budget: float,
                              view: str | None = None) -> Failure:
            budgets.append(budget)
            return Failure(Reason.TIMEOUT)

    runtime = Runtime(read_settings, zep=Recording())  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        state = runtime._async_redis()
        outcomes = []
        for others, budget in ((0, 0.2), (100, 0.2), (5000, 0.2), (100, 0.011)):
            state.reads = others + 1
            outcomes.append(await runtime._aread_zep(ZepRead("t", 4, budget, "summary"), state))
        return outcomes

    outcomes = asyncio.run(scenario())
    assert read_settings.read_timeout_ms == 250
    assert budgets == pytest.approx([0.2, 0.19, 0.15])
    assert all(isinstance(o, Failure) and o.reason is Reason.TIMEOUT for o in outcomes)
