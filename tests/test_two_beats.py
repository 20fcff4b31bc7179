"""Two `celery beat` processes at once (the usual wish for high availability) are safe.

Each beat sends `memory.probe_recovery` every interval, so the worker runs the probe
twice as often; the probe lock and the compare-and-set on the forced record make one
request per due record reach Zep, whichever process takes it. (The delivery ledger's
sweep is safe the same way: each overdue entry is claimed by one script call, see
tests/test_ledger.py.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from memory_worker.keys import Keys
from memory_worker.probe import PROBE_SESSION
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.processes import celery_process, project_env, wait_for, worker_args

PROBES = f"*/sessions/{PROBE_SESSION}/memory"


def probe_tasks_run(log: Path) -> int:
    return log.read_text().count("memory.probe_recovery") if log.exists() else 0


def test_two_beats_probe_each_due_record_once(
    conn: redis.Redis, redis_url: str, sim: ZepSimulator, keys: Keys, tmp_path: Path,
) -> None:
    """Zep failing then healed: every probe request changed the record, none was a double."""
    env = project_env(
        redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true", ZEP_API_URL=sim.url,
        ZEP_API_KEY="test-key", MEMORY_DOWNGRADE_HOLD_SECONDS="1",
        MEMORY_DOWNGRADE_HOLD_MAX_SECONDS="2", MEMORY_PROBE_INTERVAL_SECONDS="1",
    )
    worker_log = tmp_path / "worker.log"
    beats = [["beat", "--loglevel=INFO", f"--schedule={tmp_path / f'beat-{n}'}"] for n in (1, 2)]
    now = time.time()
    record = {"mode": "write_only", "reason": "drill", "source": "ops", "forced_at": now - 2,
              "until": now - 1, "hold_seconds": 1}
    with celery_process(worker_args("probe", concurrency=2), env, worker_log), \
            celery_process(beats[0], env, tmp_path / "beat-1.log"), \
            celery_process(beats[1], env, tmp_path / "beat-2.log"):
        # Given Zep failing and a forced record whose hold is over,
        sim.add_fault(Fault(method="GET", path=PROBES, status=503))
        conn.set(keys.forced, json.dumps(record), ex=600)
        # when both beats have sent probes for several intervals,
        wait_for(lambda: "probe_failed" in (conn.get(keys.forced) or ""), 30, "a failed probe")
        seen = probe_tasks_run(worker_log)
        wait_for(lambda: probe_tasks_run(worker_log) >= seen + 8, 60, "eight more probe tasks")
        # then each request to Zep re-forced the record once: no two probes of one record.
        failed = worker_log.read_text().count('"zep_probe_failed_auto_downgrade"')
        assert failed >= 1
        assert len(sim.requests("GET", PROBES)) == failed

        # When Zep heals, one probe restores reads, and later ticks find nothing to probe.
        sim.clear_faults()
        sim.reset_requests()
        wait_for(lambda: conn.exists(keys.forced) == 0, 30, "the probe to restore reads")
        seen = probe_tasks_run(worker_log)
        wait_for(lambda: probe_tasks_run(worker_log) >= seen + 6, 60, "six more probe tasks")
        assert len(sim.requests("GET", PROBES)) == 1
        assert worker_log.read_text().count('"memory_mode_restored"') == 1
