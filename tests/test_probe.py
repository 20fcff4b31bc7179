"""The recovery probe: single flight, compare-and-clear, escalating holds, the CLI.

The probe's tests run on both Zep APIs: v2 reads a session no chat uses, v4
sends one ``GET /api/v4/threads/{uuid}`` of a uuid Zep never assigns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from prometheus_client import REGISTRY

from memory_worker import modes
from memory_worker.cli.main import cli
from memory_worker.config import Settings
from memory_worker.guard import Guard
from memory_worker.keys import Keys
from memory_worker.probe import PROBE_SESSION, Prober, ProbeResult
from memory_worker.zep import connect
from memory_worker.zep_sim import Fault, ZepSimulator
from memory_worker.zep_v4 import PROBE_THREAD
from tests.conftest import FakeClock
from tests.zep_apis import ZepApiUnderTest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.zep_apis


def prober_for(settings: Settings, clock: FakeClock, conn: redis.Redis) -> Prober:
    return Prober(conn, settings, connect(settings, conn), clock=clock)


def force(conn: redis.Redis, settings: Settings, clock: FakeClock, reason: str = "auth",
          hold: int = 300) -> None:
    Guard(conn, settings, clock=clock).force_now(reason, hold)


def forced(conn: redis.Redis, keys: Keys) -> dict[str, object] | None:
    raw = conn.get(keys.forced)
    return None if raw is None else dict(json.loads(raw))


def probes(result: str) -> float:
    return REGISTRY.get_sample_value("memory_probe_total", {"result": result}) or 0.0


def test_nothing_is_probed_while_the_hold_runs(
    read_settings: Settings, clock: FakeClock, conn: redis.Redis, sim: ZepSimulator
) -> None:
    """No record, or a record before its until: skipped, no request to Zep."""
    prober = prober_for(read_settings, clock, conn)
    assert prober.run().result is ProbeResult.SKIPPED
    force(conn, read_settings, clock)
    clock.advance(299)
    assert prober.run().result is ProbeResult.SKIPPED
    assert sim.requests() == []


@pytest.mark.parametrize("seeded", [False, True], ids=["404-is-an-answer", "200"])
def test_a_successful_probe_clears_the_record_and_resets_the_counters(
    read_settings: Settings, clock: FakeClock, conn: redis.Redis, sim: ZepSimulator, keys: Keys,
    zep_api: ZepApiUnderTest, seeded: bool,
) -> None:
    """After until, one request; Zep answers → record gone, counters reset."""
    if seeded and zep_api.version == "v2":
        sim.seed(PROBE_SESSION, summary="probe")
    elif seeded:
        # v4 probes a thread uuid Zep never assigns, so Zep answers 404 there; a 200 is
        # made by answering the probe's own request with a thread.
        sim.add_fault(Fault(method="GET", path=f"/api/v4/threads/{PROBE_THREAD}", status=200,
                            body={"uuid": PROBE_THREAD}))
    force(conn, read_settings, clock)
    conn.set(keys.probe_failures, 2)
    conn.set(keys.consecutive_failures, 1)
    clock.advance(301)
    before = probes("success")
    report = prober_for(read_settings, clock, conn).run()
    assert report.result is ProbeResult.SUCCESS
    assert conn.exists(keys.forced, keys.probe_failures, keys.consecutive_failures) == 0
    assert len(sim.requests()) == 1
    assert probes("success") == before + 1


def test_a_failed_probe_reforces_with_an_escalating_hold(
    read_settings: Settings, clock: FakeClock, conn: redis.Redis, sim: ZepSimulator, keys: Keys,
    zep_api: ZepApiUnderTest,
) -> None:
    """Failures re-force with reason probe_failed and base × 2^n (±10 %) holds."""
    sim.add_fault(zep_api.read_fault(status=503))
    force(conn, read_settings, clock)
    prober = prober_for(read_settings, clock, conn)
    downgrades = REGISTRY.get_sample_value("memory_zep_downgrades_total",
                                           {"reason": "probe_failed"}) or 0.0
    holds = []
    for _ in range(3):
        record = forced(conn, keys)
        assert record is not None
        clock.advance(float(str(record["hold_seconds"])) + 1)
        report = prober.run()
        assert report.result is ProbeResult.FAILURE
        record = forced(conn, keys)
        assert record is not None and record["reason"] == "probe_failed"
        hold = int(str(record["hold_seconds"]))
        assert record["source"] == "guard" and record["until"] == clock() + hold
        holds.append(hold)
    assert len(sim.requests()) == 3  # one request per probe
    assert 540 <= holds[0] <= 660 and 1080 <= holds[1] <= 1320 and 2160 <= holds[2] <= 2640
    assert REGISTRY.get_sample_value("memory_zep_downgrades_total",
                                     {"reason": "probe_failed"}) == downgrades + 3


def test_an_operator_force_during_the_probe_survives_its_success(
    read_settings: Settings, clock: FakeClock, conn: redis.Redis, sim: ZepSimulator, keys: Keys,
    zep_api: ZepApiUnderTest,
) -> None:
    """Compare-and-clear: only the record that was evaluated is removed."""
    settings = dataclasses.replace(read_settings, probe_timeout_ms=2000)
    force(conn, settings, clock)
    clock.advance(301)
    sim.add_fault(zep_api.read_fault(latency_ms=300))
    result: list[ProbeResult] = []
    thread = threading.Thread(target=lambda: result.append(
        prober_for(settings, clock, conn).run().result))
    thread.start()
    deadline = time.monotonic() + 5
    while not sim.requests() and time.monotonic() < deadline:
        time.sleep(0.005)
    ops = modes.ForcedRecord.new(reason="maintenance", source="ops", now=clock(),
                                 hold_seconds=600)
    modes.force(conn, keys, ops, base=modes.Mode.READ_WRITE, grace_seconds=120, now=clock())
    thread.join(10)
    assert result == [ProbeResult.SUCCESS]
    record = forced(conn, keys)
    assert record is not None and record["reason"] == "maintenance"


def test_a_held_lock_means_no_probe(
    read_settings: Settings, clock: FakeClock, conn: redis.Redis, sim: ZepSimulator, keys: Keys
) -> None:
    """Another process holds mem:mode:probe_lock:v1: locked, no request."""
    force(conn, read_settings, clock)
    clock.advance(301)
    conn.set(keys.probe_lock, "someone", px=5000)
    before = probes("locked")
    assert prober_for(read_settings, clock, conn).run().result is ProbeResult.LOCKED
    assert sim.requests() == [] and probes("locked") == before + 1


def test_eight_processes_probing_at_once_make_one_call_to_zep(
    read_settings: Settings, conn: redis.Redis, redis_url: str, sim: ZepSimulator, keys: Keys,
    zep_api: ZepApiUnderTest,
) -> None:
    """Single flight across processes: one request, one success, the rest locked or skipped."""
    real_clock_record = modes.ForcedRecord.new(reason="auth", source="guard",
                                               now=time.time() - 400, hold_seconds=300)
    conn.set(keys.forced, real_clock_record.to_json(), px=60_000)
    sim.add_fault(zep_api.read_fault(latency_ms=100))
    children = [
        subprocess.Popen([sys.executable, "-m", "tests.proc_probe_once", redis_url, sim.url,
                          zep_api.version],
                         cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    deadline = time.monotonic() + 60
    while int(conn.get("test:probe:ready") or 0) < 8:
        assert time.monotonic() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.02)
    conn.rpush("test:probe:go", *["go"] * 8)
    results = sorted(c.communicate(timeout=60)[0].strip() for c in children)
    assert results.count("success") == 1, results
    assert set(results) <= {"success", "locked", "skipped"}
    assert len(sim.requests()) == 1
    assert conn.exists(keys.forced) == 0


def test_the_probe_command_runs_the_logic_once(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, conn: redis.Redis,
    sim: ZepSimulator, clock: FakeClock, settings: Settings, keys: Keys,
) -> None:
    """`memory-worker probe`: skipped exits 0 calling nothing; after the hold it restores."""
    monkeypatch.setenv("ZEP_API_URL", sim.url)
    monkeypatch.setenv("ZEP_API_VERSION", settings.zep_api_version)
    runner = CliRunner()
    skipped = runner.invoke(cli, ["probe"], obj={"clock": clock})
    assert skipped.exit_code == 0 and skipped.stdout.startswith("Probe: skipped")
    assert sim.requests() == []
    force(conn, settings, clock)
    clock.advance(301)
    done = runner.invoke(cli, ["probe"], obj={"clock": clock})
    assert done.exit_code == 0 and done.stdout.startswith("Probe: success"), done.output
    assert conn.exists(keys.forced) == 0
    assert len(sim.requests()) == 1


def test_the_invalidate_command_deletes_the_three_views(
    cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock, keys: Keys
) -> None:
    """`memory-worker invalidate T` removes summary, recent and facts entries."""
    for key in keys.contexts("t-9"):
        conn.set(key, "{}")
    result = CliRunner().invoke(cli, ["invalidate", "t-9"], obj={"clock": clock})
    assert result.exit_code == 0 and "3 cache entries" in result.stdout
    assert conn.exists(*keys.contexts("t-9")) == 0
    bad = CliRunner().invoke(cli, ["invalidate", "../etc"], obj={"clock": clock})
    assert bad.exit_code == 2


@pytest.mark.parametrize("forced", [False, True])
def test_beat_probe_with_both_flags_off_and_no_zep_does_nothing(
    conn: redis.Redis, redis_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
    forced: bool,
) -> None:
    """Flags off, no ZEP_API_URL: each beat tick's probe is a quiet no-op, not a ConfigError."""
    from memory_worker import runtime
    from memory_worker.tasks.probe import probe_recovery

    settings = Settings(redis_url=redis_url)  # SPEC §3 defaults: both flags off, no Zep
    if forced:
        force(conn, settings, clock, hold=1)
        clock.advance(5)  # the hold is over: a probe would be due if Zep were there
    monkeypatch.setattr(runtime, "_default", runtime._default)
    runtime.configure(settings, clock=clock)

    result = probe_recovery()

    assert result["result"] == ProbeResult.SKIPPED.value
    assert (conn.get(Keys().forced) is not None) is forced  # nothing was changed
