"""The Celery application: its settings, and real worker and beat processes starting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from memory_worker.celery_app import (
    CONTROL_QUEUE,
    LONGEST_RETRY_COUNTDOWN_S,
    PROBE_TASK,
    WRITE_QUEUE,
    celery_config,
)
from memory_worker.config import Settings
from tests.processes import CELERY, ROOT, celery_process, project_env, wait_for, worker_args


def test_delivery_settings_give_at_least_once_execution() -> None:
    """Late ack, requeue on worker loss, prefetch 1, JSON without compression."""
    conf = celery_config(Settings())
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert conf["task_compression"] is None


def test_visibility_timeout_outlasts_the_longest_retry_countdown() -> None:
    """A retry waiting for its ETA must not be redelivered to another worker meanwhile."""
    conf = celery_config(Settings())
    assert conf["broker_transport_options"]["visibility_timeout"] > 2 * LONGEST_RETRY_COUNTDOWN_S
    short = celery_config(Settings(broker_visibility_timeout_seconds=45))
    assert short["broker_transport_options"]["visibility_timeout"] == 45
    assert conf["broker_transport_options"]["socket_timeout"] > 0


def test_probe_runs_on_the_control_queue_and_expires_after_one_interval() -> None:
    """Routed in task_routes (not only the beat entry); a stale probe is dropped."""
    conf = celery_config(Settings(probe_interval_seconds=7))
    assert conf["task_routes"][PROBE_TASK]["queue"] == CONTROL_QUEUE
    entry = conf["beat_schedule"]["memory-probe-recovery"]
    assert entry["task"] == PROBE_TASK and entry["schedule"].total_seconds() == 7
    assert entry["options"]["expires"] == 7.0
    assert {q.name for q in conf["task_queues"]} == {WRITE_QUEUE, CONTROL_QUEUE}


def test_bad_configuration_stops_worker_and_beat_with_one_line(redis_url: str) -> None:
    """celery worker/beat with a bad variable: exit 1, one line naming it."""
    env = project_env(redis_url, MEMORY_PROBE_INTERVAL_SECONDS="often")
    for command in ("worker", "beat"):
        proc = subprocess.run([CELERY, "-A", "memory_worker", command], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "memory_worker: configuration error: MEMORY_PROBE_INTERVAL_SECONDS: "
            "expected a whole number, got 'often'"
        ]


def test_a_real_worker_starts_consumes_both_queues_and_stops_warm(
    conn: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """`celery -A memory_worker worker` answers ping on memory_writes and memory_control."""
    from memory_worker import app

    env = project_env(redis_url)
    app.conf.broker_url = redis_url
    with celery_process(worker_args("t1"), env, tmp_path / "worker.log") as proc:
        wait_for(lambda: bool(app.control.ping(timeout=0.5)), 60, "the worker to answer ping")
        queues = app.control.inspect(timeout=2).active_queues() or {}
        names = {q["name"] for worker in queues.values() for q in worker}
        assert names == {WRITE_QUEUE, CONTROL_QUEUE}
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert "Warm shutdown" in (tmp_path / "worker.log").read_text()


def test_a_real_beat_publishes_the_probe_on_the_control_queue(
    conn: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """`celery -A memory_worker beat` sends memory.probe_recovery every interval."""
    env = project_env(redis_url, MEMORY_PROBE_INTERVAL_SECONDS="1")
    args = ["beat", "--loglevel=INFO", f"--schedule={tmp_path / 'beat-schedule'}"]
    with celery_process(args, env, tmp_path / "beat.log"):
        wait_for(lambda: conn.llen(CONTROL_QUEUE) >= 2, 30, "two probes on memory_control")
    assert conn.llen(WRITE_QUEUE) == 0
    assert "memory.probe_recovery" in (tmp_path / "beat.log").read_text()


_HOST_PROJECT = """
import sys
from celery import Celery, current_app, shared_task
from celery._state import default_app

order = sys.argv[1]
if order == "library-first":
    import memory_worker  # noqa: F401
host = Celery("host_project", broker="memory://")
if order == "host-first":
    import memory_worker  # noqa: F401, E402

@shared_task(name="host.add")
def add(x, y):
    return x + y

print(add.app.main, current_app.main, default_app.main if default_app else None)
"""


def test_importing_the_library_leaves_the_hosts_celery_app_current(tmp_path: Path) -> None:
    """A host's ``@shared_task`` goes through the host's app, whichever is imported first."""
    script = tmp_path / "host.py"
    script.write_text(_HOST_PROJECT)
    for order in ("host-first", "library-first"):
        out = subprocess.run([sys.executable, str(script), order], cwd=ROOT, capture_output=True,
                             text=True, check=True, env=project_env("redis://127.0.0.1:1/0"))
        bound, current, default = out.stdout.split()
        assert (bound, current) == ("host_project", "host_project"), (order, out.stdout)
        assert default != "memory_worker", order


def test_importing_the_library_alone_does_not_make_its_app_current(tmp_path: Path) -> None:
    """Without a host app, Celery's fallback app stays current, not the library's."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import memory_worker; from celery import current_app; print(current_app.main)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env=project_env("redis://127.0.0.1:1/0"))
    assert out.stdout.strip() != "memory_worker"
