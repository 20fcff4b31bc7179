"""Metrics exposure: multiprocess merging, live state from Redis, web helpers, metrics-server."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
import redis
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from memory_worker import dlq, exposition, metrics
from memory_worker.cli.metrics_commands import metrics_server
from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.modes import ForcedRecord
from tests.contract import CONTRACT
from tests.processes import ROOT, free_port, project_env, silent_redis, wait_for

MEMORY_WORKER = str(Path(sys.executable).with_name("memory-worker"))


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(samples: Samples, name: str, **labels: str) -> float | None:
    matches = [v for found, v in samples.get(name, []) if found == labels]
    assert len(matches) <= 1, f"{name}{labels} appears {len(matches)} times"
    return matches[0] if matches else None


def writer(directory: Path, *args: str, env: dict[str, str]) -> int:
    """Run tests.proc_metrics_writer to its end; return the pid whose files it wrote."""
    done = subprocess.run([sys.executable, "-m", "tests.proc_metrics_writer", *args], cwd=ROOT,
                          env={**env, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
                          capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout.split()[-1])


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return project_env(redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                       ZEP_API_URL="http://127.0.0.1:9", ZEP_API_KEY="test-key")


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


@pytest.fixture
def multiproc_settings(settings: Settings, multiproc_dir: Path) -> Settings:
    return dataclasses.replace(settings, prometheus_multiproc_dir=str(multiproc_dir))


@contextmanager
def metrics_server_process(env: dict[str, str], directory: Path, log: Path
                           ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``memory-worker metrics-server`` on a free loopback port; TERM on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [MEMORY_WORKER, "metrics-server", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
            stdout=subprocess.DEVNULL, stderr=err,
        )
        try:
            wait_for(lambda: proc.poll() is not None or "listening on" in log.read_text(), 30,
                     "the metrics server to listen")
            assert proc.poll() is None, log.read_text()
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def test_counters_written_by_two_processes_are_summed_into_one_series(
    multiproc_settings: Settings, multiproc_dir: Path, env: dict[str, str], conn: redis.Redis
) -> None:
    """Two processes store 3 and 4 writes: the registry serves 7, with no pid label."""
    writer(multiproc_dir, "count", "3", env=env)
    writer(multiproc_dir, "count", "4", env=env)
    samples = parse(generate_latest(exposition.build_registry(multiproc_settings)).decode())
    assert samples["memory_zep_write_success_total"] == [({}, 7.0)]
    assert value(samples, "memory_zep_redactions_total", field_type="email") == 2.0


def test_the_mode_gauge_is_one_hot_from_redis_at_scrape_time(
    multiproc_settings: Settings, conn: redis.Redis, keys: Keys
) -> None:
    """A forced record makes write_only the one mode at 1; clearing it shows at the next scrape."""
    registry = exposition.build_registry(multiproc_settings)
    record = ForcedRecord.new(reason="auth", source="guard", now=time.time(), hold_seconds=300)
    conn.set(keys.forced, record.to_json(), px=600_000)
    for n in range(2):
        dlq.push(conn, keys, {"client_msg_id": f"dl-{n}", "thread_id": "t", "payload": {},
                              "reason": "client_error", "status_code": 400, "attempts": 1,
                              "failed_at": time.time()})

    samples = parse(generate_latest(registry).decode())
    gauge = samples["memory_mode_gauge"]
    assert sorted(labels["mode"] for labels, _ in gauge) == sorted(metrics.MODES)
    assert all(set(labels) == {"mode"} for labels, _ in gauge)
    assert {labels["mode"]: v for labels, v in gauge if v == 1.0} == {"write_only": 1.0}
    assert samples["memory_write_dlq_size"] == [({}, 2.0)]

    conn.delete(keys.forced)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "memory_mode_gauge", mode="read_write") == 1.0
    assert value(samples, "memory_mode_gauge", mode="write_only") == 0.0


def test_a_redis_failure_leaves_a_gap_and_is_counted(settings: Settings) -> None:
    """Nothing listens at REDIS_URL: no mode or DLQ sample, and redis_errors{op=mode} + 1."""
    dead = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    registry = exposition.build_registry(dead)
    first = parse(generate_latest(registry).decode())
    second = parse(generate_latest(registry).decode())
    for samples in (first, second):
        assert "memory_mode_gauge" not in samples and "memory_write_dlq_size" not in samples
    errors_first = value(first, "memory_redis_errors_total", op="mode")
    errors_second = value(second, "memory_redis_errors_total", op="mode")
    assert errors_first is not None and errors_second == errors_first + 1


def test_the_wsgi_helper_answers_metrics(settings: Settings, conn: redis.Redis) -> None:
    """A real WSGI server on loopback serves the helper at /metrics."""

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = make_server("127.0.0.1", 0, exposition.metrics_wsgi_app(settings),
                         handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = parse(response.text)
    assert value(samples, "memory_mode_gauge", mode="read_write") == 1.0
    assert "memory_zep_write_success_total" in samples


def test_the_asgi_helper_answers_metrics(settings: Settings, conn: redis.Redis) -> None:
    """The ASGI helper serves /metrics with the live mode."""

    async def scrape() -> httpx.Response:
        transport = httpx.ASGITransport(app=exposition.metrics_asgi_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/metrics")

    response = asyncio.run(scrape())
    assert response.status_code == 200
    samples = parse(response.text)
    assert value(samples, "memory_mode_gauge", mode="read_write") == 1.0
    assert "memory_zep_context_requests_total" in samples


def test_the_asgi_helper_does_not_block_the_event_loop_on_a_silent_redis(
    settings: Settings,
) -> None:
    """Redis accepts but never answers: the scrape waits out its timeout off the event loop."""
    with silent_redis() as url:
        app = exposition.metrics_asgi_app(dataclasses.replace(settings, redis_url=url))

        async def scrape_while_ticking() -> tuple[httpx.Response, float, float]:
            gaps: list[float] = []
            done = asyncio.Event()

            async def tick() -> None:
                last = time.perf_counter()
                while not done.is_set():
                    await asyncio.sleep(0.01)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            started = time.perf_counter()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                response = await client.get("/metrics")
            took = time.perf_counter() - started
            done.set()
            await ticker
            return response, took, max(gaps)

        response, took, longest_gap = asyncio.run(scrape_while_ticking())
    assert response.status_code == 200
    assert "memory_mode_gauge" not in parse(response.text)
    assert took >= exposition.LIVE_READ_TIMEOUT_S * 0.9  # the read did wait for Redis
    assert longest_gap < 0.2, f"the event loop stalled for {longest_gap:.3f}s"


def test_every_contract_metric_is_on_the_metrics_servers_first_scrape(
    env: dict[str, str], multiproc_dir: Path, tmp_path: Path, conn: redis.Redis
) -> None:
    """The first scrape of a fresh metrics-server lists all SPEC §9 names and label values."""
    with metrics_server_process(env, multiproc_dir, tmp_path / "server.log") as (_, url):
        response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name, (kind, label) in CONTRACT.items():
        family_name = name.removesuffix("_total")
        assert family_name in families, name
        family = families[family_name]
        assert family.type == kind, name
        assert family.samples, name
        if label is not None:
            assert all(label in s.labels for s in family.samples), name
        assert all("pid" not in s.labels for s in family.samples), name
    assert {s.labels["result"] for s in families["memory_probe"].samples} == {
        "success", "failure", "locked"}
    assert {s.labels["mode"] for s in families["memory_mode_gauge"].samples} == set(metrics.MODES)


def test_the_metrics_server_serves_ended_and_running_processes_and_removes_nothing(
    env: dict[str, str], multiproc_dir: Path, tmp_path: Path, conn: redis.Redis
) -> None:
    """Files of ended processes stay and count; so do a running process's after it ends."""
    ended = writer(multiproc_dir, "count", "5", env=env)
    live = subprocess.Popen([sys.executable, "-m", "tests.proc_metrics_writer", "hold", "2"],
                            cwd=ROOT, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and live.stdin is not None
        live_pid = int(live.stdout.readline())
        log = tmp_path / "server.log"
        with metrics_server_process(env, multiproc_dir, log) as (server, url):
            names = {p.name for p in multiproc_dir.glob("*.db")}
            assert {f"counter_{ended}.db", f"counter_{live_pid}.db"} <= names
            samples = parse(httpx.get(url, timeout=10).text)
            assert samples["memory_zep_write_success_total"] == [({}, 7.0)]

            live.stdin.close()  # the live process ends; its counts stay
            live.wait(timeout=30)
            samples = parse(httpx.get(url, timeout=10).text)
            assert samples["memory_zep_write_success_total"] == [({}, 7.0)]

            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=10) == 0
        assert f"Metrics server listening on {url}" in log.read_text().splitlines()
    finally:
        live.kill()
        live.wait(timeout=10)


def test_the_metrics_server_refuses_a_multiproc_dir_that_is_not_a_directory(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROMETHEUS_MULTIPROC_DIR naming a file: exit 1 and one line on stderr."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(not_a_dir))
    result = CliRunner().invoke(metrics_server, ["--port", str(free_port())])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"memory-worker: error: PROMETHEUS_MULTIPROC_DIR {not_a_dir} is not a directory"
    ]
    assert result.stdout == ""


def test_an_ending_pool_process_is_marked_dead(
    multiproc_settings: Settings, multiproc_dir: Path, env: dict[str, str]
) -> None:
    """worker_process_shutdown removes the process's live-gauge file and keeps its counts."""
    pid = writer(multiproc_dir, "pool-exit", env=env)
    names = {p.name for p in multiproc_dir.glob("*.db")}
    assert f"gauge_livesum_{pid}.db" not in names
    assert f"counter_{pid}.db" in names
    samples = parse(generate_latest(exposition.build_registry(multiproc_settings)).decode())
    assert samples["memory_zep_write_success_total"] == [({}, 1.0)]


def test_a_new_pool_process_with_a_dead_process_pid_carries_on_from_its_counts(
    multiproc_settings: Settings, multiproc_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """A pool process whose pid a dead process had adds to that one's counts: no total drops."""
    elsewhere = tmp_path / "dead-process"
    elsewhere.mkdir()
    previous = writer(elsewhere, "count", "5", env=env)
    pool_pid = writer(multiproc_dir, "pool-start", str(elsewhere / f"counter_{previous}.db"),
                      env=env)
    assert (multiproc_dir / f"counter_{pool_pid}.db").exists()
    samples = parse(generate_latest(exposition.build_registry(multiproc_settings)).decode())
    assert samples["memory_zep_write_success_total"] == [({}, 6.0)]
    assert value(samples, "memory_zep_redactions_total", field_type="email") == 1.0


def test_the_metrics_server_reports_a_taken_port_in_one_line(cli_env: dict[str, str]) -> None:
    """Another server holds the port: exit 1 and one line naming it, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(metrics_server, ["--port", str(port)])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [f"memory-worker: error: cannot serve on 127.0.0.1:{port}: "
                      "Address already in use"]
