"""``make demo``: the whole stack against the local Zep simulator, and what it did.

Starts the Zep simulator, the supervisord stack (worker, beat, Flower, metrics
server) and the example chat app; walks a conversation, the operational drills
and a recovery by the beat probe, with short holds; prints modes, traces and
metric deltas; stops everything it started, also when interrupted.

The Zep API is ZEP_API_VERSION's (v2 by default; ``ZEP_API_VERSION=v4 make
demo`` runs the same walk on v4). State goes to database 9 of REDIS_URL's host
(emptied first; override with MEMORY_DEMO_REDIS_URL), files to var/demo/.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from memory_worker.config import Settings
from memory_worker.connections import with_database
from memory_worker.errors import DrillAborted
from memory_worker.observation import READ_PATHS, Samples, SimControl, scrape
from memory_worker.zep import Failure, connect
from memory_worker.zep_sim.process import spawn

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VAR = ROOT / "var" / "demo"
KEY = "demo-key"  # the simulator's key: a dummy, not a secret
THREAD = "demo-thread-1"


def say(text: str = "") -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise SystemExit(f"demo: gave up after {seconds:.0f}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def demo_redis_url() -> str:
    explicit = os.environ.get("MEMORY_DEMO_REDIS_URL")
    if explicit:
        return explicit
    return with_database(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), 9)


class Demo:
    def __init__(self, api_key: str = KEY) -> None:
        self.api_key = api_key  # the simulator's and the stack's ZEP_API_KEY
        self.redis_url = demo_redis_url()
        self.conn = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.started: list[Callable[[], None]] = []
        self.sim_url = ""
        self.app_url = ""
        self.metrics_url = ""
        self.env: dict[str, str] = {}
        self.zep_api = "v2"

    # set-up and tear-down

    def start(self) -> None:
        socket_path = ROOT / "var" / "supervisor.sock"
        if socket_path.exists() and self._supervisorctl("pid").returncode == 0:
            raise SystemExit("demo: a supervisord of this checkout is running; stop it first")
        shutil.rmtree(VAR, ignore_errors=True)
        (ROOT / "var" / "log").mkdir(parents=True, exist_ok=True)
        self.conn.flushdb()

        sim, self.sim_url = spawn(VAR / "zep-sim.log", self.api_key)
        self.started.append(lambda: _terminate(sim))
        metrics_port, flower_port, app_port = free_port(), free_port(), free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.app_url = f"http://127.0.0.1:{app_port}"
        self.flower = (f"http://127.0.0.1:{flower_port}", "demo", secrets.token_urlsafe(12))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MEMORY_", "FLAG_ZEP"))},
            "REDIS_URL": self.redis_url, "FLAG_ZEP_WRITE": "true", "FLAG_ZEP_READ": "true",
            "ZEP_API_URL": self.sim_url, "ZEP_API_KEY": self.api_key,
            "MEMORY_DOWNGRADE_HOLD_SECONDS": "4", "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "60",
            "MEMORY_PROBE_INTERVAL_SECONDS": "1", "MEMORY_LOG_FORMAT": "json",
            "MEMORY_SPOOL_DIR": str(VAR / "spool"),
            "PROMETHEUS_MULTIPROC_DIR": str(VAR / "prometheus"),
            "MEMORY_METRICS_PORT": str(metrics_port), "FLOWER_PORT": str(flower_port),
            "FLOWER_BASIC_AUTH": f"{self.flower[1]}:{self.flower[2]}",
        }
        self.env.pop("CELERY_BROKER_URL", None)
        self.zep_api = Settings.from_env(self.env).zep_api_version
        (VAR / "prometheus").mkdir(parents=True, exist_ok=True)
        subprocess.run([str(BIN / "supervisord"), "-c", str(ROOT / "supervisord.conf")],
                       cwd=ROOT, env=self.env, check=True)
        self.started.append(self._shutdown_supervisord)
        wait_for(self._all_running, 60, "supervisord's four programs to be RUNNING")
        wait_for(lambda: _answers(self.metrics_url), 30, "the metrics server")

        app_log = (VAR / "chat_app.log").open("wb")
        app = subprocess.Popen([sys.executable, "-m", "examples.chat_app", "--port",
                                str(app_port)], cwd=ROOT, env=self.env, stdout=app_log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(lambda: _terminate(app))
        wait_for(lambda: _answers(f"{self.app_url}/api/metrics/"), 30, "the example app")

    def stop(self) -> None:
        for undo in reversed(self.started):
            try:
                undo()
            except Exception as exc:  # keep stopping the rest
                say(f"  (while stopping: {type(exc).__name__}: {exc})")
        self.started.clear()

    def _shutdown_supervisord(self) -> None:
        self._supervisorctl("shutdown")
        pid_file = ROOT / "var" / "supervisord.pid"
        wait_for(lambda: not pid_file.exists(), 90, "supervisord to stop its programs")

    def _supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(ROOT / "supervisord.conf"),
                               *args], cwd=ROOT, capture_output=True, text=True,
                              env=self.env or None)

    def _all_running(self) -> bool:
        lines = self._supervisorctl("status").stdout.strip().splitlines()
        return len(lines) == 4 and all(" RUNNING " in f" {line} " for line in lines)

    # what the demo shows

    def status(self) -> dict[str, Any]:
        out = subprocess.run([str(BIN / "memory-worker"), "status", "--json"], cwd=ROOT,
                             env=self.env, capture_output=True, text=True, check=True)
        return dict(json.loads(out.stdout))

    def chat(self, message: str) -> dict[str, Any]:
        answer = httpx.post(f"{self.app_url}/api/chat/", timeout=5,
                            json={"message": message, "thread_id": THREAD})
        answer.raise_for_status()
        return dict(answer.json())

    def run(self) -> bool:
        ok = True
        say(f"== Stack (Zep API {self.zep_api})")
        say(self._supervisorctl("status").stdout.rstrip())
        flower_url, user, password = self.flower

        def flower_workers() -> dict[str, Any]:
            answer = httpx.get(f"{flower_url}/api/workers", params={"refresh": "1"},
                               auth=(user, password), timeout=10)
            return dict(answer.json()) if answer.status_code == 200 else {}

        wait_for(lambda: bool(flower_workers()), 30, "Flower to list the worker")
        refused = httpx.get(f"{flower_url}/api/workers", timeout=10).status_code
        say(f"Flower: lists {', '.join(flower_workers())} with credentials; "
            f"HTTP {refused} without them")
        before = scrape(self.metrics_url)

        say("\n== Conversation (reads inline, writes through the worker)")
        turns = ["Hi, I'm looking for a 2+1 flat in Kyrenia, budget 150.000 GBP.",
                 "My email is deniz@example.com and my mobile 0533 123 45 67.",
                 "Does it have a sea view?"]
        for number, text in enumerate(turns, 1):
            trace = self.chat(text)["trace"]["memory"]
            say(f"turn {number}: source={trace['source']} cached={trace['cached']} "
                f"reason={trace['reason']} mode={trace['mode']} took={trace['took_ms']}ms")
            time.sleep(3.2 if number == 1 else 0.3)  # let turn 1's not_found entry expire
        stored = wait_for(lambda: len(self._messages(THREAD)) == 2 * len(turns), 30,
                          "the conversation in Zep")
        contents = [m["content"] for m in self._messages(THREAD)]
        redacted = next((c for c in contents if "[EMAIL]" in c), "(none)")
        say(f"Zep holds {len(contents)} messages (each once, {stored:.1f}s after the last "
            f"turn); PII redacted: {redacted!r}")
        ok &= len(set(m["uuid"] for m in self._messages(THREAD))) == 2 * len(turns)
        ok &= "deniz@example.com" not in json.dumps(contents)

        say("\n== Drills (memory-worker drill all)")
        drill = subprocess.run(
            [str(BIN / "memory-worker"), "drill", "all", "--zep-sim-url", self.sim_url,
             "--app-url", self.app_url, "--metrics-url", self.metrics_url],
            cwd=ROOT, env=self.env, capture_output=True, text=True)
        say(drill.stdout.rstrip())
        ok &= drill.returncode == 0

        say("\n== Recovery by the beat probe")
        ok &= self._recovery()

        after = scrape(self.metrics_url)
        say("\n== Metric deltas over the demo (metrics server)")
        for line in deltas(before, after):
            say(line)
        say(f"\nFinal status: {json.dumps(self.status())}")
        return ok

    def _recovery(self) -> bool:
        threads = [f"demo-outage-{i}" for i in range(3)]
        self._create_in_zep(threads)  # so their reads reach Zep (v4 knows no other)
        fault = httpx.post(f"{self.sim_url}/_sim/faults", timeout=5, json={
            "method": "GET", "path": READ_PATHS[self.zep_api], "status": 503}).json()
        for thread in threads:
            trace = httpx.post(f"{self.app_url}/api/chat/", timeout=5, json={
                "message": f"are you there {thread[-1]}?", "thread_id": thread}).json()
            say(f"read during outage: source={trace['trace']['memory']['source']} "
                f"reason={trace['trace']['memory']['reason']}")
        status = self.status()
        reason = status["forced"]["reason"] if status["forced"] else None
        say(f"mode: {status['effective_mode']} (forced: {reason})")
        httpx.delete(f"{self.sim_url}/_sim/faults/{fault['id']}", timeout=5)
        took = wait_for(lambda: self.status()["forced"] is None, 60, "the probe to restore reads")
        status = self.status()
        say(f"Zep healed: the beat probe restored {status['effective_mode']} {took:.1f}s later "
            f"(hold 4 s, probe interval 1 s)")
        return bool(status["effective_mode"] == "read_write")

    def _create_in_zep(self, threads: list[str]) -> None:
        """Create threads in Zep through the project's own client, as a first write would."""
        client = connect(Settings.from_env(self.env), self.conn)
        try:
            for thread in threads:
                outcome = client.add_session(thread)
                if isinstance(outcome, Failure):
                    raise SystemExit(f"demo: creating {thread} in Zep failed: {outcome.reason}")
        finally:
            client.close()

    def _messages(self, thread: str) -> list[dict[str, Any]]:
        """What Zep holds for ``thread`` (on v4, in whichever Zep thread carries its id)."""
        try:
            return SimControl(self.sim_url).messages_of(thread, self.zep_api)
        except DrillAborted:
            return []


def deltas(before: Samples, after: Samples) -> list[str]:
    names = sorted({(name, tuple(sorted(labels.items()))) for name, labels, _ in after.rows
                    if name.endswith("_total")})
    lines = []
    for name, labels in names:
        change = after.get(name, **dict(labels)) - before.get(name, **dict(labels))
        if change:
            shown = ",".join(f'{k}="{v}"' for k, v in labels if k != "pid")
            lines.append(f"  {name}{{{shown}}} +{change:g}")
    return sorted(set(lines))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _terminate(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    demo = Demo()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        demo.start()
        ok = demo.run()
    finally:
        say("\n== Stopping everything the demo started")
        demo.stop()
    say("DEMO PASSED" if ok else "DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
