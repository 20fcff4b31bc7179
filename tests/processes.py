"""Real Celery worker and beat processes for integration tests (no Docker needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))


def project_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The current environment with the project's variables replaced by test values."""
    from memory_worker.config import VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update({"REDIS_URL": redis_url, "MEMORY_LOG_FORMAT": "json"})
    env.update(extra)
    return env


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def celery_process(args: list[str], env: Mapping[str, str], log_path: Path
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A memory_worker ARGS``; on exit TERM it (warm) and then KILL its group."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([CELERY, "-A", "memory_worker", *args], cwd=ROOT, env=dict(env),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def worker_args(name: str, concurrency: int = 1) -> list[str]:
    return ["worker", "--loglevel=INFO", f"--hostname={name}@%h", "--pool=prefork",
            f"--concurrency={concurrency}", "-Q", "memory_writes,memory_control",
            "--without-mingle", "--without-gossip"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test may stop and restart."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            raise AssertionError("redis-server is not installed (make test installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_for(lambda: _pings(client), 10, f"redis-server on port {self.port}")
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pings(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.RedisError:
        return False
