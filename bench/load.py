"""Load benchmark: the read path and enqueue under many callers at once, Zep well and stalled.

Prints one JSON object. Every phase runs for ``--seconds`` on a mix of cache
hits (threads whose entry is cached) and misses (threads Zep is asked about):

- ``sync``: one process, 64 threads calling ``fetch_thread_context``;
- ``async``: one event loop running rounds of 1,000 concurrent ``afetch_thread_context``
  calls;
- the same two with Zep stalled (every context read answered after 5 s): the
  read budget must hold, p99 <= MEMORY_READ_TIMEOUT_MS + 25 ms, and the
  process's threads, open sockets and memory must stay bounded: each is
  printed before the phase, at its peak (sampled every 200 ms) and after it;
- ``enqueue``: 64 threads calling ``enqueue_message`` (no worker consumes).

Shadow mode (DISABLE_AUTO_DOWNGRADE) keeps the guard from forcing write_only,
so that every miss of the stalled phases really waits on Zep. Exits 1 when a
stalled phase misses the budget. Everything is on loopback: a simulator this
script starts, and database 12 of REDIS_URL's server, flushed before and after.

Usage: .venv/bin/python bench/load.py [--seconds S] [--hit-share F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
THREADS = 64
IN_FLIGHT = 1000
HOT_THREADS = 200
STALL_MS = 5000
SLACK_MS = 25.0  # SPEC §5: a read returns within MEMORY_READ_TIMEOUT_MS + 25 ms


def process_state() -> dict[str, float]:
    """This process's threads, open sockets and resident memory (MB)."""
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    with open("/proc/self/status", encoding="ascii") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {"threads": int(fields["Threads"]), "sockets": sockets,
            "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1)}


class Watch:
    """Samples ``process_state`` every 200 ms while a phase runs: before, peak, after.

    Each sample reads every descriptor's link under /proc, on a thread of the process
    being measured: every 50 ms, it cost the event loop's worst rounds a few ms.
    """

    def __init__(self) -> None:
        self.before = process_state()
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for name, value in process_state().items():
                self.peak[name] = max(self.peak[name], value)

    def done(self, settle_s: float) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        time.sleep(settle_s)  # what a stalled call left behind has had time to end
        return {"before": self.before, "peak": self.peak, "after": process_state()}


def p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def summary(samples: list[float], seconds: float, took_ms: list[float] | None = None
            ) -> dict[str, float]:
    """Calls, rate and latency as the caller saw it; ``took_p99_ms``: as the read's own
    ``meta["took_ms"]`` saw it, from its first step (the difference is time spent
    waiting for the CPU: the GIL, or the event loop's turn)."""
    ordered = sorted(samples)
    result = {"calls": len(ordered), "per_second": round(len(ordered) / seconds, 1),
              "p50_ms": round(statistics.median(ordered) * 1000, 3),
              "p99_ms": round(p99(ordered) * 1000, 3),
              "max_ms": round(ordered[-1] * 1000, 3)}
    if took_ms:
        result["took_p99_ms"] = round(p99(sorted(took_ms)), 3)
    return result


def pick(hit_share: float) -> Callable[[], str]:
    """A thread id: a cached one with probability ``hit_share``, else one never read."""
    hot = [f"hot-{i}" for i in range(HOT_THREADS)]

    def choose() -> str:
        return random.choice(hot) if random.random() < hit_share else f"miss-{uuid.uuid4().hex}"

    return choose


def sync_phase(fetch: Callable[[str, str], Any], choose: Callable[[], str],
               seconds: float) -> dict[str, Any]:
    samples: list[float] = []
    took: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def caller() -> None:
        mine: list[float] = []
        mine_took: list[float] = []
        while time.monotonic() < end:
            started = time.perf_counter()
            _, meta = fetch(choose(), "summary")
            mine.append(time.perf_counter() - started)
            mine_took.append(meta["took_ms"])
        with lock:
            samples.extend(mine)
            took.extend(mine_took)

    watch = Watch()
    threads = [threading.Thread(target=caller) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**summary(samples, seconds, took), "process": watch.done(1.0)}


def async_phase(afetch: Callable[[str, str], Any], choose: Callable[[], str],
                seconds: float) -> dict[str, Any]:
    """Rounds of 1,000 calls started together; the next round once all have returned."""
    samples: list[float] = []
    took: list[float] = []

    async def call() -> None:
        started = time.perf_counter()
        _, meta = await afetch(choose(), "summary")
        samples.append(time.perf_counter() - started)
        took.append(meta["took_ms"])

    async def run() -> dict[str, Any]:
        watch = Watch()
        end = time.monotonic() + seconds
        began = time.monotonic()
        while time.monotonic() < end:
            await asyncio.gather(*(call() for _ in range(IN_FLIGHT)))
        return {**summary(samples, time.monotonic() - began, took),
                "process": watch.done(1.0)}

    return asyncio.run(run())


def enqueue_phase(enqueue: Callable[..., Any], seconds: float) -> dict[str, Any]:
    samples: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds
    ids = itertools.count()

    def caller(n: int) -> None:
        mine: list[float] = []
        while time.monotonic() < end:
            started = time.perf_counter()
            enqueue(f"load-{n % 16}", "user", "a 2+1 in Kyrenia, call +90 533 000 0000",
                    f"load-{next(ids)}")
            mine.append(time.perf_counter() - started)
        with lock:
            samples.extend(mine)

    watch = Watch()
    threads = [threading.Thread(target=caller, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**summary(samples, seconds), "process": watch.done(0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    parser.add_argument("--hit-share", type=float, default=0.8)
    opts = parser.parse_args()

    from memory_worker.connections import with_database
    from memory_worker.zep_sim.process import spawn

    redis_url = with_database(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), 12)
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    conn.flushdb()
    tmp = ROOT / "var" / "bench"
    sim, sim_url = spawn(tmp / "zep-sim-load.log", KEY)
    # The library reads its environment once, at first use: set it before that.
    os.environ.update({"REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
                       "FLAG_ZEP_WRITE": "true", "FLAG_ZEP_READ": "true",
                       "ZEP_API_URL": sim_url, "ZEP_API_KEY": KEY,
                       "DISABLE_AUTO_DOWNGRADE": "true", "MEMORY_LATENCY_DOWNGRADE_MS": "0",
                       "MEMORY_SPOOL_DIR": str(tmp / "spool-load"),
                       "MEMORY_LOG_FORMAT": "json"})
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import logging

    from memory_worker import afetch_thread_context, enqueue_message, fetch_thread_context
    from memory_worker.runtime import configure

    logging.getLogger("memory_worker").setLevel(logging.ERROR)  # timeouts log per read
    runtime = configure()
    budget_ms = runtime.settings.read_timeout_ms
    report: dict[str, Any] = {"seconds_per_phase": opts.seconds, "hit_share": opts.hit_share,
                              "threads": THREADS, "in_flight": IN_FLIGHT,
                              "read_budget_ms": budget_ms}
    try:
        for i in range(HOT_THREADS):
            httpx.post(f"{sim_url}/_sim/sessions/hot-{i}/seed",
                       json={"summary": f"thread {i} looks for a 2+1 flat"}, timeout=5)

        def warm() -> None:  # every hot thread cached for the whole run
            for i in range(HOT_THREADS):
                fetch_thread_context(f"hot-{i}", "summary")
                conn.expire(runtime.keys.context(f"hot-{i}", "summary"), 3600)

        choose = pick(opts.hit_share)
        warm()
        report["sync"] = sync_phase(fetch_thread_context, choose, opts.seconds)
        report["async"] = async_phase(afetch_thread_context, choose, opts.seconds)

        fault = httpx.post(f"{sim_url}/_sim/faults", timeout=5, json={
            "method": "GET", "path": "*/memory", "latency_ms": STALL_MS}).json()["id"]
        report["sync_zep_stalled"] = sync_phase(fetch_thread_context, choose, opts.seconds)
        report["async_zep_stalled"] = async_phase(afetch_thread_context, choose, opts.seconds)
        httpx.delete(f"{sim_url}/_sim/faults/{fault}", timeout=5)

        report["enqueue"] = enqueue_phase(enqueue_message, opts.seconds)
    finally:
        sim.terminate()
        sim.wait(10)
        conn.flushdb()

    limit = budget_ms + SLACK_MS
    met = True
    for phase in ("sync_zep_stalled", "async_zep_stalled"):
        ok = report[phase]["p99_ms"] <= limit
        met = met and ok
        print(f"{'ok  ' if ok else 'MISS'} {phase} p99 = {report[phase]['p99_ms']} ms "
              f"(target <= {limit} ms)", file=sys.stderr)
    report["targets"] = {"zep_stalled_p99_ms_max": limit}
    print(json.dumps(report, indent=1))
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
