"""Write-path benchmark: the exactly-once mirror against a bare Celery task, in one run.

Prints one JSON object with
- end-to-end messages/second (enqueue -> stored in the simulator) of
  ``enqueue_message`` + ``memory.mirror_message``, next to a bare Celery task that
  POSTs the same payload to the same simulator, on a worker with the same
  settings (prefork, the same concurrency, acks late, prefetch 1);
- ``enqueue_message`` p50/p99 next to a bare ``task.delay()``.
Targets: throughput >= 1.0 x the bare task; enqueue p50 <= 1.15 x bare delay().
Exits 1 when one is missed.

Usage: .venv/bin/python bench/write_path.py [--messages N] [--concurrency C] [--rounds R]
Uses database 13 of REDIS_URL's host (flushed) as broker and state.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from memory_worker.celery_app import celery_config, sender
from memory_worker.config import Settings
from memory_worker.connections import with_database
from memory_worker.enqueue import Publisher
from memory_worker.zep_sim.process import spawn

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
BARE_TASK = "bench.bare_post"
TARGETS = {  # ratio: (limit, "max" | "min")
    "throughput_mirror_over_bare": (1.0, "min"),
    "enqueue_p50_over_delay_p50": (1.15, "max"),
}


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


def bare_app(settings: Settings) -> Celery:
    """The baseline: one task that POSTs a message to the simulator, nothing else."""
    app = Celery("bench_bare", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.task_routes = {BARE_TASK: {"queue": "memory_writes"}}
    client: dict[str, httpx.Client] = {}

    @app.task(name=BARE_TASK, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def bare_post(thread_id: str, message: dict[str, Any]) -> None:
        # TCP_NODELAY as the project's own client sets it: without it, Nagle's
        # algorithm and delayed ACKs add ~40 ms to a request sent in two writes.
        if "c" not in client:  # one client per worker process, as the project keeps one
            nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            client["c"] = httpx.Client(
                timeout=5, transport=httpx.HTTPTransport(socket_options=nodelay))
        http = client["c"]
        http.post(f"{settings.zep_api_url}/api/v2/sessions/{thread_id}/memory",
                  headers={"Authorization": f"Api-Key {KEY}"},
                  json={"messages": [message]}).raise_for_status()

    return app


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def stored(sim_url: str, thread_id: str) -> int:
    answer = httpx.get(f"{sim_url}/_sim/sessions/{thread_id}/messages", timeout=5)
    return len(answer.json()["messages"]) if answer.status_code == 200 else 0


def wait_stored(sim_url: str, thread_id: str, n: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while stored(sim_url, thread_id) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {stored(sim_url, thread_id)} of {n} stored in {timeout}s")
        time.sleep(0.05)
    return time.monotonic()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 4),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 4)}


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # runs the finally blocks: no stray workers


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_term)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="throughput runs of each kind, alternating")
    opts = parser.parse_args()
    n: int = opts.messages

    redis_url = with_database(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), 13)
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    conn.flushdb()
    tmp = ROOT / "var" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    sim, sim_url = spawn(tmp / "zep-sim.log", KEY)
    env = {**os.environ, "REDIS_URL": redis_url, "FLAG_ZEP_WRITE": "true",
           "FLAG_ZEP_READ": "true", "ZEP_API_URL": sim_url, "ZEP_API_KEY": KEY,
           "MEMORY_SPOOL_DIR": str(tmp / "spool"), "MEMORY_LOG_FORMAT": "json"}
    settings = Settings.from_env(env)
    for thread in ("bench-enqueue", "bench-delay"):
        httpx.post(f"{sim_url}/_sim/sessions/{thread}/seed", json={}, timeout=5)
    worker_args = ["worker", "--loglevel=WARNING", "--pool=prefork", "-Q", "memory_writes",
                   f"--concurrency={opts.concurrency}", "--without-mingle", "--without-gossip"]
    celery = str(Path(sys.executable).with_name("celery"))
    app = bare_app(settings)
    publisher = Publisher(settings, conn, sender(settings), clock=time.time)
    report: dict[str, Any] = {"messages": n, "concurrency": opts.concurrency}
    try:
        # Enqueue latency, measured with no worker consuming (publish cost only).
        enqueue_s, delay_s = [], []
        for i in range(n):
            started = time.perf_counter()
            publisher.enqueue("bench-enqueue", "user", f"message {i} about a 2+1 flat", f"e-{i}")
            enqueue_s.append(time.perf_counter() - started)
            message = {"uuid": str(uuid.uuid4()), "role": "user", "role_type": "user",
                       "content": f"message {i} about a 2+1 flat"}
            started = time.perf_counter()
            app.tasks[BARE_TASK].delay("bench-delay", message)
            delay_s.append(time.perf_counter() - started)
        # Drop what was published, but keep kombu's queue bindings (a flush would lose them).
        conn.delete("memory_writes")

        # Throughput: the queue is filled first, then one worker drains it. Timed from
        # the first message stored to the last (the worker's start-up left out), in
        # rounds ordered bare, mirror, mirror, bare..., so that a machine whose load
        # changes during the run weighs on both alike.
        def run(label: str, fill: Any, worker_app: str, thread: str) -> float:
            fill(thread)
            proc = start([celery, "-A", worker_app, *worker_args], env, tmp / f"{label}.log")
            try:
                first = wait_stored(sim_url, thread, 1)
                last = wait_stored(sim_url, thread, n)
            finally:
                stop(proc)
            return (n - 1) / max(last - first, 1e-3)

        def fill_mirror(thread: str) -> None:
            for i in range(n):
                publisher.enqueue(thread, "user", f"message {i} about a 2+1 flat",
                                  f"{thread}-{i}")

        def fill_bare(thread: str) -> None:
            for i in range(n):
                app.tasks[BARE_TASK].delay(thread, {
                    "uuid": str(uuid.uuid4()), "role": "user", "role_type": "user",
                    "content": f"message {i} about a 2+1 flat"})

        rates: dict[str, list[float]] = {"bare": [], "mirror": []}
        for round_ in range(opts.rounds):
            order = ("bare", "mirror") if round_ % 2 == 0 else ("mirror", "bare")
            for label in order:
                thread = f"bench-{label}-{round_}"
                httpx.post(f"{sim_url}/_sim/sessions/{thread}/seed", json={}, timeout=5)
                if label == "bare":
                    rates[label].append(run(f"bare-{round_}", fill_bare,
                                            "bench.write_path:BENCH_APP", thread))
                else:
                    rates[label].append(run(f"mirror-{round_}", fill_mirror, "memory_worker",
                                            thread))
        bare_rate = statistics.median(rates["bare"])
        mirror_rate = statistics.median(rates["mirror"])
        enqueue, delay = percentiles(enqueue_s), percentiles(delay_s)
        report.update({
            "throughput_msgs_per_s": {"mirror": round(mirror_rate, 1),
                                      "bare_task": round(bare_rate, 1),
                                      "rounds": {k: [round(r, 1) for r in v]
                                                 for k, v in rates.items()}},
            "enqueue_latency": {"enqueue_message": enqueue, "bare_delay": delay},
            "ratios": {
                "throughput_mirror_over_bare": round(mirror_rate / bare_rate, 3),
                "enqueue_p50_over_delay_p50": round(enqueue["p50_ms"] / delay["p50_ms"], 3),
            },
            "targets": {name: f"{'<=' if kind == 'max' else '>='} {limit}"
                        for name, (limit, kind) in TARGETS.items()},
        })
    finally:
        stop(sim)
        conn.flushdb()
    print(json.dumps(report, indent=1))
    if not verdict(report["ratios"], TARGETS):
        sys.exit(1)


def _bench_app() -> Celery:
    return bare_app(Settings.from_env())


if __name__ == "__main__":
    main()
else:  # imported by the baseline worker: ``celery -A bench.write_path:BENCH_APP``
    BENCH_APP = _bench_app()
