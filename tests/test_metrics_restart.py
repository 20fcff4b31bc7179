"""No counter served at /metrics goes down while a deployment runs (SPEC §9).

Prometheus reads a counter that drops as a reset: ``increase()`` then counts the
value after the drop as new events, and an alert on ``increase(...) > 0`` pages
for nothing. The metric files are emptied only when the whole deployment starts
(``memory-worker metrics-clean``); restarting the metrics server, a process
ending, another starting, or one reusing a dead process's pid keeps every count.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from memory_worker.cli.main import cli
from tests.processes import ROOT, project_env
from tests.test_exposition import metrics_server_process, writer

RUN_WITH_ENV = str(ROOT / "scripts" / "run-with-env.sh")
WRITER = f"{sys.executable} -m tests.proc_metrics_writer"

Counts = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def counts(text: str) -> Counts:
    """Every sample of every counter and histogram served, by name and labels."""
    found: Counts = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(url: str) -> Counts:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return counts(response.text)


def assert_none_went_down(before: Counts, after: Counts, when: str) -> None:
    lowered = {key: (value, after.get(key)) for key, value in before.items()
               if after.get(key, float("-inf")) < value}
    assert not lowered, f"{when}: counter samples went down or vanished: {lowered}"


def writes(found: Counts) -> float:
    return found[("memory_zep_write_success_total", ())]


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return project_env(redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                       ZEP_API_URL="http://127.0.0.1:9", ZEP_API_KEY="test-key")


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


@contextmanager
def holding_writer(directory: Path, count: int, env: dict[str, str]
                   ) -> Iterator[subprocess.Popen[str]]:
    """A process of the project that counted ``count`` writes and runs until stdin closes."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.proc_metrics_writer", "hold",
                             str(count)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip().isdigit()  # its counts are written
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_no_counter_goes_down_when_the_metrics_server_or_a_writer_restarts(
    env: dict[str, str], multiproc_dir: Path, tmp_path: Path, conn: redis.Redis
) -> None:
    """Scrape, restart the server, scrape; a writer ends, another starts: never lower."""
    # Given an ended process that stored 3 writes and a running one that stored 2
    writer(multiproc_dir, "count", "3", env=env)
    with holding_writer(multiproc_dir, 2, env) as live:
        with metrics_server_process(env, multiproc_dir, tmp_path / "first.log") as (_, url):
            first = scrape(url)
        assert writes(first) == 5

        # When the metrics server restarts
        with metrics_server_process(env, multiproc_dir, tmp_path / "second.log") as (_, url):
            second = scrape(url)
            assert_none_went_down(first, second, "after the metrics server restarted")

            # ... the running writer ends, and a new one stores 4 writes
            assert live.stdin is not None
            live.stdin.close()
            live.wait(timeout=30)
            third = scrape(url)
            assert_none_went_down(second, third, "after a writer ended")
            writer(multiproc_dir, "count", "4", env=env)
            fourth = scrape(url)
            assert_none_went_down(third, fourth, "after a new writer started")

    # Then every count stayed, and the new writes were added
    assert (writes(second), writes(third), writes(fourth)) == (5, 5, 9)


def test_a_program_started_with_a_dead_process_pid_carries_on_from_its_counts(
    env: dict[str, str], multiproc_dir: Path, tmp_path: Path, conn: redis.Redis
) -> None:
    """run-with-env.sh under a reused pid: the dead one's counts stay, its live gauges go."""
    # Given the files a dead process left: 5 writes and a live gauge
    previous_run = tmp_path / "previous"
    previous_run.mkdir()
    dead = writer(previous_run, "count", "5", env=env)
    (previous_run / f"gauge_livesum_{dead}.db").write_bytes(b"")
    with metrics_server_process(env, multiproc_dir, tmp_path / "server.log") as (_, url):
        # When a program starts under the dead process's pid (bash's $$ is kept by exec)
        script = (f'cp {previous_run}/counter_{dead}.db {multiproc_dir}/counter_$$.db; '
                  f'touch {multiproc_dir}/gauge_livesum_$$.db; '
                  f'exec {RUN_WITH_ENV} {WRITER} count 1')
        done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                              env={**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
                              timeout=60, check=True)
        pid = int(done.stdout.split()[-1])
        after = scrape(url)

    # Then it added its write to the dead process's 5, and only the live gauge went
    assert writes(after) == 6
    assert after[("memory_zep_redactions_total", (("field_type", "email"),))] == 2
    assert (multiproc_dir / f"counter_{pid}.db").exists()
    assert not (multiproc_dir / f"gauge_livesum_{pid}.db").exists()


def supervised_starts(directory: Path, env: dict[str, str], *between: str) -> None:
    """One parent process (standing for one supervisord) starting programs through
    run-with-env.sh, with ``between`` run after each start."""
    steps = [f"{RUN_WITH_ENV} true; {step}" for step in between] or [f"{RUN_WITH_ENV} true"]
    subprocess.run(["bash", "-c", "; ".join([*steps, "true"])], cwd=ROOT, check=True,
                   env={**env, "PROMETHEUS_MULTIPROC_DIR": str(directory),
                        "SUPERVISOR_ENABLED": "1"}, capture_output=True, timeout=60)


def test_the_directory_is_emptied_once_per_start_of_the_deployment(
    env: dict[str, str], multiproc_dir: Path
) -> None:
    """A new supervisord empties it before its first program; its later starts keep all."""
    # Given the files of an earlier run
    (multiproc_dir / "counter_4242.db").write_bytes(b"earlier run")
    # When a supervisord starts programs, and files appear between two of its starts
    supervised_starts(multiproc_dir, env,
                      f"touch {multiproc_dir}/counter_4343.db",
                      f"touch {multiproc_dir}/histogram_4444.db")
    # Then the earlier run's file went at the first start, this run's stayed
    assert sorted(p.name for p in multiproc_dir.glob("*.db")) == [
        "counter_4343.db", "histogram_4444.db"]
    # And the next supervisord starts from an empty directory
    supervised_starts(multiproc_dir, env)
    assert list(multiproc_dir.glob("*.db")) == []


def test_metrics_clean_by_hand_refuses_while_a_process_of_the_directory_runs(
    cli_env: dict[str, str], env: dict[str, str], multiproc_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A running writer: exit 1, its files kept; once it ended, every file goes."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc_dir))
    writer(multiproc_dir, "count", "1", env=env)
    with holding_writer(multiproc_dir, 1, env) as live:
        refused = CliRunner().invoke(cli, ["metrics-clean"])
        assert refused.exit_code == 1
        assert refused.stderr == (f"memory-worker: error: processes {live.pid} still write to "
                                  f"{multiproc_dir}: stop the deployment first\n")
        assert len(list(multiproc_dir.glob("counter_*.db"))) == 2
    cleaned = CliRunner().invoke(cli, ["metrics-clean"])
    assert cleaned.exit_code == 0, cleaned.output
    assert cleaned.stdout.startswith("Removed ")
    assert list(multiproc_dir.glob("*.db")) == []
