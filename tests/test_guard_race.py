"""Sixteen real processes cross the threshold at the same moment: exactly one downgrade."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, multiprocess

from memory_worker.keys import Keys

PROCESSES = 16
ROOT = Path(__file__).resolve().parent.parent


def test_sixteen_processes_crossing_the_threshold_make_exactly_one_downgrade(
    conn: redis.Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """One forced record, one memory_mode_forced line, downgrades_total up by exactly 1."""
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "MEMORY_LOG_FORMAT": "json"}
    children = [
        subprocess.Popen([sys.executable, "-m", "tests.proc_guard_race", redis_url], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 60
        while int(conn.get("test:race:ready") or 0) < PROCESSES:
            assert time.monotonic() < deadline, "children did not get ready"
            assert all(c.poll() is None for c in children), "a child died before the gun"
            time.sleep(0.02)
        conn.rpush("test:race:go", *["go"] * PROCESSES)
        outputs = [c.communicate(timeout=60) for c in children]
    finally:
        for c in children:
            c.kill() if c.poll() is None else None
    assert all(c.returncode == 0 for c in children), [err for _, err in outputs]

    decisions = [json.loads(out) for out, _ in outputs]
    assert sum(d["forced"] for d in decisions) == 1
    assert [d["count"] for d in decisions if d["forced"]] == [3]
    forced_lines = [
        line for _, err in outputs for line in err.splitlines()
        if json.loads(line).get("event") == "memory_mode_forced"
    ]
    assert len(forced_lines) == 1
    record = json.loads(conn.get(keys.forced) or "")
    assert record["reason"] == "consecutive_failures" and record["source"] == "guard"

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    total = registry.get_sample_value("memory_zep_downgrades_total",
                                      {"reason": "consecutive_failures"})
    assert total == 1.0
