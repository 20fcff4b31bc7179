"""The read path under stress: budgets, other processes, Redis down, the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.runtime import Runtime
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.conftest import FakeClock

MEMORY = "*/sessions/*/memory"
ROOT = Path(__file__).resolve().parent.parent
SLACK_S = 0.025  # SPEC §5: a read returns within MEMORY_READ_TIMEOUT_MS + 25 ms


@pytest.fixture
def runtime(read_settings: Settings, clock: FakeClock, conn: redis.Redis) -> Iterator[Runtime]:
    rt = Runtime(read_settings, clock=clock)
    yield rt
    rt.zep.close()


BAD_SERVERS = {
    "stall": Fault(method="GET", path=MEMORY, latency_ms=3000),
    "trickle": Fault(method="GET", path=MEMORY, trickle_bytes=1, trickle_interval_ms=40),
    "slow_headers_then_trickle": Fault(method="GET", path=MEMORY, latency_ms=200,
                                       trickle_bytes=2, trickle_interval_ms=30),
}


@pytest.mark.parametrize("behaviour", sorted(BAD_SERVERS))
def test_sync_reads_return_within_budget_whatever_the_server_does(
    runtime: Runtime, sim: ZepSimulator, behaviour: str
) -> None:
    """Against a stalled or trickling server the call returns within 250 ms + 25 ms."""
    sim.seed("slow", summary="x" * 400)
    sim.add_fault(BAD_SERVERS[behaviour])
    budget = runtime.settings.read_timeout_ms / 1000
    for thread in ("slow", "slow"):  # the second read is a negative-cache hit
        started = time.perf_counter()
        context, meta = runtime.fetch(thread, "summary")
        elapsed = time.perf_counter() - started
        assert context is None
        assert elapsed <= budget + SLACK_S, f"{behaviour}: {elapsed * 1000:.0f} ms"
    assert meta["reason"] == "timeout"


@pytest.mark.parametrize("behaviour", sorted(BAD_SERVERS))
def test_async_reads_return_within_budget_and_never_block_the_loop(
    runtime: Runtime, sim: ZepSimulator, behaviour: str
) -> None:
    """The async read keeps its budget, and a ticker on the same loop keeps ticking."""
    sim.seed("slow", summary="x" * 400)
    sim.add_fault(BAD_SERVERS[behaviour])
    budget = runtime.settings.read_timeout_ms / 1000

    async def scenario() -> tuple[float, float]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        context, meta = await runtime.afetch("slow", "summary")
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        assert context is None and meta["reason"] == "timeout"
        return elapsed, max(gaps)

    elapsed, worst_gap = asyncio.run(scenario())
    assert elapsed <= budget + SLACK_S, f"{behaviour}: {elapsed * 1000:.0f} ms"
    assert worst_gap < budget / 2, f"the loop stalled {worst_gap * 1000:.0f} ms"


def test_async_read_gives_the_same_answers_as_the_sync_one(
    runtime: Runtime, sim: ZepSimulator
) -> None:
    """Success, cache hit and forced block through afetch_thread_context's path."""
    sim.seed("a1", summary="hello", facts=["f"])

    async def scenario() -> list[dict[str, object]]:
        first = await runtime.afetch("a1", "facts")
        second = await runtime.afetch("a1", "facts")
        return [first[1], second[1]]

    first, second = asyncio.run(scenario())
    assert first["source"] == "zep" and first["cached"] is False
    assert second["source"] == "zep" and second["cached"] is True


def test_three_failures_from_three_processes_make_one_downgrade(
    conn: redis.Redis, redis_url: str, sim: ZepSimulator, keys: Keys
) -> None:
    """Three processes, one 5xx each, inside the window: exactly one forced record."""
    sim.add_fault(Fault(method="GET", path=MEMORY, status=503))
    children = [
        subprocess.Popen([sys.executable, "-m", "tests.proc_read_once", redis_url, sim.url,
                          f"proc-{i}"], cwd=ROOT, env={**os.environ, "MEMORY_LOG_FORMAT": "json"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    deadline = time.monotonic() + 60
    while int(conn.get("test:read:ready") or 0) < 3:
        assert time.monotonic() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.02)
    conn.rpush("test:read:go", "go", "go", "go")
    outputs = [c.communicate(timeout=60) for c in children]
    metas = [json.loads(out) for out, _ in outputs]
    assert all(m["reason"] == "server_error" for m in metas)
    forced_lines = [line for _, err in outputs for line in err.splitlines()
                    if '"memory_mode_forced"' in line]
    assert len(forced_lines) == 1
    assert json.loads(conn.get(keys.forced) or "")["reason"] == "consecutive_failures"
    assert len(sim.requests("GET", MEMORY)) == 3


def test_with_redis_down_reads_go_on_and_the_process_guard_still_downgrades(
    read_settings: Settings, sim: ZepSimulator
) -> None:
    """Redis unreachable: reads reach Zep without a cache; 3 failures force locally."""
    settings = dataclasses.replace(read_settings, redis_url="redis://127.0.0.1:1/0")
    rt = Runtime(settings)
    errors_before = REGISTRY.get_sample_value("memory_redis_errors_total", {"op": "cache"}) or 0
    sim.seed("r1", summary="still here")
    context, meta = rt.fetch("r1", "summary")
    assert context is not None and meta["source"] == "zep"
    assert (REGISTRY.get_sample_value("memory_redis_errors_total", {"op": "cache"}) or 0) > (
        errors_before)

    sim.add_fault(Fault(method="GET", path=MEMORY, status=500))
    for thread in ("x", "y", "z"):
        rt.fetch(thread, "summary")
    sim.reset_requests()
    context, meta = rt.fetch("r1", "summary")
    assert meta["source"] == "write_only_forced" and meta["reason"] == "consecutive_failures"
    assert sim.requests() == []
    rt.zep.close()


def test_with_redis_down_an_auth_failure_forces_locally(
    read_settings: Settings, sim: ZepSimulator
) -> None:
    """The per-process guard forces at once on 401, like the shared one."""
    rt = Runtime(dataclasses.replace(read_settings, redis_url="redis://127.0.0.1:1/0"))
    sim.add_fault(Fault(method="GET", path=MEMORY, status=401))
    rt.fetch("a", "summary")
    assert rt.fetch("b", "summary")[1]["source"] == "write_only_forced"
    rt.zep.close()
