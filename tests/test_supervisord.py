"""The supervisord stack as operators run it: all programs up, Flower behind basic auth,
the metrics server serving, and a worker stopped under load losing no message (SPEC §11)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from memory_worker.celery_app import WRITE_QUEUE, sender
from memory_worker.config import Settings
from memory_worker.enqueue import Publisher
from memory_worker.keys import Keys
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.processes import (
    ROOT,
    accepted_adds,
    deliveries_settled,
    free_port,
    project_env,
    wait_for,
)

BIN = Path(sys.executable).parent
PROGRAMS = ("memory_beat", "memory_flower", "memory_metrics", "memory_worker")
MEMORY = "*/sessions/*/memory"
THREADS = [f"sv-{n}" for n in range(5)]
MESSAGES = 50


@dataclass
class Stack:
    conf: Path
    home: Path
    flower_url: str
    flower_auth: tuple[str, str]
    metrics_url: str

    def ctl(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=120)
        return done.stdout + done.stderr

    def states(self) -> dict[str, tuple[str, str]]:
        """Program → (state, pid or '')."""
        found: dict[str, tuple[str, str]] = {}
        for line in self.ctl("status").splitlines():
            match = re.match(r"(\S+)\s+([A-Z]+)(?:\s+pid (\d+))?", line)
            if match and match.group(1) in PROGRAMS:
                found[match.group(1)] = (match.group(2), match.group(3) or "")
        return found

    def failed(self) -> bool:
        return any(state == "FATAL" for state, _ in self.states().values())

    def logs_of_the_failed(self) -> str:
        tails = []
        for name, (state, _) in self.states().items():
            log = self.home / "var" / "log" / f"{name}.log"
            if state != "RUNNING" and log.exists():
                tails.append(f"--- {name} ({state})\n" + log.read_text()[-2000:])
        return "\n".join(tails)

    def running(self) -> bool:
        states = self.states()
        return sorted(states) == sorted(PROGRAMS) and all(
            state == "RUNNING" for state, _ in states.values())


@contextmanager
def supervisord_stack(env: dict[str, str], home: Path) -> Iterator[Stack]:
    """supervisord.conf, unchanged, in a directory of its own: its %(here)s/var is the test's."""
    home.mkdir()
    shutil.copy(ROOT / "supervisord.conf", home / "supervisord.conf")
    (home / ".venv").symlink_to(ROOT / ".venv")
    (home / "scripts").symlink_to(ROOT / "scripts")
    (home / "var" / "log").mkdir(parents=True)
    assert len(str(home / "var" / "supervisor.sock")) < 100, "unix socket path too long"
    user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
    stack = Stack(conf=home / "supervisord.conf", home=home,
                  flower_url=f"http://127.0.0.1:{env['FLOWER_PORT']}", flower_auth=(user, password),
                  metrics_url=f"http://127.0.0.1:{env['MEMORY_METRICS_PORT']}/metrics")
    with (home / "supervisord.out").open("wb") as out:
        proc = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(stack.conf)],
                                cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    pids: set[int] = set()
    try:
        wait_for(lambda: proc.poll() is not None or stack.running() or stack.failed(), 40,
                 "every program RUNNING")
        states = stack.states()
        pids = {int(pid) for _, pid in states.values() if pid}
        assert stack.running(), f"{states}\n{stack.logs_of_the_failed()}"
        yield stack
    finally:
        pids |= {int(pid) for _, pid in stack.states().values() if pid}
        stack.ctl("shutdown")
        try:
            proc.wait(timeout=100)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for pid in pids:  # each program leads its own process group
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def stored(sim: ZepSimulator) -> int:
    return sum(len(sim.messages(thread)) for thread in THREADS)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not served")


def test_the_stack_runs_is_monitored_and_a_worker_stop_under_load_loses_no_message(
    redis_url: str, conn: redis.Redis, sim: ZepSimulator, keys: Keys, tmp_path: Path
) -> None:
    """All four programs RUNNING; Flower and metrics answer; stop+start mid-load: each once."""
    env = project_env(
        redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true", ZEP_API_URL=sim.url,
        ZEP_API_KEY="test-key", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
        FLOWER_BASIC_AUTH=f"ops:{secrets.token_urlsafe(12)}", FLOWER_PORT=str(free_port()),
        MEMORY_METRICS_PORT=str(free_port()),
    )
    with supervisord_stack(env, tmp_path / "s") as stack:
        # Flower answers its API with the credentials, lists the worker, refuses without them.
        def flower_lists_the_worker() -> bool:
            try:
                response = httpx.get(f"{stack.flower_url}/api/workers", params={"refresh": "1"},
                                     auth=stack.flower_auth, timeout=10)
            except httpx.TransportError:  # RUNNING before it listens: keep waiting
                return False
            return response.status_code == 200 and any(
                name.startswith("memory_worker@") for name in response.json())

        wait_for(flower_lists_the_worker, 30, "Flower to list the worker", interval=0.5)
        assert httpx.get(f"{stack.flower_url}/api/workers", timeout=10).status_code == 401
        wrong = (stack.flower_auth[0], "wrong-password")
        assert httpx.get(f"{stack.flower_url}/api/workers", auth=wrong,
                         timeout=10).status_code == 401

        # The metrics server serves the live mode.
        scrape = httpx.get(stack.metrics_url, timeout=10)
        assert scrape.status_code == 200
        assert metric(scrape.text, 'memory_mode_gauge{mode="read_write"}') == 1.0

        # Given 50 messages queued and Zep taking 150 ms per write,
        sim.add_fault(Fault(method="POST", path=MEMORY, latency_ms=150))
        settings = Settings.from_env(env)
        publisher = Publisher(settings, conn, sender(settings), clock=time.time)
        for n in range(MESSAGES):
            publisher.enqueue(THREADS[n % len(THREADS)], "user", f"message {n}", f"sv-msg-{n}")

        # when the worker is stopped during the load and started again,
        wait_for(lambda: stored(sim) >= 6, 30, "the load to be under way")
        assert "memory_worker: stopped" in stack.ctl("stop", "memory_worker")
        at_stop = stored(sim)
        assert at_stop < MESSAGES, "the load was over before the stop"
        assert stack.states()["memory_worker"][0] == "STOPPED"
        time.sleep(1.0)
        assert stored(sim) == at_stop, "a message was written while the worker was stopped"
        assert "memory_worker: started" in stack.ctl("start", "memory_worker")

        # then every message is in Zep exactly once.
        def all_delivered() -> bool:
            return (stored(sim) >= MESSAGES and conn.llen(WRITE_QUEUE) == 0
                    and not conn.hlen("unacked"))

        wait_for(all_delivered, 40, "every message to be written", interval=0.2)
        wait_for(lambda: deliveries_settled(conn, keys), 30, "every copy to be accounted for")
        # What was sent and accepted, not what Zep kept.
        assert {accepted_adds(sim, f"sv-msg-{n}") for n in range(MESSAGES)} == {1}
        for t, thread in enumerate(THREADS):
            contents = sorted(m["content"] for m in sim.messages(thread))
            expected = sorted(f"message {n}" for n in range(t, MESSAGES, len(THREADS)))
            assert contents == expected, thread
        assert conn.llen(keys.dlq) == 0
        assert "Warm shutdown" in (stack.home / "var" / "log" / "memory_worker.log").read_text()

        # The metrics server sums the writes of both workers' pool processes.
        scrape = httpx.get(stack.metrics_url, timeout=10)
        assert metric(scrape.text, "memory_zep_write_success_total") >= MESSAGES
    assert not (tmp_path / "s" / "var" / "supervisor.sock").exists()


def test_flower_refuses_to_start_without_basic_auth(tmp_path: Path) -> None:
    """scripts/flower.sh exits 1 with one line when FLOWER_BASIC_AUTH is unset or malformed."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    for auth in (None, "", "ops", "ops:", ":hunter2", "ops:hunter2,", "ops:hunter2,admin"):
        env = dict(base) if auth is None else {**base, "FLOWER_BASIC_AUTH": auth}
        done = subprocess.run([str(ROOT / "scripts" / "flower.sh")], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1, auth
        assert done.stdout == ""
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert "FLOWER_BASIC_AUTH" in done.stderr
        assert "hunter2" not in done.stderr
