"""The drills against the Zep simulator and a real Redis, with holds of a second or two.

They run on both Zep APIs: the faults go on the stack's read routes, its threads are
created through its own Zep client.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from memory_worker import modes
from memory_worker.cli.drill_commands import drill
from memory_worker.config import Settings
from memory_worker.drills import DRILL_NAMES, Stack, run_drill, run_drills
from memory_worker.keys import Keys
from memory_worker.observation import SimControl
from memory_worker.status import read_status
from memory_worker.zep_sim import ZepSimulator
from tests.processes import celery_process, project_env, worker_args
from tests.test_chat_app import served_app

SHORT_HOLDS = {"MEMORY_DOWNGRADE_HOLD_SECONDS": "1", "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "60"}
pytestmark = pytest.mark.zep_apis


@pytest.fixture
def drill_settings(read_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(read_settings, downgrade_hold_seconds=1,
                               downgrade_hold_max_seconds=60, spool_dir=str(tmp_path / "spool"))


@pytest.fixture
def stack(drill_settings: Settings, sim: ZepSimulator, conn: redis.Redis) -> Iterator[Stack]:
    built = Stack(drill_settings, SimControl(sim.url))
    yield built
    built.close()


@pytest.fixture
def drill_env(cli_env: dict[str, str], sim: ZepSimulator, monkeypatch: pytest.MonkeyPatch,
              zep_api_version: str) -> dict[str, str]:
    for name, value in {"ZEP_API_URL": sim.url, "ZEP_API_VERSION": zep_api_version,
                        **SHORT_HOLDS}.items():
        monkeypatch.setenv(name, value)
    return cli_env


def assert_left_clean(conn: redis.Redis, settings: Settings, sim: ZepSimulator) -> None:
    status = read_status(conn, settings, Keys(), now=time.time())
    assert status.forced is None and status.consecutive_failures == 0
    assert sim.faults.listing() == []


@pytest.mark.parametrize("name", DRILL_NAMES)
def test_each_drill_passes_in_process_and_leaves_the_base_mode(
    name: str, stack: Stack, conn: redis.Redis, drill_settings: Settings, sim: ZepSimulator
) -> None:
    """Fault, reaction, counter delta in this process, cleanup: PASS."""
    result = run_drill(stack, name)
    assert result.passed, result.line()
    assert result.line().startswith(f"PASS {name}: start read_write")
    expected = {"auth": 'downgrades_total{reason="auth"} +1 (here)',
                "timeout": 'downgrades_total{reason="consecutive_failures"} +1 (here)',
                "probe-fail": 'probe_total{result="success"} +1 (here)'}[name]
    assert expected in result.line()
    assert_left_clean(conn, drill_settings, sim)


def test_the_timeout_drill_forces_at_the_threshold_and_not_before(stack: Stack) -> None:
    """Three timed-out reads, the third forces; each read kept the budget."""
    result = run_drill(stack, "timeout")
    assert "3 timeouts" in result.line() and "reason=consecutive_failures" in result.line()
    assert result.line().endswith("cleared → read_write")


def test_probe_fail_reforces_longer_then_restores(stack: Stack) -> None:
    """The failed probe re-forces with reason probe_failed and a longer hold."""
    result = run_drill(stack, "probe-fail")
    assert "probe failure → reason=probe_failed, hold 1s → " in result.line()
    assert "probe success → read_write, reads restored (source=zep)" in result.line()


def test_probe_fail_shortens_an_escalated_hold_too_long_to_wait(stack: Stack) -> None:
    """With no patience for the escalated hold, the drill replaces it with a short one."""
    stack.recovery_wait_limit = 0.0
    result = run_drill(stack, "probe-fail")
    assert result.passed, result.line()
    assert "Zep healed; hold shortened to 1s" in result.line()


def test_every_drill_passes_through_the_chat_app_with_its_metrics(
    drill_settings: Settings, sim: ZepSimulator, conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads go through /api/chat/; deltas are scraped from /api/metrics/."""
    with served_app(drill_settings, monkeypatch) as app_url:
        stack = Stack(drill_settings, SimControl(sim.url), app_url=app_url,
                      metrics_url=f"{app_url}/api/metrics/")
        results = list(run_drills(stack, ["all"]))
        stack.close()
    assert [r.name for r in results] == list(DRILL_NAMES)
    assert all(r.passed for r in results), [r.line() for r in results]
    assert 'downgrades_total{reason="auth"} +1 (scraped)' in results[0].line()
    assert 'downgrades_total{reason="consecutive_failures"} +1 (scraped)' in results[1].line()
    assert_left_clean(conn, drill_settings, sim)


def test_the_cli_runs_all_drills_back_to_back_and_exits_0(
    drill_env: dict[str, str], conn: redis.Redis, drill_settings: Settings, sim: ZepSimulator
) -> None:
    """`memory-worker drill all`: three PASS lines on stdout, exit 0."""
    result = CliRunner().invoke(drill, ["all"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "PASS auth", "PASS timeout", "PASS probe-fail"]
    assert_left_clean(conn, drill_settings, sim)


def test_a_drill_fails_with_exit_1_when_the_guard_cannot_react(
    drill_env: dict[str, str], conn: redis.Redis, drill_settings: Settings, sim: ZepSimulator,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """DISABLE_AUTO_DOWNGRADE=true: no forced record, FAIL naming the cause, faults removed."""
    monkeypatch.setenv("DISABLE_AUTO_DOWNGRADE", "true")
    result = CliRunner().invoke(drill, ["auth", "timeout", "--zep-sim-url", sim.url])
    assert result.exit_code == 1, result.output
    auth, timeout = result.stdout.splitlines()
    assert auth.startswith("FAIL auth: no forced record after a 401: DISABLE_AUTO_DOWNGRADE")
    assert timeout.startswith("FAIL timeout: no forced record after 3 timed-out reads")
    assert_left_clean(conn, drill_settings, sim)


def test_a_drill_does_not_start_over_an_existing_forced_record(
    stack: Stack, conn: redis.Redis, keys: Keys, drill_settings: Settings, sim: ZepSimulator
) -> None:
    """An operator's force stays untouched; nothing is injected."""
    record = modes.ForcedRecord.new(reason="maintenance", source="ops", now=stack.clock(),
                                    hold_seconds=600)
    modes.force(conn, keys, record, base=modes.Mode.READ_WRITE, grace_seconds=120,
                now=stack.clock())
    result = run_drill(stack, "auth")
    assert not result.passed
    assert "a forced record is in place (reason=maintenance, source=ops)" in result.line()
    assert conn.get(keys.forced) == record.to_json()
    assert sim.faults.listing() == [] and sim.requests() == []


def test_a_drill_fails_when_the_simulator_cannot_be_reached(
    drill_env: dict[str, str], conn: redis.Redis
) -> None:
    result = CliRunner().invoke(drill, ["auth", "--zep-sim-url", "http://127.0.0.1:1"])
    assert result.exit_code == 1
    assert result.stdout.startswith("FAIL auth: GET http://127.0.0.1:1/_sim/health failed")


def test_a_drill_refuses_when_reads_are_off(
    drill_env: dict[str, str], conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAG_ZEP_READ", "false")
    result = CliRunner().invoke(drill, ["auth"])
    assert result.exit_code == 1
    assert "the base mode is write_only: reads are off" in result.stdout


def test_an_unknown_drill_is_a_usage_error(drill_env: dict[str, str]) -> None:
    assert CliRunner().invoke(drill, ["flood"]).exit_code == 2


@pytest.mark.slow
def test_probe_fail_can_wait_for_the_real_beat(
    drill_env: dict[str, str], redis_url: str, conn: redis.Redis, sim: ZepSimulator,
    tmp_path: Path, zep_api_version: str,
) -> None:
    """--wait-for-beat: a real worker and beat re-force, then restore; the drill only watches."""
    env = project_env(redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                      ZEP_API_URL=sim.url, ZEP_API_KEY="test-key",
                      ZEP_API_VERSION=zep_api_version,
                      MEMORY_PROBE_INTERVAL_SECONDS="1", **SHORT_HOLDS)
    beat_args = ["beat", "--loglevel=INFO", f"--schedule={tmp_path / 'beat-schedule'}"]
    with celery_process(worker_args("drill"), env, tmp_path / "worker.log"), \
            celery_process(beat_args, env, tmp_path / "beat.log"):
        result = CliRunner().invoke(drill, ["probe-fail", "--wait-for-beat"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert "beat probe → reason=probe_failed" in line
    assert "beat probe → read_write, reads restored" in line
    assert '"event": "memory_mode_restored"' in (tmp_path / "worker.log").read_text()
