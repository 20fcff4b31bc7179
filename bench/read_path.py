"""Read-path benchmark: the guarded read against its own baselines, measured in one run.

Prints one JSON object. Baselines: a raw redis-py GET on the same Redis, and a
bare zep-python SDK call to the same simulator (served by a separate process,
so client and server do not share a GIL). Targets (issue: read path):
cache hit and blocked read p50 <= 1.5 x raw GET; cache-miss overhead <= 1 ms p50
over the bare SDK call.

Usage: .venv/bin/python bench/read_path.py [--iterations N]
Uses database 14 of REDIS_URL's host (flushed), never the application's data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis
from zep_python.base_client import BaseClient

from memory_worker.config import Settings
from memory_worker.guard import Guard
from memory_worker.runtime import Runtime
from memory_worker.zep import ZepClient
from memory_worker.zep_sim.process import spawn

KEY = "bench-key"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 4),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 4),
    }


def measure(call: Callable[[], object], iterations: int,
            before: Callable[[], object] | None = None) -> list[float]:
    for _ in range(min(200, iterations)):  # warm-up: connections, caches, JIT-free paths
        if before:
            before()
        call()
    samples = []
    for _ in range(iterations):
        if before:
            before()
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def bench_redis_url() -> str:
    parts = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return urlunsplit(parts._replace(path="/14"))


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

        raw.set("bench:plain", "x" * 200)
        results = {"raw_redis_get": measure(lambda: raw.get("bench:plain"), n)}

        runtime.fetch("bench-thread", "summary")
        results["cache_hit"] = measure(lambda: runtime.fetch("bench-thread", "summary"), n)

        cache_key = runtime.keys.context("bench-thread", "summary")
        results["cache_miss"] = measure(lambda: runtime.fetch("bench-thread", "summary"),
                                        n // 3, before=lambda: raw.delete(cache_key))

        http = httpx.Client()
        sdk = BaseClient(base_url=f"{sim_url}/api/v2", api_key=KEY, httpx_client=http)
        results["bare_sdk_get_memory"] = measure(
            lambda: sdk.memory.get("bench-thread", lastn=4), n // 3)
        http.close()

        Guard(raw, settings).force_now("auth")
        results["blocked_forced"] = measure(lambda: runtime.fetch("bench-thread", "summary"), n)
        blocked_meta = runtime.fetch("bench-thread", "summary")[1]
        assert blocked_meta["source"] == "write_only_forced", blocked_meta
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
        "targets": {"cache_hit_and_blocked_ratio_max": 1.5, "cache_miss_overhead_ms_max": 1.0},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
