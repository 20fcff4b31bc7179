"""The security audit of an end-to-end run, as tests (SPEC §3, §6, §10, §11).

What ``make demo`` starts (the Zep simulator, the supervisord stack: worker, beat,
Flower, metrics server; and the example chat app) runs with a Zep key drawn at
random for this run, so it cannot appear anywhere by accident. Traffic that
tempts leaks goes through it: messages each carrying a random marker word,
reads (a miss, a hit with context), a 401 and a 503 from Zep on writes (their
error bodies echoing the message), a 503 on a read, a dead letter and its
replay, every drill, a forced mode and its clearing. Then everything an
operator can see is collected: each log file the run wrote, the output of each
CLI command, both ``/metrics`` pages, and Flower's pages. The tests prove:

- the key is in none of it, raw or as the ``Api-Key`` header, URL-encoded,
  base64-encoded (at every alignment), or cut to a recognisable head or tail;
  nor is Flower's password, nor is the key in any file of the run or in Redis;
- no marker (message content) is in a log line, a CLI output or a metric;
- Flower answers 401 to each page without credentials or with wrong ones.

Content in Flower is by design: its task pages show a task's arguments, and the
argument of ``memory.mirror_message`` is the (PII-redacted, SPEC §6) message.
SPEC §10 keeps content out of log lines; Flower is an operator console behind
basic auth (SPEC §3, §11), like the broker that holds the same payload. So
Flower pages are searched for the key only.

Each check is shown able to fail: the markers are in the simulator's store, the
logs are non-empty and name the events the traffic caused, Flower with
credentials lists the worker and the task, and the key search finds every
encoded form planted in a control text.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import redis

from scripts.demo import ROOT, VAR, Demo
from tests.processes import wait_for

BIN = Path(sys.executable).parent
LOG_DIR = ROOT / "var" / "log"
TALK = "audit-talk"

# Flower's pages as an operator opens them; {task} and {worker} are filled in.
FLOWER_PAGES = ("/", "/workers", "/worker/{worker}", "/tasks", "/broker", "/task/{task}",
                "/tasks/datatable?draw=1&start=0&length=100&search%5Bvalue%5D="
                "&order%5B0%5D%5Bcolumn%5D=0&columns%5B0%5D%5Bdata%5D=name"
                "&order%5B0%5D%5Bdir%5D=asc",
                "/api/workers?refresh=1", "/api/tasks", "/api/task/info/{task}",
                "/api/task/types", "/api/queues/length")
# Flower 2.2 serves these without authentication by its own design (for Prometheus and
# load balancers): they are searched for the key and for content like the logs.
FLOWER_PUBLIC = ("/metrics", "/healthcheck")


@dataclass(frozen=True)
class Exhibit:
    """One thing an operator can see: a log, a command's output, a page."""

    kind: str  # "log" | "cli" | "metrics" | "flower" (and "file", "redis", "control")
    name: str
    text: str


@dataclass
class Audit:
    key: str
    flower_password: str
    markers: dict[str, str]  # marker → the thread its message went to
    dead_marker: str
    worker_name: str
    task_id: str
    exhibits: list[Exhibit] = field(default_factory=list)
    cli_exit_codes: dict[str, int] = field(default_factory=dict)
    flower_refusals: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    flower_with_credentials: dict[str, int] = field(default_factory=dict)
    stored: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    redis_values: list[str] = field(default_factory=list)

    def of_kind(self, *kinds: str) -> list[Exhibit]:
        return [e for e in self.exhibits if e.kind in kinds]

    def text(self, name: str) -> str:
        return next(e.text for e in self.exhibits if e.name == name)


def secret_forms(secret: str) -> dict[str, str]:
    """The shapes in which ``secret`` could be written out: raw, encoded, or cut short."""
    forms = {
        "raw": secret,
        "header": f"Api-Key {secret}",
        "url-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "json-escaped": json.dumps(secret)[1:-1],
        "head": secret[:11],
        "tail": secret[-10:],
    }
    data = secret.encode()
    for offset in range(3):
        # Base64 of any text holding the secret holds one of these three runs: the
        # characters that depend only on the secret's bytes, at each byte alignment.
        encoded = base64.b64encode(b"\0" * offset + data).decode()
        first = 4 if offset else 0
        last = 4 * ((offset + len(data)) // 3)
        run = encoded[first:last]
        forms[f"base64@{offset}"] = run
        forms[f"base64url@{offset}"] = run.replace("+", "-").replace("/", "_")
    return forms


def leaks(secret: str, exhibits: list[Exhibit]) -> list[tuple[str, str]]:
    forms = secret_forms(secret)
    return [(exhibit.name, form) for exhibit in exhibits for form, needle in forms.items()
            if needle in exhibit.text]


def random_word(length: int = 14) -> str:
    """Letters only: nothing the PII redactor would take for a phone number."""
    return "mk" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(length - 2))


# the run


def read_from(path: Path, offset: int) -> str:
    """The part of a log written since it was ``offset`` bytes long (all of it if rotated)."""
    raw = path.read_bytes()
    if len(raw) >= offset:
        raw = raw[offset:]
    return raw.decode("utf-8", "replace")


def cli(demo: Demo, audit: Audit, *args: str, label: str = "") -> str:
    done = subprocess.run([str(BIN / "memory-worker"), *args], cwd=ROOT, env=demo.env,
                          capture_output=True, text=True, timeout=120)
    name = "memory-worker " + (label or " ".join(args))
    audit.cli_exit_codes[name] = done.returncode
    audit.exhibits.append(Exhibit("cli", f"{name} (stdout)", done.stdout))
    audit.exhibits.append(Exhibit("cli", f"{name} (stderr)", done.stderr))
    return done.stdout


def chat(demo: Demo, message: str, thread: str, client_msg_id: str) -> dict[str, Any]:
    answer = httpx.post(f"{demo.app_url}/api/chat/", timeout=10, json={
        "message": message, "thread_id": thread, "client_msg_id": client_msg_id})
    answer.raise_for_status()
    return dict(answer.json())


def sim_fault(demo: Demo, **fault: Any) -> int:
    return int(httpx.post(f"{demo.sim_url}/_sim/faults", json=fault, timeout=5).json()["id"])


def sim_messages(demo: Demo, thread: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{demo.sim_url}/_sim/sessions/{thread}/messages", timeout=5)
    return list(answer.json().get("messages", [])) if answer.status_code == 200 else []


def drive_traffic(demo: Demo, audit: Audit) -> None:
    """Writes, reads, Zep errors on both paths, a dead letter, the drills, a forced mode."""
    def say(marker: str, thread: str, n: int) -> dict[str, Any]:
        audit.markers[marker] = thread
        return chat(demo, f"Is the flat {marker} still free? It has a sea view.", thread,
                    f"{thread}.{n}")

    # Given a conversation (its first read is a miss, the next ones negative-cache hits),
    for n in range(4):
        say(random_word(), TALK, n)
    # a write refused with 401 once and a 503 once, their bodies echoing the message,
    # and a read answered 503,
    for thread, status in (("audit-auth", 401), ("audit-5xx", 503)):
        marker = random_word()
        sim_fault(demo, method="POST", path=f"*/sessions/{thread}/memory", status=status,
                  times=1, body={"message": f"refused {marker} with Api-Key header"})
        if status == 503:
            sim_fault(demo, method="GET", path=f"*/sessions/{thread}/memory", status=503,
                      times=1, body={"message": f"failed to read {marker}"})
        say(marker, thread, 0)
    # and a write Zep refuses for good (400 echoing the message): a dead letter;
    dead = sim_fault(demo, method="POST", path="*/sessions/audit-dead/memory", status=400,
                     body={"message": f"invalid message: {audit.dead_marker}"})
    reply = say(audit.dead_marker, "audit-dead", 0)
    audit.task_id = reply["trace"]["writes"]["user"]["task_id"]
    wait_for(lambda: demo.status()["dlq_size"] >= 2, 30, "the dead letters", interval=0.2)
    httpx.delete(f"{demo.sim_url}/_sim/faults/{dead}", timeout=5)

    # when every other message has been written,
    def written() -> bool:
        audit.stored = {t: sim_messages(demo, t) for t in set(audit.markers.values())}
        return all(any(m in s["content"] for s in audit.stored[t])
                   for m, t in audit.markers.items() if m != audit.dead_marker)

    wait_for(written, 40, "the writes, retried ones included", interval=0.2)

    # a read returns the conversation as context (a hit after the cache is invalidated),
    cli(demo, audit, "invalidate", TALK)
    trace = say(random_word(), TALK, 4)["trace"]["memory"]
    assert (trace["source"], trace["used"]) == ("zep", True), trace
    # the operator lists and replays the dead letters and runs every command,
    cli(demo, audit, "dlq", "list")
    cli(demo, audit, "dlq", "list", "--json")
    cli(demo, audit, "dlq", "replay")
    cli(demo, audit, "status")
    cli(demo, audit, "status", "--json")
    cli(demo, audit, "config", "check")
    cli(demo, audit, "probe")
    cli(demo, audit, "spool", "drain")
    cli(demo, audit, "drill", "all", "--zep-sim-url", demo.sim_url, "--app-url",
        demo.app_url, "--metrics-url", demo.metrics_url, label="drill all")
    cli(demo, audit, "force", "audit", "--ttl", "60")
    cli(demo, audit, "status")
    cli(demo, audit, "status", "--json")
    cli(demo, audit, "probe")
    cli(demo, audit, "clear")
    cli(demo, audit, "reset-failures")
    cli(demo, audit, "--help")
    cli(demo, audit, "drill", "--help")

    def all_written() -> bool:
        audit.stored = {t: sim_messages(demo, t) for t in set(audit.markers.values())}
        return all(any(m in s["content"] for s in audit.stored[t])
                   for m, t in audit.markers.items())

    wait_for(all_written, 40, "every write, the replayed ones included", interval=0.2)


def visit_flower(demo: Demo, audit: Audit) -> None:
    url, user, password = demo.flower
    auth = (user, password)

    def workers() -> dict[str, Any]:
        answer = httpx.get(f"{url}/api/workers", params={"refresh": "1"}, auth=auth, timeout=10)
        return dict(answer.json()) if answer.status_code == 200 else {}

    wait_for(lambda: bool(workers()), 30, "Flower to list the worker", interval=0.5)
    audit.worker_name = next(iter(workers()))
    wait_for(lambda: audit.task_id in httpx.get(f"{url}/api/tasks", auth=auth,
                                                timeout=10).text,
             30, "Flower to know the dead-lettered task", interval=0.5)
    for template in FLOWER_PAGES:
        page = template.format(worker=audit.worker_name, task=audit.task_id)
        answer = httpx.get(url + page, auth=auth, timeout=30)
        audit.flower_with_credentials[page] = answer.status_code
        audit.exhibits.append(Exhibit("flower", f"Flower {page}", answer.text))
        refusals = (httpx.get(url + page, timeout=10).status_code,
                    httpx.get(url + page, auth=(user, "wrong-" + password), timeout=10
                              ).status_code,
                    httpx.get(url + page, auth=("admin", password), timeout=10).status_code)
        audit.flower_refusals[page] = refusals
    revoke = f"/api/task/revoke/{audit.task_id}"
    audit.flower_refusals[f"POST {revoke}"] = (
        httpx.post(url + revoke, timeout=10).status_code,
        httpx.post(url + revoke, auth=(user, "wrong-" + password), timeout=10).status_code,
        httpx.post(url + revoke, auth=("admin", password), timeout=10).status_code)
    for page in FLOWER_PUBLIC:
        answer = httpx.get(url + page, timeout=10)
        audit.exhibits.append(Exhibit("flower", f"Flower {page} (public)", answer.text))


def collect_files(audit: Audit, log_offsets: dict[Path, int]) -> None:
    """Every log the run wrote (this run's part of the shared ones), and every file of it."""
    for path in sorted(LOG_DIR.glob("*.log")):
        audit.exhibits.append(Exhibit("log", str(path.relative_to(ROOT)),
                                      read_from(path, log_offsets.get(path, 0))))
    for path in sorted(VAR.rglob("*")):
        if path.is_file():
            audit.files[str(path.relative_to(ROOT))] = path.read_bytes()
            if path.suffix == ".log":
                audit.exhibits.append(Exhibit("log", str(path.relative_to(ROOT)),
                                              path.read_text(errors="replace")))
    for path in (ROOT / "var").glob("celerybeat-schedule*"):
        audit.files[str(path.relative_to(ROOT))] = path.read_bytes()


def collect_redis(conn: redis.Redis, audit: Audit) -> None:
    for key in conn.scan_iter(count=500):
        kind = conn.type(key)
        value: object = None
        if kind == "string":
            value = conn.get(key)
        elif kind == "list":
            value = conn.lrange(key, 0, -1)
        elif kind == "hash":
            value = conn.hgetall(key)
        elif kind == "set":
            value = conn.smembers(key)
        elif kind == "zset":
            value = conn.zrange(key, 0, -1)
        audit.redis_values.append(f"{key} {value!r}")


@pytest.fixture(scope="module")
def audit(redis_url: str) -> Iterator[Audit]:
    """The whole run, once for the module's tests: traffic, then everything collected."""
    run = Audit(key=f"zk_{secrets.token_hex(10)}/{secrets.token_urlsafe(12)}+=",
                flower_password="", markers={}, dead_marker=random_word(), worker_name="",
                task_id="")
    log_offsets = {path: path.stat().st_size for path in LOG_DIR.glob("*.log")}
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEMORY_DEMO_REDIS_URL", redis_url)
        demo = Demo(api_key=run.key)
    try:
        demo.start()
        run.flower_password = demo.flower[2]
        drive_traffic(demo, run)
        visit_flower(demo, run)
        for name, url in (("metrics server /metrics", demo.metrics_url),
                          ("chat app /api/metrics/", f"{demo.app_url}/api/metrics/")):
            run.exhibits.append(Exhibit("metrics", name, httpx.get(url, timeout=10).text))
    finally:
        demo.stop()  # the logs are complete once every process has ended
    try:
        collect_files(run, log_offsets)
        collect_redis(conn, run)
    finally:
        conn.flushdb()
        conn.close()
    print(summary(run))  # shown with `pytest -s`
    yield run


def summary(run: Audit) -> str:
    kinds = ("log", "cli", "metrics", "flower")
    counts = ", ".join(
        f"{len(run.of_kind(k))} {k} ({sum(len(e.text.encode()) for e in run.of_kind(k))} B)"
        for k in kinds)
    in_flower = sum(any(m in e.text for m in run.markers) for e in run.of_kind("flower"))
    return (f"\naudit: {counts}; {len(run.files)} files of the run "
            f"({sum(map(len, run.files.values()))} B); {len(run.redis_values)} Redis keys; "
            f"content markers shown by {in_flower} Flower page(s), by design")


# the audit


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_audit_collected_a_real_run(audit: Audit) -> None:
    """Non-vacuity: markers stored, logs name the events, Flower shows worker and task."""
    for marker, thread in audit.markers.items():
        assert any(marker in m["content"] for m in audit.stored[thread]), marker
    assert len(audit.markers) == 8
    logs = {e.name: e.text for e in audit.of_kind("log")}
    for program in ("memory_worker", "memory_beat", "memory_flower", "memory_metrics"):
        assert logs[f"var/log/{program}.log"].strip(), f"{program} wrote nothing"
    worker = logs["var/log/memory_worker.log"]
    for event in ('"zep_write_retry"', '"reason": "auth"', '"reason": "server_error"',
                  '"zep_write_dead_lettered"', "Warm shutdown"):
        assert event in worker, event
    assert "memory.probe_recovery" in logs["var/log/memory_beat.log"]
    assert "listening on" in logs["var/demo/zep-sim.log"]
    assert "memory_mode_forced" in logs["var/demo/chat_app.log"]  # the drills' downgrades
    assert set(audit.cli_exit_codes.values()) == {0}, audit.cli_exit_codes
    assert all(f"PASS {name}" in audit.text("memory-worker drill all (stdout)")
               for name in ("auth", "timeout", "probe-fail"))
    assert "audit-dead.0" in audit.text("memory-worker dlq list (stdout)")
    assert "Replayed 2" in audit.text("memory-worker dlq replay (stdout)")
    assert "ZEP_API_KEY=(set)" in audit.text("memory-worker config check (stdout)")
    for exhibit in audit.of_kind("metrics"):
        assert "memory_zep_write_success_total" in exhibit.text, exhibit.name
    assert set(audit.flower_with_credentials.values()) == {200}, audit.flower_with_credentials
    assert audit.worker_name in audit.text("Flower /api/workers?refresh=1")
    task_page = audit.text(f"Flower /task/{audit.task_id}")
    assert audit.task_id in task_page and "memory.mirror_message" in task_page
    assert any(name.endswith(".db") for name in audit.files)  # the workers' metric files
    assert any("write:dlq" in value or "write:done" in value for value in audit.redis_values)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_key_search_finds_every_form_it_looks_for(audit: Audit) -> None:
    """A control: the key planted raw, in a header, URL-encoded or base64-encoded is found."""
    header = f"Authorization: Api-Key {audit.key}"
    planted = {
        "raw": f"key={audit.key};",
        "url": f"http://zep/?api_key={quote(audit.key, safe='')}",
        "form": f"api_key={quote_plus(audit.key)}",
        "json": json.dumps({"headers": {"authorization": f"Api-Key {audit.key}"}}),
        "cut": f"key {audit.key[:11]}…",
    }
    for offset in range(3):
        wrapped = ("x" * offset + header).encode()
        planted[f"base64@{offset}"] = base64.b64encode(wrapped).decode()
        planted[f"base64url@{offset}"] = base64.urlsafe_b64encode(wrapped).decode()
    for name, text in planted.items():
        assert leaks(audit.key, [Exhibit("control", name, text)]), name
    assert quote(audit.key, safe="") != audit.key  # the URL-encoded form is a form of its own


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_key_appears_in_no_log_cli_output_metric_or_flower_page(audit: Audit) -> None:
    """SPEC §3: ZEP_API_KEY is never printed or logged, nor served."""
    assert audit.of_kind("log") and audit.of_kind("cli") and audit.of_kind("flower")
    assert leaks(audit.key, audit.exhibits) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_key_is_in_no_file_of_the_run_nor_in_redis(audit: Audit) -> None:
    """Metric files, spool, beat schedule and every Redis value are free of the key too."""
    files = [Exhibit("file", name, data.decode("latin-1")) for name, data in audit.files.items()]
    assert leaks(audit.key, files) == []
    assert leaks(audit.key, [Exhibit("redis", "values", "\n".join(audit.redis_values))]) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_flowers_password_appears_in_no_log_cli_output_metric_or_page(audit: Audit) -> None:
    """FLOWER_BASIC_AUTH is a secret as well (`config check` shows it as set/unset)."""
    assert len(audit.flower_password) >= 12
    assert leaks(audit.flower_password, audit.exhibits) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_message_content_appears_in_no_log_line_cli_output_or_metric(audit: Audit) -> None:
    """SPEC §10: never the message content in a log line; nor in what commands print,
    metrics, or the pages Flower serves without credentials."""
    public = [e for e in audit.of_kind("flower") if e.name.endswith("(public)")]
    assert len(public) == len(FLOWER_PUBLIC)
    seen = [(exhibit.name, marker, line[:300])
            for exhibit in [*audit.of_kind("log", "cli", "metrics"), *public]
            for line in exhibit.text.splitlines()
            for marker in audit.markers if marker in line]
    assert seen == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_flower_refuses_every_page_without_credentials_or_with_wrong_ones(audit: Audit) -> None:
    """401 without credentials, with a wrong password, and with a wrong user."""
    assert len(audit.flower_refusals) == len(FLOWER_PAGES) + 1
    wrong = {page: codes for page, codes in audit.flower_refusals.items()
             if codes != (401, 401, 401)}
    assert wrong == {}
