"""The chaos soak: N messages through Zep faults, worker kills and a broker restart.

``make soak`` runs the long plan (20,000 messages, a 60 s Zep outage); the test
suite runs the short one (2,000 messages, a shorter outage) through
``tests/test_soak.py``. Both print one JSON report and exit 0 only when every
check holds:

* the simulator holds exactly the N messages sent: every derived uuid once,
  every ``client_msg_id`` once, none missing;
* no email address or phone number of the input reaches the simulator, either
  Redis (their append-only files: everything ever written), the outbox or any
  log; no message's marker word appears in a log line;
* the dead-letter queue is empty;
* no read took longer than its budget (``MEMORY_READ_TIMEOUT_MS``) + 25 ms, less
  what the machine took from it: its run-queue wait and the garbage collector's
  pauses, measured per read (``tests.stalls``; the report shows both figures);
* the Zep outage caused exactly one downgrade and reads came back after it.

What runs, all real processes: the Zep simulator; a state Redis and a broker
(private processes on free ports: a ``redis-server``, append-only, or with
``--broker rabbitmq`` a RabbitMQ node of its own, quorum queues); a
prefork Celery worker and Celery beat (the recovery probe); four producer
processes calling ``enqueue_message`` and ``fetch_thread_context`` like web
handlers. While they run, the simulator fails message adds at random (20 % 5xx,
10 % timeouts, half of them after storing the message; see ``_PATHS``),
answers 429 bursts with
``Retry-After``, and goes down completely once; the worker's pool processes
are killed with -9, the broker is restarted, and the whole worker (master and
pool) is killed with -9 and started again, as its supervisor would. A
watchdog restarts the worker when it exits on its own, as supervisord does
(kombu 5.7 ends a worker that loses a Redis broker while holding messages),
and the report lists those exits. A RabbitMQ broker runs at a lower CPU
priority (``BROKER_NICENESS``): a deployment gives it a host of its own, and
on the soak's one machine its Erlang VM would otherwise hold the web
processes off the CPU for tens of milliseconds, which the read budget is not
about. The random
faults outlast the enqueues until enough writes have met them
(``_keep_the_weather``). The broker's
visibility timeout stays at its default hour: what killed workers held comes
back through the delivery ledger's sweep (``MEMORY_REDELIVER_AFTER_SECONDS``,
short here). On RabbitMQ the broker gives back what a dead consumer held, and
beat does not sweep (``memory_worker.broker``): the soak checks that nothing is
lost without it.

    python -m scripts.soak --plan long [--broker rabbitmq] [--report var/soak/report.json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import redis

from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.zep_sim.process import spawn
from tests.processes import (
    CELERY,
    ROOT,
    PrivateRabbit,
    PrivateRedis,
    SupervisedWorker,
    end_process,
    project_env,
    wait_for,
)
from tests.stalls import CollectorPauses, timed

KEY = "soak-dummy-key"  # the simulator's key: a dummy, not a secret
WRITES = "/api/v2/sessions*"  # session creation and memory adds (POST)
MEMORY = "/api/v2/sessions/*/memory"  # memory adds (POST) and context reads (GET)
ZEP_APIS = ("v2", "v4")
# Which turns a producer reads the threads of: the SPAN turns before its last LAG ones.
READ_LAG = {"v2": 0, "v4": 120}
READ_SPAN = {"v2": 40, "v4": 200}
# Per Zep API: what the weather's random write faults match (message adds, POST), what
# the 429 bursts match (every write: on v4 also user and thread creation), what its read
# faults match (GET: v4's thread routes, context, summary, messages), and what the outage
# takes down. The random faults leave creation alone: a thread's first message makes two
# or three writes (on v2 the add, its 404, the session, the add again), and faulting
# each would fail half or more of those first deliveries, past the write circuit's
# failure-rate threshold from the first second, so the circuit, not the weather, would
# meet the writes. Every delivery meets the stated odds once.
_PATHS = {"v2": (MEMORY, WRITES, MEMORY, "/api/v2/*"),
          "v4": ("/api/v4/threads/*/messages", "/api/v4/*", "/api/v4/threads/*",
                 "/api/v4/*")}
BUDGET_SLACK_MS = 25.0
WEATHER_503_SHARE = 0.1  # the weather lasts until this share of the messages met its 5xx
BROKERS = ("redis", "rabbitmq")
BROKER_NICENESS = 10  # a RabbitMQ broker's; see the module's docstring


@dataclass(frozen=True)
class Plan:
    """How big and how long; every event is placed at a fraction of ``enqueue_seconds``."""

    name: str
    messages: int
    producers: int
    threads: int
    enqueue_seconds: float
    outage_seconds: float
    concurrency: int
    read_every: int  # one read after this many enqueues, per producer
    zep_timeout_ms: int
    redeliver_after_s: int  # MEMORY_REDELIVER_AFTER_SECONDS: the delivery ledger's slack
    settle_seconds: float  # how long after the last enqueue delivery may take
    seed: int = 20261122


PLANS = {
    "short": Plan("short", messages=2000, producers=4, threads=100, enqueue_seconds=40.0,
                  outage_seconds=8.0, concurrency=8, read_every=2, zep_timeout_ms=400,
                  redeliver_after_s=15, settle_seconds=150.0),
    "long": Plan("long", messages=20_000, producers=4, threads=1000, enqueue_seconds=300.0,
                 outage_seconds=60.0, concurrency=8, read_every=3, zep_timeout_ms=400,
                 redeliver_after_s=30, settle_seconds=420.0),
}


# The input: every message has a marker word; every third carries an email and a phone.

def client_msg_id(i: int) -> str:
    return f"soak-{i:06d}"


def thread_of(plan: Plan, i: int) -> str:
    """Conversations: each thread gets its turns one after another, as chats do."""
    per_thread = max(1, plan.messages // plan.threads)
    return f"soak-thread-{(i // per_thread) % plan.threads:04d}"


def marker(i: int) -> str:
    return f"qz{i:06d}qz"


def email(i: int) -> str:
    return f"soak.user{i}@mail{i % 7}.example.com"


def phone(i: int) -> str:
    digits = f"{i:07d}"
    return f"+90 53{i % 10} {digits[:3]} {digits[3:5]} {digits[5:]}"


def has_pii(i: int) -> bool:
    return i % 3 == 0


def content(i: int) -> str:
    text = f"Turn {i} about the flat near the harbour, note {marker(i)}."
    if has_pii(i):
        text += f" Write to {email(i)} or call {phone(i)} after six."
    return text


def leak_needles(plan: Plan) -> list[str]:
    """What must not appear anywhere: every email, and every phone as written and in E.164.

    (Bare digit runs are no needles: they turn up inside any logged float.)
    """
    needles = []
    for i in range(plan.messages):
        if has_pii(i):
            number = phone(i)
            needles += [email(i), number, number.replace(" ", "")]
    return needles


# Producer processes

def produce(plan: Plan, index: int, workdir: Path) -> None:
    """One web process: enqueue its share on schedule, read between, until told to stop."""
    from memory_worker.runtime import (
        configure,
        default_runtime,
        enqueue_message,
        fetch_thread_context,
    )

    configure()  # at start-up, as a web application does: no read pays for building clients
    rng = random.Random(plan.seed + index)
    mine = list(range(index, plan.messages, plan.producers))
    # On v4 a thread Zep has not been given yet answers not_found without a request, so
    # reads of the turns just enqueued would never meet the outage: there the producer
    # reads the threads of turns enqueued earlier (over a wider span: workers behind
    # after a kill or a broker restart have not created the newest of them yet).
    api = default_runtime().settings.zep_api_version
    lag, span = READ_LAG[api], READ_SPAN[api]
    stop = workdir / "stop"
    reads: list[list[Any]] = []
    spooled = errors = 0
    started = time.time()

    def read() -> None:
        recent = mine[max(0, done - lag - span): max(1, done - lag)] or mine[:1]
        thread = thread_of(plan, rng.choice(recent))
        view = rng.choice(("summary", "recent", "facts"))
        (_, meta), took, held = timed(pauses, lambda: fetch_thread_context(thread, view))
        reads.append([round(time.time(), 3), round(took * 1000, 3), meta["source"],
                      meta["reason"], round(held * 1000, 3)])

    pauses = CollectorPauses().start()  # for the life of this process
    done = 0
    for n, i in enumerate(mine):
        due = started + plan.enqueue_seconds * n / len(mine)
        while time.time() < due:
            time.sleep(min(0.05, max(0.0, due - time.time())))
        role = "user" if i % 2 == 0 else "assistant"
        try:
            result = enqueue_message(thread_of(plan, i), role, content(i), client_msg_id(i),
                                     user_id=f"user-of-{thread_of(plan, i)}")
            spooled += bool(result.spooled)
        except Exception as exc:  # reported, and the message counts as lost
            errors += 1
            print(f"enqueue {client_msg_id(i)} failed: {type(exc).__name__}", file=sys.stderr)
        done = n + 1
        if done % plan.read_every == 0:
            read()
    while not stop.exists():  # keep reading: recovery after the outage is observed here
        read()
        time.sleep(0.1)
    summary = {"index": index, "enqueued": len(mine) - errors, "errors": errors,
               "spooled": spooled, "reads": reads}
    (workdir / f"producer-{index}.json").write_text(json.dumps(summary), encoding="utf-8")


# The harness

class Chaos:
    """The simulator's control API, and the fault mix of the soak."""

    def __init__(self, url: str, plan: Plan, zep_api: str = "v2") -> None:
        self.http = httpx.Client(base_url=url, timeout=30.0)
        self.plan = plan
        self.zep_api = zep_api
        self.adds, self.writes, self.reads, self.everything = _PATHS[zep_api]

    def add(self, **fault: Any) -> None:
        self.http.post("/_sim/faults", json=fault).raise_for_status()

    def clear(self) -> None:
        self.http.delete("/_sim/faults").raise_for_status()

    def weather(self) -> None:
        """Adds: 5 % stored-then-stalled, 5 % stalled, 20 % 5xx; reads: 2 % stalls."""
        stall = self.plan.zep_timeout_ms * 2.5
        self.add(method="POST", path=self.adds, latency_ms=stall, process_first=True,
                 probability=0.05)
        self.add(method="POST", path=self.adds, latency_ms=stall, probability=0.05 / 0.95)
        self.add(method="POST", path=self.adds, status=503, probability=0.20 / 0.90)
        self.add(method="GET", path=self.reads, latency_ms=1000, probability=0.02)

    def burst_429(self, times: int, retry_after: int) -> None:
        self.add(method="POST", path=self.writes, status=429, times=times,
                 headers={"Retry-After": str(retry_after)})

    def outage(self) -> None:
        self.clear()
        self.add(path=self.everything, status=503)

    def stored(self, threads: list[str]) -> list[dict[str, Any]]:
        """What Zep holds for the soak's threads (on v4: every thread's messages whose
        metadata names one of them)."""
        out: list[dict[str, Any]] = []
        if self.zep_api == "v4":
            wanted = set(threads)
            answer = self.http.get("/_sim/v4/threads")
            answer.raise_for_status()
            for thread in answer.json()["threads"]:
                listed = self.http.get(f"/_sim/v4/threads/{thread['uuid']}/messages")
                listed.raise_for_status()
                out += [m for m in listed.json()["messages"]
                        if (m.get("metadata") or {}).get("thread_id") in wanted]
            return out
        for thread in threads:
            answer = self.http.get(f"/_sim/sessions/{thread}/messages")
            answer.raise_for_status()
            out += answer.json()["messages"]
        return out

    def requests(self) -> list[dict[str, Any]]:
        answer = self.http.get("/_sim/requests")
        answer.raise_for_status()
        return list(answer.json()["requests"])


@dataclass
class Timeline:
    started: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def mark(self, what: str, **extra: Any) -> float:
        now = time.time()
        self.events.append({"at_s": round(now - self.started, 2), "event": what, **extra})
        print(f"soak: +{now - self.started:6.1f}s {what} {extra or ''}", flush=True)
        return now


def run(plan: Plan, workdir: Path, broker: str = "redis", zep_api: str = "v2"
        ) -> dict[str, Any]:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    cleanup: list[Callable[[], None]] = []
    try:
        return _run(plan, workdir, cleanup, broker, zep_api)
    finally:
        for undo in reversed(cleanup):
            try:
                undo()
            except Exception as exc:  # keep tearing down the rest
                print(f"soak: cleanup step failed: {exc!r}", file=sys.stderr)


def _run(plan: Plan, workdir: Path, cleanup: list[Callable[[], None]],
         broker_kind: str, zep_api: str) -> dict[str, Any]:
    state = PrivateRedis(workdir / "state-redis", appendonly=True).start()
    cleanup.append(state.stop)
    broker: PrivateRedis | PrivateRabbit
    if broker_kind == "rabbitmq":
        rabbit = PrivateRabbit(workdir / "broker-rabbitmq", niceness=BROKER_NICENESS).start()
        broker, broker_url = rabbit, rabbit.url()
    else:
        redis_broker = PrivateRedis(workdir / "broker-redis", appendonly=True).start()
        broker, broker_url = redis_broker, redis_broker.url
    cleanup.append(broker.stop)
    sim_proc, sim_url = spawn(workdir / "zep-sim.log", KEY)
    cleanup.append(lambda: end_process(sim_proc))
    chaos = Chaos(sim_url, plan, zep_api)

    env = project_env(
        state.url, CELERY_BROKER_URL=broker_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
        ZEP_API_URL=sim_url, ZEP_API_KEY=KEY, ZEP_TIMEOUT_MS=str(plan.zep_timeout_ms),
        ZEP_API_VERSION=zep_api,
        MEMORY_SPOOL_DIR=str(workdir / "spool"), MEMORY_DOWNGRADE_HOLD_SECONDS="2",
        MEMORY_DOWNGRADE_HOLD_MAX_SECONDS="6", MEMORY_PROBE_INTERVAL_SECONDS="1",
        MEMORY_LATENCY_DOWNGRADE_MS="0",
        MEMORY_REDELIVER_AFTER_SECONDS=str(plan.redeliver_after_s))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    timeline = Timeline()
    exits: list[dict[str, Any]] = []

    def exited(code: int | None) -> None:
        at = timeline.mark("the worker exited on its own; started again", exit_code=code)
        exits.append({"at_s": round(at - timeline.started, 2), "exit_code": code})

    worker = SupervisedWorker("soak", plan.concurrency, env, workdir / "worker.log",
                              on_exit=exited)
    worker.start()
    cleanup.append(worker.stop)
    beat = _spawn([CELERY, "-A", "memory_worker", "beat", "--loglevel=INFO",
                   f"--schedule={workdir / 'beat-schedule'}"], env, workdir / "beat.log")
    cleanup.append(lambda: end_process(beat))
    wait_for(lambda: "ready." in (workdir / "worker.log").read_text(errors="replace"), 60,
             "the worker to be ready")

    chaos.weather()
    timeline.started = time.time()
    producers = [
        _spawn([sys.executable, "-m", "scripts.soak", "--produce", str(k), "--plan", plan.name,
                "--messages", str(plan.messages), "--workdir", str(workdir)],
               env, workdir / f"producer-{k}.log")
        for k in range(plan.producers)
    ]
    cleanup.extend(functools.partial(end_process, p) for p in producers)
    timeline.mark("producers started", producers=plan.producers, messages=plan.messages)

    e = plan.enqueue_seconds
    outage: dict[str, float] = {}
    for at, action in _schedule(plan):
        _sleep_until(timeline.started + at * e)
        if action == "burst":
            chaos.burst_429(times=30, retry_after=2)
            timeline.mark("429 burst", requests=30, retry_after_s=2)
        elif action == "kill_pool":
            timeline.mark("kill -9 of the worker's pool processes", killed=worker.kill_pool())
        elif action == "broker_restart":
            timeline.mark("broker stopped")
            broker.stop()
            time.sleep(2.0)
            broker.start()
            timeline.mark("broker started again (append-only file reloaded)"
                          if broker_kind == "redis" else
                          "broker started again (quorum queues recovered)")
        elif action == "outage":
            chaos.outage()
            outage["start"] = timeline.mark("Zep outage begins", seconds=plan.outage_seconds)
            time.sleep(plan.outage_seconds)
            chaos.clear()
            chaos.weather()
            outage["end"] = timeline.mark("Zep outage ends")
        elif action == "kill_all":
            worker.kill_all_and_restart()
            timeline.mark("kill -9 of the whole worker (master and pool); started again")

    _sleep_until(timeline.started + e)  # producers are done enqueueing; they keep reading
    _keep_the_weather(plan, chaos, timeline, outage)
    threads = sorted({thread_of(plan, i) for i in range(plan.messages)})
    expected = {client_msg_id(i) for i in range(plan.messages)}
    chaos.clear()  # the weather ends; waiting retries finish
    weather_end = timeline.mark("faults cleared; waiting for delivery")
    settle_deadline = time.time() + plan.settle_seconds
    stored: list[dict[str, Any]] = []
    while time.time() < settle_deadline:
        stored = chaos.stored(threads)
        if len({_identity(m) for m in stored}) >= len(expected):
            break
        time.sleep(2.0)
    timeline.mark("delivery settled", stored=len(stored))
    time.sleep(3.0)  # anything still running would show as a duplicate or an extra
    stored = chaos.stored(threads)
    (workdir / "stop").touch()
    for proc in producers:
        proc.wait(timeout=60)
    worker.stop()
    end_process(beat)

    report = _report(plan, workdir, timeline, outage, weather_end, state, broker, chaos,
                     stored, expected, exits)
    return {"broker": broker_kind, "zep_api": zep_api, **report}


def _identity(message: dict[str, Any]) -> Any:
    """Which message of the soak a stored one is: its client_msg_id (every API keeps it)."""
    return (message.get("metadata") or {}).get("client_msg_id")


def _keep_the_weather(plan: Plan, chaos: Chaos, timeline: Timeline,
                      outage: dict[str, float]) -> None:
    """Keep the weather on until adds carrying a tenth of the messages met its 5xx (an
    add carries several when a worker finds them queued together).

    The writes can lag the enqueues: a circuit opened by a run of failures holds
    them 30 s, and a slow machine drains the queue later. A soak whose faults
    reached few writes proves little, so the weather waits for them, for at most
    three more enqueue phases (a loaded machine drains a v4 queue slowly: an add
    there can take two or three calls); the report's ``zep.writes`` shows what it
    reached.
    """
    wanted = plan.messages * WEATHER_503_SHARE
    deadline = time.time() + 3 * plan.enqueue_seconds
    met = weather_503_messages(chaos.requests(), outage)
    if met >= wanted:
        return
    while met < wanted and time.time() < deadline:
        time.sleep(2.0)
        met = weather_503_messages(chaos.requests(), outage)
    timeline.mark("weather kept on until enough writes met it", weather_503_messages=met)


def write_phases(requests: Iterable[dict[str, Any]], outage: dict[str, float],
                 weather_end: float | None = None) -> dict[str, dict[str, int]]:
    """The statuses of Zep's answers to adds, by phase: under the weather, in the
    outage, and in the calm after the faults were cleared (at ``weather_end``)."""
    phases: dict[str, Counter[str]] = {"weather": Counter(), "outage": Counter(),
                                       "calm": Counter()}
    for r, phase in _adds_by_phase(requests, outage, weather_end):
        phases[phase][str(r["status"])] += 1
    return {name: dict(sorted(tally.items())) for name, tally in phases.items()}


def weather_503_messages(requests: Iterable[dict[str, Any]], outage: dict[str, float],
                         weather_end: float | None = None) -> int:
    """The messages carried by adds the weather answered 503 (counted once per add)."""
    return sum(len(r.get("messages") or ()) for r, phase in
               _adds_by_phase(requests, outage, weather_end)
               if phase == "weather" and r["status"] == 503)


def _adds_by_phase(requests: Iterable[dict[str, Any]], outage: dict[str, float],
                   weather_end: float | None) -> Iterator[tuple[dict[str, Any], str]]:
    for r in requests:
        if r["method"] != "POST" or not r["path"].endswith(("/memory", "/messages")):
            continue
        at = r["time"]
        if weather_end is not None and at >= weather_end:
            yield r, "calm"
        elif "start" in outage and outage["start"] <= at <= outage.get("end", float("inf")):
            yield r, "outage"
        else:
            yield r, "weather"


def _own_ms(read: list[Any]) -> float:
    """A read's milliseconds less those others held its process off the CPU."""
    return float(read[1]) - float(read[4])


def held_into_outage(in_outage: list[Any], reads: list[list[Any]],
                     outage: dict[str, float]) -> bool:
    """No downgrade in the outage because reads were still forced off by an earlier one
    (a chance run of stalled reads in the weather, its hold escalated by failed probes):
    then the outage's reads are blocked and not one of them reaches a failing Zep."""
    if in_outage or "start" not in outage:
        return False
    window = [r for r in reads if outage["start"] <= r[0] <= outage.get("end", float("inf"))]
    failed = sum(1 for r in window if r[2] == "error")
    blocked = sum(1 for r in window if r[2] == "write_only_forced")
    # Fewer failed reads than the threshold (3): the guard had nothing more to count.
    return blocked > 0 and failed < 3


def _schedule(plan: Plan) -> list[tuple[float, str]]:
    return [(0.15, "burst"), (0.25, "kill_pool"), (0.40, "broker_restart"), (0.50, "burst"),
            (0.60, "outage"), (0.85, "kill_all"), (0.92, "burst")]


def _report(plan: Plan, workdir: Path, timeline: Timeline, outage: dict[str, float],
            weather_end: float, state: PrivateRedis, broker: PrivateRedis | PrivateRabbit,
            chaos: Chaos,
            stored: list[dict[str, Any]], expected: set[str],
            worker_exits: list[dict[str, Any]]) -> dict[str, Any]:
    producers = [json.loads((workdir / f"producer-{k}.json").read_text(encoding="utf-8"))
                 for k in range(plan.producers)]
    reads = [r for p in producers for r in p["reads"]]
    budget = Settings().read_timeout_ms + BUDGET_SLACK_MS  # the soak keeps the default
    uuids = [m["uuid"] for m in stored]
    ids = [_identity(m) for m in stored]
    duplicates = (len(uuids) - len(set(uuids))) + (len(ids) - len(set(ids)))
    lost = sorted(expected - set(ids))
    extra = sorted(str(i) for i in set(ids) - expected)

    needles = set(leak_needles(plan))
    places = _leak_places(workdir, state, broker, stored)
    leaks = {place: hits for place, text in places.items()
             if (hits := sorted(pii_in(text) & needles)[:5])}
    markers = {marker(i) for i in range(plan.messages)}
    content_in_logs = sorted({found for place, text in places.items() if place.endswith(".log")
                              for found in _MARKER.findall(text)} & markers)[:5]

    dlq = redis.Redis.from_url(state.url).llen(Keys("mem:").dlq)
    downgrades = _downgrades(workdir)
    in_outage = [d for d in downgrades
                 if outage and outage["start"] <= d["time"] <= outage["end"]]
    back = [r for r in reads if outage and r[0] > outage["end"] and answered(r[2], r[3])]
    requests = chaos.requests()
    statuses = _tally(str(r["status"]) for r in requests)
    # In the soak a 400 to an add can only be Zep's "message_uuid already exists":
    # a write that was stored before its answer was lost, retried and counted as done.
    duplicate_refusals = sum(1 for r in requests if r["method"] == "POST"
                             and r["path"].endswith("/memory") and r["status"] == 400)
    # What was sent, not what a deduplicating store kept: the adds Zep accepted (2xx),
    # counted per message and chunk from the request log.
    accepted = Counter((m.get("client_msg_id"), m.get("chunk")) for r in requests
                       if r["status"] is not None and 200 <= int(r["status"]) < 300
                       for m in r.get("messages") or ())
    accepted_twice = sorted(str(k) for k, n in accepted.items() if n > 1)

    report: dict[str, Any] = {
        "plan": asdict(plan),
        "messages": {"sent": plan.messages,
                     "enqueued": sum(p["enqueued"] for p in producers),
                     "enqueue_errors": sum(p["errors"] for p in producers),
                     "spooled": sum(p["spooled"] for p in producers),
                     "stored": len(stored), "unique_stored": len(set(uuids)),
                     "duplicates": duplicates, "lost": len(lost), "lost_sample": lost[:5],
                     "unexpected": len(extra), "adds_accepted": sum(accepted.values()),
                     "accepted_twice": len(accepted_twice),
                     "accepted_twice_sample": accepted_twice[:5]},
        "leaks": {"pii_places": leaks, "content_in_logs": content_in_logs,
                  "needles": len(needles), "places_checked": sorted(places)},
        "dlq_size": int(dlq),
        # Each read on the wall clock and less the time others held its process off the
        # CPU (``tests.stalls``); the budget holds the second.
        "reads": {"count": len(reads), "max_ms": max((r[1] for r in reads), default=None),
                  "max_own_ms": max((_own_ms(r) for r in reads), default=None),
                  "max_held_ms": max((r[4] for r in reads), default=None),
                  "budget_ms": budget,
                  "over_budget": sum(1 for r in reads if r[1] > budget),
                  "over_budget_own": sum(1 for r in reads if _own_ms(r) > budget),
                  "by_outcome": _tally(f"{r[2]}:{r[3]}" for r in reads)},
        "outage": {"downgrades": len(in_outage),
                   "downgrades_outside": len(downgrades) - len(in_outage),
                   "window_s": [round(outage[k] - timeline.started, 2) for k in ("start", "end")
                                if k in outage],
                   "all_downgrades": [{**d, "time": round(d["time"] - timeline.started, 2)}
                                      for d in downgrades],
                   "reads_back_after_s": round(back[0][0] - outage["end"], 2) if back else None},
        "zep": {"requests": len(requests), "by_status": statuses,
                "writes": write_phases(requests, outage, weather_end),
                "weather_503_messages": weather_503_messages(requests, outage, weather_end),
                "worker_duplicate_uuid_answers": duplicate_refusals,
                # Adds stored before their answer was lost, found by the retry's look at
                # the thread's latest messages (and not sent again).
                "found_landed": len(_events(workdir / "worker.log", "zep_write_found_landed"))},
        "circuit_opened": [
            {"at_s": round(_epoch(e) - timeline.started, 2), "reason": e.get("reason")}
            for e in _events(workdir / "worker.log", "memory_circuit_opened")],
        "ledger": {"republished": len(_events(workdir / "worker.log", "zep_write_republished"))},
        "worker_exits_on_its_own": worker_exits,
        "timeline": timeline.events,
    }
    checks = {
        "exactly_n_stored": len(stored) == plan.messages and not lost and not extra
        and duplicates == 0,
        "no_message_accepted_twice": not accepted_twice,
        "no_pii_leak": not leaks,
        "no_content_in_logs": not content_in_logs,
        "dlq_empty": dlq == 0,
        "reads_within_budget": bool(reads) and max(_own_ms(r) for r in reads) <= budget,
        "one_downgrade_per_outage": len(in_outage) == 1 or held_into_outage(
            in_outage, reads, outage),
        "reads_back_after_outage": bool(back),
    }
    report["checks"] = checks
    report["passed"] = all(checks.values())
    return report


def _leak_places(workdir: Path, state: PrivateRedis, broker: PrivateRedis | PrivateRabbit,
                 stored: list[dict[str, Any]]) -> dict[str, str]:
    """Everything the input could have leaked into, as text, by where it came from
    (a RabbitMQ broker's files: its quorum queues' logs and segments, and its own logs)."""
    places = {"simulator store": json.dumps(stored)}
    broker_name = "broker redis" if isinstance(broker, PrivateRedis) else "broker rabbitmq"
    for server, name in ((state, "state redis"), (broker, broker_name)):
        for path in sorted(server.directory.rglob("*")):
            if path.is_file():
                places[f"{name} {path.relative_to(server.directory)}"] = with_bodies(
                    path.read_bytes().decode("utf-8", "replace"))
    for path in sorted(workdir.rglob("*")):
        if path.is_file() and (path.suffix == ".log" or "spool" in path.parts):
            places[str(path.relative_to(workdir))] = path.read_text(errors="replace")
    return places


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]*[A-Za-z]")
_PHONE = re.compile(r"\+90 ?5\d\d ?\d{3} ?\d\d ?\d\d")
_MARKER = re.compile(r"qz\d{6}qz")
_BODY = re.compile(r'"body": "([A-Za-z0-9+/]{16,}={0,2})"')


def pii_in(text: str) -> set[str]:
    """Every email address and phone number of the soak's shapes in ``text``, as written."""
    return set(_EMAIL.findall(text)) | set(_PHONE.findall(text))


def with_bodies(text: str) -> str:
    """The text and, after it, every Celery message body in it decoded (they are base64)."""
    decoded = []
    for body in _BODY.findall(text):
        with contextlib.suppress(ValueError):
            decoded.append(base64.b64decode(body).decode("utf-8", "replace"))
    return "\n".join([text, *decoded])


_FORCED = re.compile(r"\{[^\n]*\"event\": \"memory_mode_forced\"[^\n]*\}")


def _downgrades(workdir: Path) -> list[dict[str, Any]]:
    """``memory_mode_forced`` lines that took reads away (read_write → write_only)."""
    found = []
    for path in sorted(workdir.glob("*.log")):
        for line in _FORCED.findall(path.read_text(errors="replace")):
            event = json.loads(line)
            if event.get("prev_mode") == "read_write" and event.get("next_mode") == "write_only":
                found.append({"time": _epoch(event), "reason": event.get("reason"),
                              "source": event.get("source"), "log": path.name})
    return found


def _epoch(event: dict[str, Any]) -> float:
    return float(event["ts"])


def answered(source: str, reason: str | None) -> bool:
    """A read that reached Zep (or its answer in a cache): reads are back, found or not."""
    return source in ("zep", "negative_cache") or (source, reason) == ("error", "not_found")


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one event, in order."""
    needle = f'"event": "{event}"'
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if needle in line and line.startswith("{"):
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def _tally(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _sleep_until(moment: float) -> None:
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 0.5))


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(f"soak: terminated by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default="long")
    parser.add_argument("--broker", choices=BROKERS, default="redis",
                        help="the broker: a private Redis (default) or a private RabbitMQ node")
    parser.add_argument("--zep-api", choices=ZEP_APIS, default="v2",
                        help="the Zep API the stack speaks to the simulator")
    parser.add_argument("--messages", type=int, help="override the plan's message count")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "soak")
    parser.add_argument("--report", type=Path, help="also write the JSON report here")
    parser.add_argument("--produce", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = PLANS[args.plan]
    if args.messages is not None:
        plan = replace(plan, messages=args.messages)
    if args.produce is not None:
        produce(plan, args.produce, args.workdir)
        return 0
    signal.signal(signal.SIGTERM, _terminated)  # tear down what was started, then exit
    report = run(plan, args.workdir, args.broker, args.zep_api)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n", encoding="utf-8")
    print("SOAK PASSED" if report["passed"] else "SOAK FAILED: " + ", ".join(
        name for name, ok in report["checks"].items() if not ok))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
