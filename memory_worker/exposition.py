"""Exposing the metrics: one registry for the metrics server and for web applications (SPEC §9).

``build_registry`` serves two kinds of values:

- *Process metrics* (counters, histograms of ``metrics``). When
  ``PROMETHEUS_MULTIPROC_DIR`` is set, every process of the project writes
  them to files of its own in that directory (``counter_<pid>.db``, ...), and
  the registry merges all the files with prometheus_client's
  ``MultiProcessCollector``: a counter is the sum over every process that ever
  ran, dead ones included. Without it, the registry serves this process's own.
- *Live state*: the effective mode (one-hot ``memory_mode_gauge``) and the
  dead-letter size, read from Redis at scrape time by
  ``metrics.LiveStateCollector``; one sample per mode, no ``pid`` label. A Redis
  that fails leaves a gap in them and counts ``memory_redis_errors_total{op="mode"}``.

The multiprocess directory holds one run of the deployment, and a counter
served from it never goes down while that run lasts, whichever of its
processes stops, starts or restarts (Prometheus reads any drop as a counter
reset, and ``increase()`` would report the dropped amount as new events).
Following prometheus_client's guidance, files are removed only when the whole
deployment starts, never by one of its processes:

- ``start_deployment`` empties the directory once per start of the deployment:
  ``scripts/run-with-env.sh``, which starts the programs of ``supervisord.conf``,
  runs ``memory-worker metrics-clean --deployment ID`` with an ID naming the
  supervisord that started it (its pid and start time). The first program of a
  new supervisord empties the directory, under a lock, before it runs; the other
  programs, and programs restarted later by the same supervisord, find the ID
  already recorded (``.deployment``) and remove nothing. Processes started by
  hand are started after ``memory-worker metrics-clean``, which refuses while a
  process named in the directory is running (``clean_directory``).
- The metrics server removes nothing: restarting it, or any other process,
  leaves every count in place. The files of ended processes stay until the
  next start of the deployment, and their counts stay in the totals.
- Process ids are reused while a deployment runs (``pid_max`` is often 32768).
  A process that finds files named after its own pid must not remove them:
  they hold a dead process's counts, part of the totals already served.
  prometheus_client opens such a file and carries on from its values, so the
  dead process's counts and the new one's add up in one file and every total
  stays what it was. Only the live-gauge files of its pid are removed (a dead
  process has no live value; they hold no counter):
  ``scripts/run-with-env.sh`` does it for the programs of ``supervisord.conf``,
  ``forget_live_gauges`` for each Celery pool process when it starts
  (``worker_process_init``).
- ``mark_dead_on_shutdown`` (``worker_process_shutdown``) tells prometheus_client
  that a pool process has ended, which removes its live-gauge files.

prometheus_client chooses multiprocess mode when it is imported: a process
writes to the directory only when ``PROMETHEUS_MULTIPROC_DIR`` is in its
environment from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import logging
import os
import re
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.types import WSGIApplication

from celery.signals import worker_process_init, worker_process_shutdown
from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, make_wsgi_app
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from memory_worker import dlq, metrics
from memory_worker.clock import Clock, system_clock
from memory_worker.config import Settings
from memory_worker.connections import state_client
from memory_worker.errors import ConfigError
from memory_worker.keys import Keys
from memory_worker.logs import log_event
from memory_worker.modes import base_mode, effective_mode, get_forced
from memory_worker.redis_clients import StateRedis

log = logging.getLogger("memory_worker.exposition")

# A scrape must not hang on a Redis that does not answer (Prometheus times out
# at 10 s by default); a gap in the live values is the honest answer.
LIVE_READ_TIMEOUT_S = 0.5

_PID_FILE = re.compile(r"_(\d+)\.db$")
# In the multiprocess directory, beside the metric files (prometheus_client reads only *.db):
DEPLOYMENT_FILE = ".deployment"  # the deployment whose start emptied the directory last
DEPLOYMENT_LOCK = ".deployment.lock"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def live_state_reader(settings: Settings, conn: StateRedis | None = None,
                      clock: Clock = system_clock) -> Callable[[], tuple[str, int]]:
    """``() -> (effective_mode, dlq_size)`` read from Redis; raises when Redis fails."""
    keys = Keys.of(settings)
    base = base_mode(write=settings.flag_zep_write, read=settings.flag_zep_read)

    def read() -> tuple[str, int]:
        client = conn if conn is not None else state_client(settings, LIVE_READ_TIMEOUT_S)
        forced = get_forced(client, keys, now=clock(), grace_seconds=settings.grace_seconds)
        return effective_mode(base, forced).value, dlq.size(client, keys)

    return read


class _ProcessRegistry(Collector):
    """This process's own metrics (the default registry), inside a registry of our own."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()

    def describe(self) -> Iterable[Metric]:
        return []


def build_registry(settings: Settings | None = None, *, conn: StateRedis | None = None,
                   clock: Clock = system_clock, live_state: bool = True) -> CollectorRegistry:
    """The registry to serve: process metrics (merged across processes) plus the live state.

    Every known label value is created first (``warm_metrics``), so each series
    exists from the first scrape. The live state is collected before the
    process metrics, so a Redis error shows in the same scrape.
    """
    settings = settings if settings is not None else Settings.from_env()
    metrics.warm_metrics()
    registry = CollectorRegistry()
    if live_state:
        registry.register(metrics.LiveStateCollector(live_state_reader(settings, conn, clock)))
    if settings.prometheus_multiproc_dir:
        prometheus_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=settings.prometheus_multiproc_dir
        )
    else:
        registry.register(_ProcessRegistry())
    return registry


def metrics_wsgi_app(settings: Settings | None = None, *, live_state: bool = True
                     ) -> WSGIApplication:
    """A WSGI application answering with the metrics; mount it at ``/metrics``.

    A web application whose processes write to the metrics server's
    ``PROMETHEUS_MULTIPROC_DIR`` is already served by ``memory-worker
    metrics-server``: scrape one of the two, or give the web application a
    directory of its own, or its counts are summed twice.
    """
    app: WSGIApplication = make_wsgi_app(build_registry(settings, live_state=live_state))
    return app


_collected: contextvars.ContextVar[list[Metric]] = contextvars.ContextVar("memory_metrics")


class _Collected(Collector):
    """The families collected for the current request (see ``metrics_asgi_app``)."""

    def collect(self) -> Iterator[Metric]:
        yield from _collected.get([])

    def describe(self) -> Iterable[Metric]:
        return []


def metrics_asgi_app(settings: Settings | None = None, *, live_state: bool = True) -> AsgiApp:
    """An ASGI application answering with the metrics; mount it at ``/metrics``.

    Collecting reads Redis and the multiprocess files, which blocks; it runs in
    a worker thread so that a slow Redis never stalls the event loop. The
    collected families are then rendered by prometheus_client's ASGI app
    (content negotiation, compression). The caveat of ``metrics_wsgi_app``
    about a shared directory applies.
    """
    registry = build_registry(settings, live_state=live_state)
    served = CollectorRegistry()
    served.register(_Collected())
    render: AsgiApp = make_asgi_app(served)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await render(scope, receive, send)
            return
        families = await asyncio.to_thread(lambda: list(registry.collect()))
        token = _collected.set(families)
        try:
            await render(scope, receive, send)
        finally:
            _collected.reset(token)

    return app


def multiproc_dir_problem(directory: str) -> str | None:
    """Why ``directory`` cannot be the multiprocess directory, or None when it can."""
    path = Path(directory)
    if not path.is_dir():
        return "is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def running_writers(directory: str | Path, *,
                    alive: Callable[[int], bool] = pid_alive) -> list[int]:
    """The running processes, this one aside, that files of ``directory`` are named after."""
    pids = {int(m.group(1)) for path in Path(directory).glob("*.db")
            if (m := _PID_FILE.search(path.name)) is not None}
    return sorted(pid for pid in pids - {os.getpid()} if alive(pid))


def clean_directory(directory: str | Path) -> list[Path]:
    """Remove every metric file: for the start of the whole deployment, with none of it running.

    Removing the file of a process that still runs would lower the totals served.
    """
    removed: list[Path] = []
    for path in sorted(Path(directory).glob("*.db")):
        with contextlib.suppress(FileNotFoundError):  # another clean was quicker
            path.unlink()
            removed.append(path)
    return removed


def forget_own_files(directory: str | Path) -> None:
    """Remove this process's files: only for a process that counted nothing."""
    for path in Path(directory).glob(f"*_{os.getpid()}.db"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def start_deployment(directory: str | Path, deployment: str) -> list[Path] | None:
    """Empty ``directory`` the first time ``deployment`` starts a process in it.

    Returns the files removed, or None when ``deployment`` was already
    recorded (a program of it restarting). Processes of one deployment call
    this before they write, under one lock, so the first empties the
    directory before any of them has opened a file in it.
    """
    path = Path(directory)
    lock = os.open(path / DEPLOYMENT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = path / DEPLOYMENT_FILE
        try:
            if marker.read_text(encoding="utf-8") == deployment:
                return None
        except FileNotFoundError:
            pass
        removed = clean_directory(path)
        staged = path / f"{DEPLOYMENT_FILE}.{os.getpid()}"
        staged.write_text(deployment, encoding="utf-8")
        os.replace(staged, marker)
        return removed
    finally:
        os.close(lock)  # closing releases the lock


def serve(registry: CollectorRegistry, host: str, port: int, *,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``registry`` over HTTP on ``host:port`` until SIGTERM or SIGINT.

    ``on_ready`` receives the URL of ``/metrics`` once the port is bound
    (``port`` 0 picks a free one). Must run on the main thread.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        bound_port = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        if on_ready is not None:
            on_ready(f"http://{shown}:{bound_port}/metrics")
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _configured_dir() -> str | None:
    try:
        return Settings.from_env().prometheus_multiproc_dir
    except ConfigError as exc:
        log_event(log, "memory_metrics_dir_unknown", logging.WARNING, error=str(exc))
        return None


def forget_live_gauges(**_: object) -> None:
    """In a new pool process: remove the live-gauge files a dead process with its pid left.

    Its counter and histogram files stay: this process carries on from their
    values, so no total goes down (see the module's docstring).
    """
    directory = _configured_dir()
    if directory is None:
        return
    try:
        prometheus_multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            os.getpid(), directory
        )
    except OSError as exc:  # best-effort: a metrics failure must not stop the pool process
        log_event(log, "memory_metrics_stale_files_kept", logging.WARNING,
                  error=type(exc).__name__)


def mark_dead_on_shutdown(pid: int | None = None, **_: object) -> None:
    """A pool process is ending: let prometheus_client drop its live-gauge files."""
    directory = _configured_dir()
    if directory is None:
        return
    try:
        prometheus_multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            pid if pid is not None else os.getpid(), directory
        )
    except OSError as exc:  # best-effort: a metrics failure must not fail the shutdown
        log_event(log, "memory_metrics_mark_dead_failed", logging.WARNING,
                  error=type(exc).__name__)


worker_process_init.connect(forget_live_gauges, weak=False,
                            dispatch_uid="memory_worker.exposition.forget_live_gauges")
worker_process_shutdown.connect(mark_dead_on_shutdown, weak=False,
                                dispatch_uid="memory_worker.exposition.mark_dead_on_shutdown")
