"""The whole read within its budget: the Redis steps after the Zep call included (SPEC §5).

A read that misses the cache calls Zep and then runs one or two Redis steps
(cache the answer, count the failure, pause on 429). Those steps must fit in
what is left of ``MEMORY_READ_TIMEOUT_MS`` + 25 ms: against a slow Redis a step
is cut short, counted in ``memory_redis_errors_total`` and the read fails open;
it never raises and never overruns.

The Redis here is a private ``redis-server``; it is made slow at a chosen
moment of the read, around the Zep call, with ``CLIENT PAUSE ... ALL``: every
client's commands wait until the pause ends, like a Redis stuck in a slow
command, and the pause is in force once it answers ``OK``, so the read goes on
only after Redis is slow (``DEBUG SLEEP`` gives no such signal). The Zep client
is the real one against the simulator, wrapped to pause Redis as its call
starts or ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import redis
from prometheus_client import REGISTRY

from memory_worker import cache
from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.reader import Meta
from memory_worker.runtime import Runtime
from memory_worker.zep import ReadResult, ZepClient
from memory_worker.zep_sim import Fault, ZepSimulator
from tests.processes import PrivateRedis

MEMORY = "*/sessions/*/memory"
SLACK_S = 0.025  # SPEC §5: a read returns within MEMORY_READ_TIMEOUT_MS + 25 ms
PAUSE_MS = 600  # longer than any read here: the Redis steps after the Zep call meet it
# A late answer: 20 ms inside the 250 ms budget, so it is an answer, yet a Redis
# step allowed its full 50 ms socket timeout after it would overrun the 25 ms.
LATE_MS = 230
Moment = Literal["start", "end"]


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path_factory.mktemp("read-budget-redis")) as server:
        yield server


@pytest.fixture
def admin(private_redis: PrivateRedis) -> Iterator[redis.Redis]:
    """A connection of the test's own: it pauses Redis and checks the state left behind."""
    client = redis.Redis.from_url(private_redis.url, decode_responses=True, socket_timeout=5)
    client.flushall()
    yield client
    awake(client)
    client.flushall()
    client.close()


def awake(client: redis.Redis) -> None:
    """Return once Redis answers again (a pause ends by itself)."""
    client.ping()  # waits out the pause: a paused Redis answers when it ends


class PausingZep(ZepClient):
    """The real Zep client, pausing Redis as a read's Zep call starts or ends."""

    def __init__(self, sim: ZepSimulator, settings: Settings, admin: redis.Redis) -> None:
        super().__init__(sim.url, "test-key", read_budget_seconds=settings.read_timeout_ms / 1000)
        self.admin = admin
        self.moment: Moment | None = None
        self.paused_at: float | None = None

    def _pause(self, moment: Moment) -> None:
        if self.moment == moment and self.paused_at is None:
            assert self.admin.client_pause(PAUSE_MS, all=True) is True
            self.paused_at = time.perf_counter()

    def get_memory(self, session_id: str, lastn: int, budget_seconds: float | None = None,
                   view: str | None = None) -> ReadResult:
        self._pause("start")
        result = super().get_memory(session_id, lastn, budget_seconds, view)
        self._pause("end")
        return result

    async def aget_memory(self, session_id: str, lastn: int,
                          budget_seconds: float | None = None,
                          view: str | None = None) -> ReadResult:
        self._pause("start")
        result = await super().aget_memory(session_id, lastn, budget_seconds, view)
        self._pause("end")
        return result


@pytest.fixture
def budget_settings(read_settings: Settings, private_redis: PrivateRedis) -> Settings:
    return dataclasses.replace(read_settings, redis_url=private_redis.url)


@pytest.fixture
def zep(sim: ZepSimulator, budget_settings: Settings, admin: redis.Redis) -> Iterator[PausingZep]:
    client = PausingZep(sim, budget_settings, admin)
    yield client
    client.close()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Reader:
    """Reads through one Runtime, the sync or the async way (one event loop), timing each."""

    def __init__(self, runtime: Runtime, mode: str) -> None:
        self.runtime = runtime
        self.mode = mode
        # One loop for all the async reads: its Redis connections are reused from
        # one read to the next, as in a web process.
        self._loop = asyncio.new_event_loop() if mode == "async" else None

    def __call__(self, thread_id: str) -> tuple[Any, Meta, float]:
        started = time.perf_counter()
        if self._loop is None:
            context, meta = self.runtime.fetch(thread_id, "summary")
        else:
            context, meta = self._loop.run_until_complete(
                self.runtime.afetch(thread_id, "summary"))
        return context, meta, time.perf_counter() - started

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self.runtime.zep.aclose())
            self._loop.close()


@pytest.fixture
def reader(budget_settings: Settings, zep: PausingZep, mode: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Reader]:
    # After a Redis failure the process skips Redis for a while; here only a
    # moment, so the reads after a pause show the connections left behind work.
    monkeypatch.setattr("memory_worker.runtime.REDIS_DOWN_BACKOFF_S", 0.05)
    running = Reader(Runtime(budget_settings, zep=zep), mode)
    yield running
    running.close()


def redis_errors(op: str) -> float:
    return REGISTRY.get_sample_value("memory_redis_errors_total", {"op": op}) or 0.0


# Zep's behaviour, when Redis is paused, and what the read must say.
SCENARIOS: dict[str, tuple[Fault | None, Moment, tuple[str, str | None]]] = {
    # Zep times out: its call takes the whole budget, Redis is slow right after it.
    "timeout_then_slow_redis": (Fault(method="GET", path=MEMORY, latency_ms=3000), "end",
                                ("error", "timeout")),
    # Zep fails late, after Redis went slow as the call started.
    "late_500_during_slow_redis": (Fault(method="GET", path=MEMORY, status=500, latency_ms=LATE_MS),
                                   "start", ("error", "server_error")),
    # Zep answers late but well; Redis is slow when the answer is to be cached.
    "late_success_then_slow_redis": (Fault(method="GET", path=MEMORY, latency_ms=LATE_MS), "end",
                                     ("zep", None)),
    # Zep answers at once; Redis is slow when the answer is to be cached.
    "quick_success_then_slow_redis": (None, "end", ("zep", None)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_read_ends_within_its_budget_when_redis_is_slow_after_the_zep_call(
    reader: Reader, zep: PausingZep, sim: ZepSimulator, admin: redis.Redis, scenario: str
) -> None:
    """Whatever Zep does, a slow Redis after it costs the read no more than its budget."""
    fault, moment, (source, reason) = SCENARIOS[scenario]
    reader("warm-up")  # Given a process whose connections to Redis and Zep are open
    sim.seed("slow-redis", summary="remembered")
    if fault is not None:
        sim.add_fault(fault)
    budget = reader.runtime.settings.read_timeout_ms / 1000
    # A failure's one script after the Zep call carries the guard's count: its loss is
    # the guard's; a success's only caches.
    op = "cache" if source == "zep" else "guard"
    errors_before = redis_errors(op)

    # When Redis goes slow as the Zep call starts or ends
    zep.moment = moment
    context, meta, elapsed = reader("slow-redis")

    # Then Redis really was slow during the read, and the read still kept its budget
    assert zep.paused_at is not None
    assert elapsed <= budget + SLACK_S, f"{scenario}: {elapsed * 1000:.1f} ms"
    # And it said what happened, failing open: the cache write was cut short
    assert (meta["source"], meta["reason"]) == (source, reason), meta
    assert meta["used"] is (source == "zep") and meta["cached"] is False
    assert meta["took_ms"] <= (budget + SLACK_S) * 1000
    if source == "zep":
        assert context is not None and context["summary"] == "remembered"
    else:
        assert context is None
    assert redis_errors(op) == errors_before + 1

    # And once Redis is back, the connections the cut-short step used are sound
    awake(admin)
    reads_work_again(reader, sim, admin)


def reads_work_again(reader: Reader, sim: ZepSimulator, admin: redis.Redis) -> None:
    """Cache hits, a cached miss and a counted failure each get their own replies."""
    sim.clear_faults()
    keys = Keys(reader.runtime.settings.key_prefix)
    ttl = reader.runtime.settings.cache_ttl_seconds
    for name in ("warm-a", "warm-b"):
        admin.set(keys.context(name, "summary"),
                  cache.positive({"summary": name, "context": None, "messages": []}), ex=ttl)
    zep_down_until = time.monotonic() + 5
    while True:  # the skip after the failure is 50 ms here: wait for Redis to be used again
        context, meta, _ = reader("warm-a")
        if meta["cached"]:
            break
        assert time.monotonic() < zep_down_until, "reads never went back to Redis"
    for name in ("warm-b", "warm-a", "warm-b"):
        context, meta, _ = reader(name)
        assert meta["cached"] and context is not None and context["summary"] == name, meta

    sim.seed("fresh", summary="fresh")
    _, meta, _ = reader("fresh")
    assert (meta["source"], meta["cached"]) == ("zep", False), meta
    context, meta, _ = reader("fresh")
    assert meta["cached"] and context is not None and context["summary"] == "fresh", meta

    sim.add_fault(Fault(method="GET", path=MEMORY, status=503))
    _, meta, _ = reader("failing")
    assert meta["reason"] == "server_error", meta
    assert admin.get(keys.consecutive_failures) == "1"


FIRST_READ = """
import sys, time
from memory_worker import runtime
from memory_worker.config import Settings
settings = Settings(flag_zep_read=True, flag_zep_write=True, zep_api_url=sys.argv[1],
                    zep_api_key="test-key", redis_url=sys.argv[2], zep_api_version=sys.argv[3])
runtime.configure(settings)  # at start-up, as an application does
started = time.perf_counter()
runtime.fetch_thread_context(sys.argv[4], "summary")
print((time.perf_counter() - started) * 1000)
"""


@pytest.mark.parametrize("api", ["v2", "v4"])
def test_the_first_read_of_a_configured_process_is_within_budget(
    sim: ZepSimulator, redis_url: str, api: str,
) -> None:
    """configure() builds the Zep client (SDK import, TLS context): not the first read."""
    import subprocess
    import sys

    sim.seed("first-read", summary="s")
    out = subprocess.run([sys.executable, "-c", FIRST_READ, sim.url, redis_url, api,
                          "first-read"], capture_output=True, text=True, timeout=60, check=True)
    took_ms = float(out.stdout.strip().splitlines()[-1])
    assert took_ms <= 250 + 25, f"the first read took {took_ms:.0f} ms"
