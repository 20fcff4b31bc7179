"""The operator CLI against a real Redis: output, exit codes, one-line failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from memory_worker.cli.main import cli
from memory_worker.config import Settings
from memory_worker.guard import Guard
from memory_worker.keys import Keys
from tests.conftest import FakeClock

UNREACHABLE = "redis://127.0.0.1:1/0"


def run(clock: FakeClock, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), obj={"clock": clock})


def test_status_without_a_forced_record(cli_env: dict[str, str], conn: redis.Redis,
                                        clock: FakeClock) -> None:
    """The three lines of SPEC §8, the middle one reading None."""
    result = run(clock, "status")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Base mode (from flags): read_write\n"
        "Forced mode: None\n"
        "Effective mode: read_write\n"
    )


def test_force_then_status_shows_reason_and_remaining_seconds(
    cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock
) -> None:
    """After `force auth`, ten seconds later status shows remaining=290s."""
    assert run(clock, "force", "auth").exit_code == 0
    clock.advance(10)
    result = run(clock, "status")
    assert result.stdout == (
        "Base mode (from flags): read_write\n"
        "Forced mode: write_only (reason=auth, remaining=290s)\n"
        "Effective mode: write_only\n"
    )


def test_status_json_matches_the_contract(cli_env: dict[str, str], conn: redis.Redis,
                                          clock: FakeClock, keys: Keys) -> None:
    """One object with exactly the documented keys and values."""
    run(clock, "force", "maintenance", "--ttl", "600")
    conn.set(keys.consecutive_failures, 2)
    conn.set(keys.probe_lock, "x", px=5000)
    conn.rpush(keys.dlq, "{}", "{}")
    conn.set(keys.rate_limited_until, clock() + 7)
    clock.advance(100)
    result = run(clock, "status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status == {
        "base_mode": "read_write",
        "effective_mode": "write_only",
        "forced": {"reason": "maintenance", "source": "ops", "forced_at": clock() - 100,
                   "until": clock() + 500, "remaining_seconds": 500},
        "consecutive_failures": 2,
        "probe_lock": True,
        "write_circuit": "closed",
        "dlq_size": 2,
        "rate_limited_until": None,  # its 7 s are over
        "zep_api": "v2",
    }


def test_status_json_without_state_is_all_null_and_zero(
    cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock, keys: Keys
) -> None:
    """A fresh deployment: nothing forced, counters at zero, circuit closed."""
    conn.set(keys.rate_limited_until, clock() + 30)
    status = json.loads(run(clock, "status", "--json").stdout)
    assert status["forced"] is None and status["effective_mode"] == "read_write"
    assert status["consecutive_failures"] == 0 and status["dlq_size"] == 0
    assert status["probe_lock"] is False and status["write_circuit"] == "closed"
    assert status["rate_limited_until"] == clock() + 30


def test_force_ttl_sets_the_hold_and_redis_ttl_is_hold_plus_grace(
    cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock, keys: Keys
) -> None:
    """`force deploy --ttl 600`: hold_seconds 600, source ops, key TTL 600 + 120 s."""
    result = run(clock, "force", "deploy", "--ttl", "600")
    assert result.exit_code == 0, result.output
    record = json.loads(conn.get(keys.forced) or "")
    assert record["hold_seconds"] == 600 and record["source"] == "ops"
    assert record["reason"] == "deploy" and record["until"] == clock() + 600
    assert (720 - 2) * 1000 < conn.pttl(keys.forced) <= 720 * 1000


def test_force_defaults_to_the_configured_hold(
    cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock, keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --ttl the hold is MEMORY_DOWNGRADE_HOLD_SECONDS."""
    monkeypatch.setenv("MEMORY_DOWNGRADE_HOLD_SECONDS", "45")
    run(clock, "force", "drill")
    assert json.loads(conn.get(keys.forced) or "")["hold_seconds"] == 45


@pytest.mark.parametrize("args", [["force", "two words"], ["force", "x", "--ttl", "0"],
                                  ["force"], ["status", "--bogus"], ["nonsense"]])
def test_usage_errors_exit_2(cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock,
                             keys: Keys, args: list[str]) -> None:
    """Bad command lines exit 2 and write nothing."""
    assert run(clock, *args).exit_code == 2
    assert conn.exists(keys.forced) == 0


def test_clear_removes_the_record_and_is_idempotent(
    cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock, keys: Keys
) -> None:
    """clear restores the base mode; clearing nothing still succeeds."""
    run(clock, "force", "auth")
    first = run(clock, "clear")
    assert first.exit_code == 0 and "reason=auth" in first.stdout
    assert conn.exists(keys.forced) == 0
    second = run(clock, "clear")
    assert second.exit_code == 0 and "nothing to clear" in second.stdout


def test_reset_failures_zeroes_the_counter(
    cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock, settings: Settings
) -> None:
    """reset-failures reports the count it removed."""
    guard = Guard(conn, settings, clock=clock)
    guard.record_failure()
    guard.record_failure()
    result = run(clock, "reset-failures")
    assert result.exit_code == 0 and "was 2" in result.stdout
    assert guard.failure_count() == 0


def test_config_check_validates_without_printing_the_key(
    cli_env: dict[str, str], clock: FakeClock
) -> None:
    """config check lists every variable, the key only as (set)."""
    result = run(clock, "config", "check")
    assert result.exit_code == 0, result.output
    assert "ZEP_API_KEY=(set)" in result.stdout and "test-key" not in result.output
    assert "MEMORY_READ_TIMEOUT_MS=250" in result.stdout
    assert result.stdout.rstrip().endswith("Configuration OK")


@pytest.mark.parametrize("command", [["status"], ["force", "x"], ["clear"], ["reset-failures"],
                                     ["config", "check"]])
def test_bad_configuration_stops_every_command_with_one_line(
    cli_env: dict[str, str], clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    """A bad variable: exit 1, one line on stderr naming it, nothing on stdout."""
    monkeypatch.setenv("MEMORY_NEGATIVE_CACHE_TTL_SECONDS", "soon")
    result = run(clock, *command)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "MEMORY_NEGATIVE_CACHE_TTL_SECONDS" in result.stderr


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["force", "x"], ["clear"],
                                     ["reset-failures"]])
def test_unreachable_redis_is_one_line_not_a_traceback(
    cli_env: dict[str, str], clock: FakeClock, command: list[str]
) -> None:
    """--redis-url after the subcommand; a dead Redis gives exit 1 and one clear line."""
    result = run(clock, *command, "--redis-url", UNREACHABLE)
    assert result.exit_code == 1
    assert result.stderr.startswith("memory-worker: error: Redis at redis://127.0.0.1:1/0")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_redis_url_option_overrides_the_environment(
    cli_env: dict[str, str], conn: redis.Redis, clock: FakeClock, redis_url: str,
    monkeypatch: pytest.MonkeyPatch, keys: Keys,
) -> None:
    """REDIS_URL is the default; --redis-url wins."""
    monkeypatch.setenv("REDIS_URL", UNREACHABLE)
    assert run(clock, "force", "x", "--redis-url", redis_url).exit_code == 0
    assert conn.exists(keys.forced) == 1


def test_redis_password_is_not_echoed_in_errors(cli_env: dict[str, str], clock: FakeClock
                                                ) -> None:
    """A password in the URL is masked in the error line."""
    result = run(clock, "status", "--redis-url", "redis://:hunter2@127.0.0.1:1/0")
    assert result.exit_code == 1 and "hunter2" not in result.output and "***" in result.stderr


def test_the_installed_command_keeps_logs_off_stdout(
    cli_env: dict[str, str], conn: redis.Redis, keys: Keys
) -> None:
    """`memory-worker force` logs its JSON event on stderr; stdout has only the output."""
    exe = Path(sys.executable).with_name("memory-worker")
    proc = subprocess.run([str(exe), "force", "drill", "--ttl", "30"], capture_output=True,
                          text=True, env={**os.environ, "MEMORY_LOG_FORMAT": "json"}, check=True)
    assert proc.stdout.startswith("Forced mode: write_only (reason=drill")
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [e["event"] for e in events] == ["memory_mode_forced"]
    assert events[0]["source"] == "ops" and events[0]["next_mode"] == "write_only"
    status = subprocess.run([str(exe), "status", "--json"], capture_output=True, text=True,
                            check=True)
    assert json.loads(status.stdout)["forced"]["reason"] == "drill"


def test_status_json_and_config_check_name_the_zep_api(
    cli_env: dict[str, str], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZEP_API_VERSION=v4 shows as zep_api in status --json and in config check."""
    monkeypatch.setenv("ZEP_API_VERSION", "v4")
    status = json.loads(run(clock, "status", "--json").stdout)
    assert status["zep_api"] == "v4"
    checked = run(clock, "config", "check")
    assert checked.exit_code == 0, checked.output
    assert "ZEP_API_VERSION=v4" in checked.stdout
