"""Recovery end to end: real `celery beat` and worker, short holds set through the environment."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.runtime import Runtime
from memory_worker.zep_sim import ZepSimulator
from tests.conftest import BROKERS, Broker
from tests.processes import celery_process, project_env, wait_for, worker_args
from tests.zep_apis import ZepApiUnderTest

HOLD_S, INTERVAL_S, PROBE_TIMEOUT_S = 2, 1, 0.15
# Celery's own dispatch (beat tick, broker hop, prefork child) on a shared machine.
SCHEDULING_SLACK_S = 2.0
pytestmark = pytest.mark.zep_apis  # and on both Zep APIs


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_beat_probe_reforces_while_zep_fails_and_restores_reads_once_it_heals(
    conn: redis.Redis, redis_url: str, sim: ZepSimulator, keys: Keys, tmp_path: Path,
    broker: Broker, zep_api: ZepApiUnderTest,
) -> None:
    """Zep fails → forced; a failing probe re-forces longer; Zep heals → read_write in time."""
    env = project_env(
        redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true", ZEP_API_URL=sim.url,
        ZEP_API_KEY="test-key", ZEP_API_VERSION=zep_api.version,
        MEMORY_DOWNGRADE_HOLD_SECONDS=str(HOLD_S),
        MEMORY_PROBE_INTERVAL_SECONDS=str(INTERVAL_S),
        MEMORY_PROBE_TIMEOUT_MS=str(int(PROBE_TIMEOUT_S * 1000)), **broker.env,
    )
    settings = Settings.from_env(env)
    runtime = Runtime(settings)
    beat_args = ["beat", "--loglevel=INFO", f"--schedule={tmp_path / 'beat-schedule'}"]
    with celery_process(worker_args("probe"), env, tmp_path / "worker.log"), \
            celery_process(beat_args, env, tmp_path / "beat.log"):
        # Given a failing Zep, three reads force write_only (of threads Zep has: on v4
        # a thread it has not seen answers not_found without a request).
        for thread in "abcde":
            zep_api.prepare(thread)
        sim.add_fault(zep_api.read_fault(status=500))
        for thread in ("a", "b", "c"):
            runtime.fetch(thread, "summary")
        first = json.loads(conn.get(keys.forced) or "null")
        assert first["reason"] == "consecutive_failures" and first["hold_seconds"] == HOLD_S

        # When the hold is over and Zep still fails, the probe re-forces with a longer hold.
        wait_for(lambda: "probe_failed" in (conn.get(keys.forced) or ""), 30,
                 "the probe to re-force")
        second = json.loads(conn.get(keys.forced) or "null")
        assert second["source"] == "guard" and second["hold_seconds"] > HOLD_S
        assert runtime.fetch("d", "summary")[1]["source"] == "write_only_forced"

        # When Zep heals, reads come back within remaining hold + interval + probe timeout.
        sim.clear_faults()
        healed_at = time.time()
        record = json.loads(conn.get(keys.forced) or "null")
        remaining = max(0.0, record["until"] - healed_at)
        wait_for(lambda: conn.exists(keys.forced) == 0, 60, "the probe to restore reads")
        took = time.time() - healed_at
        assert took <= remaining + INTERVAL_S + PROBE_TIMEOUT_S + SCHEDULING_SLACK_S, (
            f"restored after {took:.2f}s, remaining hold was {remaining:.2f}s")
        _, meta = runtime.fetch("e", "summary")
        assert meta["mode"] == "read_write" and meta["source"] != "write_only_forced"

    worker_log = (tmp_path / "worker.log").read_text()
    assert '"event": "memory_mode_restored"' in worker_log
    assert "memory.probe_recovery" in worker_log
    runtime.zep.close()
