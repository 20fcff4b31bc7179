"""The go-live checklist's drills, executable against a running stack and its simulator.

Each drill records the starting state (``read_status``, and the metrics at
``metrics_url`` when one is given), injects its fault through the Zep
simulator's control API (``POST /_sim/faults``), drives reads — through the
example app's ``/api/chat/`` when ``app_url`` is given, else in this process —
observes what the guard did, and cleans up:

    auth        a 401 on reads forces write_only, reason auth, at the first read
    timeout     reads slower than MEMORY_READ_TIMEOUT_MS force it once
                MEMORY_DOWNGRADE_THRESHOLD of them failed, reason consecutive_failures
    probe-fail  a forced record whose hold is over, Zep failing: the probe re-forces
                with reason probe_failed and a longer hold; Zep healed, the next probe
                restores reads (an escalated hold longer than ``recovery_wait_limit``
                is first replaced by a short one, so the drill does not wait it out)

A counter is checked where its increment happened: in this process's registry
when the read or the probe ran here, at ``metrics_url`` when the app or the
beat did it (and not at all without a metrics URL).

The faults go on the read routes of the stack's Zep API (``ZEP_API_VERSION``). Each
drill thread is created in Zep through the stack's own Zep client before it is
read, so the read reaches Zep on either API (on v4 a thread Zep has not seen
answers ``not_found`` without a request).

Cleaning up removes the drill's faults and clears the forced record the drill
caused (``clear``, as an operator would), so drills run back to back and leave
the deployment in its base mode. A drill refuses to start while a forced record
exists: it never clears a record it did not cause.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import redis
from prometheus_client import REGISTRY

from memory_worker import cache, modes
from memory_worker.clock import Clock, system_clock
from memory_worker.config import Settings
from memory_worker.connections import state_client
from memory_worker.errors import ConfigError, DrillAborted
from memory_worker.guard import Guard
from memory_worker.keys import Keys
from memory_worker.observation import READ_PATHS, Samples, SimControl, http_call, scrape
from memory_worker.probe import ProbeResult
from memory_worker.redis_clients import StateRedis
from memory_worker.runtime import Runtime
from memory_worker.status import Status, read_status
from memory_worker.zep import Failure

DRILL_NAMES: tuple[str, ...] = ("auth", "timeout", "probe-fail")
DOWNGRADES = "memory_zep_downgrades_total"
PROBES = "memory_probe_total"

Meta = dict[str, Any]


@dataclass(frozen=True)
class DrillResult:
    name: str
    passed: bool
    observations: tuple[str, ...]
    why: str | None = None

    def line(self) -> str:
        seen = "; ".join(self.observations)
        if self.passed:
            return f"PASS {self.name}: {seen}"
        return f"FAIL {self.name}: {self.why}" + (f" (observed: {seen})" if seen else "")


@dataclass
class Stack:
    """The deployment under drill, as this process reaches it."""

    settings: Settings
    sim: SimControl
    app_url: str | None = None  # reads through the app's /api/chat/, else in this process
    metrics_url: str | None = None
    wait_for_beat: bool = False  # probe-fail: the running beat probes, not this process
    drill_hold_seconds: int = 1
    recovery_wait_limit: float = 30.0
    clock: Clock = system_clock
    sleep: Callable[[float], None] = time.sleep
    conn: StateRedis = field(init=False)
    keys: Keys = field(init=False)
    _runtime: Runtime | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.conn = state_client(self.settings)
        self.keys = Keys.of(self.settings)

    @property
    def base(self) -> modes.Mode:
        return modes.base_mode(write=self.settings.flag_zep_write,
                               read=self.settings.flag_zep_read)

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(self.settings, clock=self.clock)
        return self._runtime

    def status(self) -> Status:
        return read_status(self.conn, self.settings, self.keys, now=self.clock())

    def read(self, thread_id: str) -> Meta:
        """One read of the thread's summary, by the app or in this process; its meta."""
        if self.app_url is None:
            return self.runtime.fetch(thread_id, "summary")[1]
        url = f"{self.app_url.rstrip('/')}/api/chat/"
        status, raw = http_call("POST", url, {"message": "drill read", "thread_id": thread_id,
                                          "client_msg_id": f"{thread_id}.{secrets.token_hex(4)}"})
        if status != 200:
            answer = raw[:200].decode(errors="replace")
            raise DrillAborted(f"POST {url} answered {status}: {answer}")
        try:
            meta: Meta = dict(json.loads(raw)["trace"]["memory"])
        except (ValueError, KeyError, TypeError):
            raise DrillAborted(f"POST {url} did not answer with trace.memory") from None
        return meta

    def prepare(self, thread_id: str) -> None:
        """Create the thread in Zep (v4: and its id mapping) so that reads of it reach Zep."""
        try:
            outcome = self.runtime.zep.add_session(thread_id)
        except ConfigError as exc:
            raise DrillAborted(f"cannot reach Zep from this process: {exc}") from None
        if isinstance(outcome, Failure):
            raise DrillAborted(f"creating the drill's thread in Zep failed: {outcome.reason}"
                               + (f" ({outcome.message})" if outcome.message else ""))

    def seed(self, thread_id: str, summary: str) -> None:
        """Give a prepared thread a summary through the simulator, on the stack's API."""
        if self.settings.zep_api_version != "v4":
            self.sim.seed(thread_id, summary)
            return
        thread_uuid = self.conn.get(self.keys.zep_thread(thread_id))
        if thread_uuid is None:
            raise DrillAborted(f"no Zep thread is mapped for {thread_id}")
        self.sim.seed_thread(thread_uuid if isinstance(thread_uuid, str)
                             else bytes(thread_uuid).decode(), summary)

    def probe_here(self) -> ProbeResult:
        try:
            return self.runtime.prober().run().result
        except ConfigError as exc:
            raise DrillAborted(f"cannot probe from this process: {exc}") from None

    def force_briefly(self) -> modes.ForcedRecord:
        """Force write_only as an operator would, for ``drill_hold_seconds``."""
        now = self.clock()
        record = modes.ForcedRecord.new(reason="drill", source="ops", now=now,
                                        hold_seconds=self.drill_hold_seconds)
        modes.force(self.conn, self.keys, record, base=self.base,
                    grace_seconds=self.settings.grace_seconds, now=now)
        return record

    def close(self) -> None:
        if self._runtime is not None:
            with contextlib.suppress(ConfigError):
                self._runtime.zep.close()


class _Run:
    """One drill in progress: its notes, faults, threads and starting point."""

    def __init__(self, name: str, stack: Stack) -> None:
        self.name, self.stack = name, stack
        self.notes: list[str] = []
        self.faults: list[int] = []
        self.threads: list[str] = []
        self.token = secrets.token_hex(4)
        self.started = stack.clock()
        self.before_here = Samples(())
        self.before_there: Samples | None = None
        self.began = False  # past the start checks: the drill may have changed state

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fail(self, why: str) -> NoReturn:
        raise DrillAborted(why)

    def thread(self, label: str) -> str:
        """A thread of this drill, created in Zep (before any fault is injected)."""
        thread_id = f"drill-{self.name}-{self.token}-{label}"
        self.threads.append(thread_id)
        self.stack.prepare(thread_id)
        return thread_id

    def fault(self, **spec: object) -> None:
        path = READ_PATHS[self.stack.settings.zep_api_version]
        self.faults.append(self.stack.sim.add_fault(method="GET", path=path, **spec))

    def heal(self) -> None:
        while self.faults:
            self.stack.sim.remove_fault(self.faults.pop())

    def start(self) -> None:
        self.stack.sim.check()
        status = self.stack.status()
        if not status.base_mode.reads:
            self.fail(f"the base mode is {status.base_mode.value}: reads are off "
                      "(FLAG_ZEP_READ=false), nothing to drill")
        if status.forced is not None:
            self.fail(f"a forced record is in place (reason={status.forced.reason}, "
                      f"source={status.forced.source}); clear it first")
        if status.rate_limited_until is not None:
            self.fail("reads are paused by a 429; try again when the pause is over")
        self.note(f"start {status.effective_mode.value}")
        self.before_here = Samples.of(REGISTRY.collect())
        if self.stack.metrics_url is not None:
            self.before_there = scrape(self.stack.metrics_url)
        self.began = True

    def forced_as(self, reason: str, after: str) -> modes.ForcedRecord:
        """The forced record, which must carry ``reason``; else the drill fails saying why."""
        status = self.stack.status()
        forced = status.forced
        if forced is not None and forced.reason == reason:
            return forced
        if forced is not None:
            self.fail(f"after {after} the record says reason={forced.reason}, not {reason}")
        if self.stack.settings.disable_auto_downgrade:
            self.fail(f"no forced record after {after}: DISABLE_AUTO_DOWNGRADE is on, "
                      "so the guard only counts (shadow mode)")
        self.fail(f"no forced record after {after}; mode still {status.effective_mode.value}")

    def counted(self, name: str, label: str, value: str, *, here: bool,
                exactly: int | None = None) -> None:
        """Check a counter's increase since the start, where the increment happened."""
        if here:
            before, after, where = self.before_here, Samples.of(REGISTRY.collect()), "here"
        elif self.before_there is not None and self.stack.metrics_url is not None:
            before, after, where = self.before_there, scrape(self.stack.metrics_url), "scraped"
        else:
            self.note(f'{name}{{{label}="{value}"}} not checked (no --metrics-url)')
            return
        delta = after.get(name, **{label: value}) - before.get(name, **{label: value})
        shown = f'{name}{{{label}="{value}"}} +{delta:g} ({where})'
        if delta < 1 or (exactly is not None and delta != exactly):
            self.fail(f"{shown}, expected +{exactly if exactly is not None else '1 or more'}")
        self.note(shown)

    def cleanup(self, reasons: Iterable[str], *, reset_failures: bool,
                reset_probe_failures: bool) -> list[str]:
        """Remove faults, clear a record this drill caused; return what could not be done."""
        problems: list[str] = []
        try:
            self.heal()
        except DrillAborted as exc:
            problems.append(f"fault not removed: {exc}")
        if not self.began:
            return problems
        stack = self.stack
        try:
            now = stack.clock()
            forced = modes.get_forced(stack.conn, stack.keys, now=now,
                                      grace_seconds=stack.settings.grace_seconds)
            if forced is not None and forced.reason in reasons and forced.forced_at >= self.started:
                modes.clear(stack.conn, stack.keys, base=stack.base, now=now,
                            grace_seconds=stack.settings.grace_seconds, reason="drill_cleanup")
                self.note(f"cleared → {stack.base.value}")
            guard = Guard(stack.conn, stack.settings, keys=stack.keys, clock=stack.clock)
            if reset_failures:
                guard.reset_failures()
                stack.conn.delete(stack.keys.read_latencies)  # the drill's slow samples
            if reset_probe_failures:
                guard.reset_probe_failures()
            for thread_id in self.threads:
                cache.invalidate(stack.conn, stack.keys, thread_id)
        except redis.RedisError as exc:
            problems.append(f"Redis failed: {type(exc).__name__}: {exc}")
        return problems


def _auth(run: _Run) -> None:
    stack = run.stack
    thread = run.thread("t")
    run.fault(status=401)
    meta = stack.read(thread)
    if meta.get("reason") != "auth":
        run.fail(f"the read answered source={meta.get('source')} reason={meta.get('reason')}, "
                 "not auth: does the stack read from this simulator?")
    forced = run.forced_as("auth", "a 401")
    run.note(f"401 → {forced.mode} (reason=auth, hold={forced.hold_seconds}s) after 1 read")
    blocked = stack.read(thread)
    if blocked.get("source") != "write_only_forced":
        run.fail(f"the next read was not blocked (source={blocked.get('source')})")
    run.note("next read blocked (source=write_only_forced)")
    run.counted(DOWNGRADES, "reason", "auth", here=stack.app_url is None, exactly=1)


def _timeout(run: _Run) -> None:
    stack, settings = run.stack, run.stack.settings
    budget, threshold = settings.read_timeout_ms, settings.downgrade_threshold
    before = stack.status().consecutive_failures
    if before:
        Guard(stack.conn, settings, keys=stack.keys, clock=stack.clock).reset_failures()
        run.note(f"failure counter reset (was {before})")
    threads = [run.thread(str(n)) for n in range(1, threshold + 1)]
    run.fault(latency_ms=budget + max(250, budget))
    slowest = 0.0
    for n, thread in enumerate(threads, 1):
        meta = stack.read(thread)
        if meta.get("reason") != "timeout":
            run.fail(f"read {n} answered source={meta.get('source')} "
                     f"reason={meta.get('reason')}, not timeout")
        slowest = max(slowest, float(meta.get("took_ms") or 0.0))
        if n < threshold and stack.status().forced is not None:
            run.fail(f"forced after {n} of {threshold} failed reads, before the threshold")
    forced = run.forced_as("consecutive_failures", f"{threshold} timed-out reads")
    run.note(f"{threshold} timeouts (slowest {slowest:.0f} ms, budget {budget} ms) → "
             f"{forced.mode} (reason=consecutive_failures, hold={forced.hold_seconds}s)")
    run.counted(DOWNGRADES, "reason", "consecutive_failures", here=stack.app_url is None,
                exactly=1)


def _probe_once(run: _Run, record: modes.ForcedRecord) -> tuple[str, bool]:
    """Let one probe judge ``record`` once its hold is over; (what happened, probed here)."""
    stack = run.stack
    stack.sleep(max(0.0, record.until - stack.clock()) + 0.05)
    if not stack.wait_for_beat:
        result = stack.probe_here()
        if result in (ProbeResult.SUCCESS, ProbeResult.FAILURE):
            return f"probe {result.value}", True
        how, timeout = f"probe {result.value} (the beat's probe decided)", 3.0
    else:
        how, timeout = "beat probe", 2.0 * stack.settings.probe_interval_seconds + 10.0
    deadline = time.monotonic() + timeout
    while _key(stack.status().forced) == _key(record):
        if time.monotonic() > deadline:
            run.fail(f"no probe judged the record within {timeout:.0f}s of its hold ending"
                     + (": is beat running?" if stack.wait_for_beat else ""))
        stack.sleep(0.1)
    return how, False


def _key(record: modes.ForcedRecord | None) -> tuple[str, float] | None:
    return None if record is None else (record.reason, record.forced_at)


def _probe_fail(run: _Run) -> None:
    stack, hold = run.stack, run.stack.drill_hold_seconds
    run.fault(status=503)
    record = stack.force_briefly()
    run.note(f"Zep failing (503), forced for {hold}s")
    how, here = _probe_once(run, record)
    again = run.forced_as("probe_failed", f"a probe with Zep failing ({how})")
    if again.hold_seconds <= hold:
        run.fail(f"re-forced with hold {again.hold_seconds}s, not longer than {hold}s")
    run.note(f"{how} → reason=probe_failed, hold {hold}s → {again.hold_seconds}s")
    run.counted(DOWNGRADES, "reason", "probe_failed", here=here)

    run.heal()
    if again.until - stack.clock() > stack.recovery_wait_limit:
        again = stack.force_briefly()
        run.note(f"Zep healed; hold shortened to {hold}s")
    else:
        run.note("Zep healed")
    how, here = _probe_once(run, again)
    status = stack.status()
    if status.forced is not None:
        run.fail(f"reads not restored after Zep healed ({how}): "
                 f"forced reason={status.forced.reason}")
    thread = run.thread("t")
    stack.seed(thread, summary="probe drill")
    meta = stack.read(thread)
    if not meta.get("used"):
        run.fail(f"a read after recovery answered source={meta.get('source')} "
                 f"reason={meta.get('reason')}")
    run.note(f"{how} → {status.effective_mode.value}, reads restored "
             f"(source={meta.get('source')})")
    run.counted(PROBES, "result", "success", here=here)


# name: (body, reasons of the records it may clear, reset failures, reset probe failures)
_DRILLS: dict[str, tuple[Callable[[_Run], None], tuple[str, ...], bool, bool]] = {
    "auth": (_auth, ("auth",), False, False),
    "timeout": (_timeout, ("consecutive_failures",), True, False),
    "probe-fail": (_probe_fail, ("drill", "probe_failed"), False, True),
}


def run_drill(stack: Stack, name: str) -> DrillResult:
    """Run one drill and clean up after it, whatever happened."""
    body, reasons, reset_failures, reset_probes = _DRILLS[name]
    run = _Run(name, stack)
    why: str | None = None
    try:
        try:
            run.start()
            body(run)
        except DrillAborted as stop:
            why = str(stop)
    finally:
        problems = run.cleanup(reasons, reset_failures=reset_failures,
                               reset_probe_failures=reset_probes)
    if problems:
        cleanup = "cleanup: " + "; ".join(problems)
        why = cleanup if why is None else f"{why} ({cleanup})"
    return DrillResult(name, why is None, tuple(run.notes), why)


def run_drills(stack: Stack, names: Iterable[str]) -> Iterator[DrillResult]:
    """Run the named drills in order (``all`` is every drill); one result as each ends."""
    for name in names:
        for each in DRILL_NAMES if name == "all" else (name,):
            yield run_drill(stack, each)
