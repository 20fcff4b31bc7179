"""Read-path benchmark: the guarded read against its own baselines, measured in one run.

Prints one JSON object. Baselines: a raw redis-py GET on the same Redis, and a
bare zep-python SDK call to the same simulator (served by a separate process,
so client and server do not share a GIL). Targets: cache hit and blocked read
p50 <= 1.2 x raw GET; cache-miss overhead <= 0.5 ms p50 over the bare SDK call.
Exits 1 when one is missed.

The ``v4`` block does the same for Zep v4 (``zep-cloud``): a cache miss of each view
against the bare ``zep-cloud`` calls that view makes (the summary view's three made
at once, on threads, as the client makes them). Target: the ``recent`` view's
cache-miss overhead (one call, as on v2) <= 1 ms p50 over the bare call; the
summary and facts views are reported beside it.

``cache_hit`` reads one thread again and again, as a busy thread is read: its
entry is decoded once and copied after that. ``cache_hit_cold`` reads entries
of 4,000 threads in turn, each decoded afresh; it is reported without a target.

Usage: .venv/bin/python bench/read_path.py [--iterations N]
Uses database 14 of REDIS_URL's host (flushed), never the application's data.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis
from zep_cloud.client import Zep
from zep_python.base_client import BaseClient

from memory_worker import cache
from memory_worker.config import Settings
from memory_worker.connections import with_database
from memory_worker.guard import Guard
from memory_worker.runtime import Runtime
from memory_worker.zep import ZepClient, connect
from memory_worker.zep_sim.process import spawn

KEY = "bench-key"
COLD_THREADS = 4000
TARGETS = {  # ratio: (limit, "max" | "min")
    "cache_hit_p50_over_raw_get_p50": (1.2, "max"),
    "blocked_p50_over_raw_get_p50": (1.2, "max"),
    "cache_miss_p50_overhead_ms_over_bare_sdk": (0.5, "max"),
}
V4_TARGETS = {"recent_cache_miss_p50_overhead_ms_over_bare_sdk": (1.0, "max")}


def verdict(ratios: dict[str, float], targets: dict[str, tuple[float, str]]) -> bool:
    """Print each ratio beside its target on stderr; True when every target is met."""
    met = True
    for name, (limit, kind) in targets.items():
        value = ratios[name]
        ok = value <= limit if kind == "max" else value >= limit
        met = met and ok
        sign = "<=" if kind == "max" else ">="
        print(f"{'ok  ' if ok else 'MISS'} {name} = {value} (target {sign} {limit})",
              file=sys.stderr)
    return met


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 4),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 4),
    }


def measure(calls: dict[str, Callable[[], object]], iterations: int,
            before: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Time each call ``iterations`` times, round-robin, so all share the same conditions.

    A shared, noisy machine changes speed from one second to the next; timing
    the baseline and the candidate in alternation keeps their ratio honest.
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(iterations + 200):  # the first 200 rounds warm up
        for name, call in calls.items():
            if before:
                before()
            started = time.perf_counter()
            call()
            elapsed = time.perf_counter() - started
            if round_ >= 200:
                samples[name].append(elapsed)
    return samples


def bench_redis_url() -> str:
    return with_database(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), 14)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    n = parser.parse_args().iterations

    redis_url = bench_redis_url()
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    raw.flushdb()
    log = Path(__file__).resolve().parent.parent / "var" / "bench" / "zep-sim-read.log"
    sim, sim_url = spawn(log, KEY)
    try:
        settings = Settings(flag_zep_write=True, flag_zep_read=True, zep_api_url=sim_url,
                            zep_api_key=KEY, redis_url=redis_url, read_timeout_ms=1000,
                            latency_downgrade_ms=0)
        runtime = Runtime(settings)
        seeder = ZepClient(sim_url, KEY)
        seeder.add_session("bench-thread")
        seeder.add_messages("bench-thread", [
            {"uuid": f"00000000-0000-4000-8000-{i:012d}", "role": "user", "role_type": "user",
             "content": f"message {i} " * 20, "metadata": None} for i in range(12)
        ])
        seeder.close()

        # A second deployment (its own key prefix) is held in a forced record.
        blocked = Runtime(dataclasses.replace(settings, key_prefix="bench-blocked:"))
        Guard(raw, blocked.settings).force_now("auth")
        assert blocked.fetch("bench-thread", "summary")[1]["source"] == "write_only_forced"
        runtime.fetch("bench-thread", "summary")
        assert runtime.fetch("bench-thread", "summary")[1]["cached"] is True

        raw.set("bench:plain", cache.positive({"summary": "x" * 200}))
        stored = raw.get(runtime.keys.context("bench-thread", "summary"))
        assert stored is not None
        hot = str(stored)
        pipe = raw.pipeline(transaction=False)
        for i in range(COLD_THREADS):  # the same entry, made distinct by one character
            pipe.set(runtime.keys.context(f"cold-{i}", "summary"),
                     hot.replace("message 0", f"message {i:09d}", 1), ex=600)
        pipe.execute()
        cold = itertools.cycle([f"cold-{i}" for i in range(COLD_THREADS)])
        results = measure({
            "raw_redis_get": lambda: raw.get("bench:plain"),
            "cache_hit": lambda: runtime.fetch("bench-thread", "summary"),
            "blocked_forced": lambda: blocked.fetch("bench-thread", "summary"),
            "cache_hit_cold": lambda: runtime.fetch(next(cold), "summary"),
        }, n)

        http = httpx.Client()
        sdk = BaseClient(base_url=f"{sim_url}/api/v2", api_key=KEY, httpx_client=http)
        cache_key = runtime.keys.context("bench-thread", "summary")
        results.update(measure({
            "cache_miss": lambda: runtime.fetch("bench-thread", "summary"),
            "bare_sdk_get_memory": lambda: sdk.memory.get("bench-thread", lastn=4),
        }, n // 3, before=lambda: raw.delete(cache_key)))
        http.close()
        v4 = bench_v4(settings, raw, sim_url, n)
    finally:
        sim.terminate()
        sim.wait(10)
        raw.flushdb()

    summary = {name: percentiles(samples) for name, samples in results.items()}
    get_p50 = summary["raw_redis_get"]["p50_ms"]
    report = {
        "iterations": n,
        "latency": summary,
        "ratios": {
            "cache_hit_p50_over_raw_get_p50": round(summary["cache_hit"]["p50_ms"] / get_p50, 3),
            "blocked_p50_over_raw_get_p50": round(
                summary["blocked_forced"]["p50_ms"] / get_p50, 3),
            "cache_miss_p50_overhead_ms_over_bare_sdk": round(
                summary["cache_miss"]["p50_ms"] - summary["bare_sdk_get_memory"]["p50_ms"], 4),
        },
        "informational": {
            "cache_hit_cold_p50_over_raw_get_p50": round(
                summary["cache_hit_cold"]["p50_ms"] / get_p50, 3),
        },
        "targets": {name: f"{'<=' if kind == 'max' else '>='} {limit}"
                    for name, (limit, kind) in TARGETS.items()},
    }
    report["v4"] = v4
    print(json.dumps(report, indent=1))
    met = verdict(report["ratios"], TARGETS)
    if not verdict(v4["ratios"], V4_TARGETS) or not met:
        sys.exit(1)


def bench_v4(settings: Settings, raw: redis.Redis, sim_url: str, n: int) -> dict[str, Any]:
    """Cache misses of each view on Zep v4 against the bare zep-cloud calls of that view."""
    v4_settings = dataclasses.replace(settings, zep_api_version="v4", key_prefix="bench-v4:")
    runtime = Runtime(v4_settings)
    seeder = connect(v4_settings, raw)
    seeder.add_session("bench-thread")
    seeder.add_messages("bench-thread", [
        {"uuid": f"00000000-0000-4000-8000-{i:012d}", "role": "user", "role_type": "user",
         "content": f"message {i} " * 20, "metadata": {"client_msg_id": f"bench-{i}"}}
        for i in range(12)
    ])
    seeder.close()
    thread_uuid = str(raw.get(runtime.keys.zep_thread("bench-thread")))
    for view in ("summary", "recent", "facts"):
        assert runtime.fetch("bench-thread", view)[1]["used"] is True

    http = httpx.Client()
    sdk = Zep(base_url=f"{sim_url}/api/v4", api_key=KEY, max_retries=0, httpx_client=http)
    pool = ThreadPoolExecutor(3)

    def messages(count: int) -> list[Any]:
        return list(sdk.thread.list_messages(thread_uuid, page_size=count, order_by="created_at",
                                             order="desc").items or [])

    def summary_view() -> None:
        wait([pool.submit(messages, 4), pool.submit(sdk.thread.get_context, thread_uuid),
              pool.submit(sdk.thread.get_summary, thread_uuid)])

    results: dict[str, list[float]] = {}
    for view, bare in (("summary", summary_view),
                       ("recent", lambda: messages(v4_settings.recent_lastn)),
                       ("facts", lambda: sdk.thread.get_context(thread_uuid))):
        cache_key = runtime.keys.context("bench-thread", view)
        results.update(measure({
            f"{view}_cache_miss": partial(runtime.fetch, "bench-thread", view),
            f"{view}_bare_sdk": bare,
        }, n // 3, before=partial(raw.delete, cache_key)))
    pool.shutdown()
    http.close()
    runtime.zep.close()
    summary = {name: percentiles(samples) for name, samples in results.items()}

    def overhead(view: str) -> float:
        return round(summary[f"{view}_cache_miss"]["p50_ms"]
                     - summary[f"{view}_bare_sdk"]["p50_ms"], 4)

    return {
        "latency": summary,
        "ratios": {"recent_cache_miss_p50_overhead_ms_over_bare_sdk": overhead("recent")},
        "informational": {
            "summary_cache_miss_p50_overhead_ms_over_bare_sdk": overhead("summary"),
            "facts_cache_miss_p50_overhead_ms_over_bare_sdk": overhead("facts"),
        },
        "targets": {name: f"{'<=' if kind == 'max' else '>='} {limit}"
                    for name, (limit, kind) in V4_TARGETS.items()},
    }


if __name__ == "__main__":
    main()
