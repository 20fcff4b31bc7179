"""fetch_thread_context: every row of SPEC §5 over real HTTP (SDK → simulator), real Redis.

Every test runs on both Zep APIs (v2 through zep-python, v4 through zep-cloud);
where v4 answers differently by design, the test says so and asserts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from memory_worker.config import Settings
from memory_worker.errors import InvalidRequest
from memory_worker.keys import Keys
from memory_worker.runtime import Runtime
from memory_worker.zep import Memory
from memory_worker.zep_sim import ZepSimulator
from tests.conftest import FakeClock
from tests.zep_apis import ZepApiUnderTest

pytestmark = pytest.mark.zep_apis
SLACK_S = 0.025  # SPEC §5: a read returns within MEMORY_READ_TIMEOUT_MS + 25 ms


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def runtime(read_settings: Settings, clock: FakeClock, conn: redis.Redis, sim: ZepSimulator
            ) -> Iterator[Runtime]:
    """A runtime whose Zep clients are built (one probe, unlogged), as in a process that
    has read before: building them is paid once, not within every read's budget."""
    rt = Runtime(read_settings, clock=clock)
    assert rt.zep.probe(5.0) is None
    sim.reset_requests()
    yield rt
    rt.zep.close()


def warmed(rt: Runtime, zep_api: ZepApiUnderTest) -> Runtime:
    """``rt`` after one read: its Zep clients and connections are built, as in a process
    that has read before (building them is paid once, not by every read)."""
    zep_api.seed("warm-up", summary="s")
    assert isinstance(rt.zep.get_memory("warm-up", 4, 5.0, "summary"), Memory)
    return rt


def test_a_successful_read_returns_the_summary_view_and_caches_it(
    runtime: Runtime, zep_api: ZepApiUnderTest
) -> None:
    """Success: summary, context, last 4 messages oldest first; then a cache hit."""
    zep_api.write("t-1", 6)
    zep_api.seed("t-1", summary="Looking for a 2+1 in Kyrenia", context="Budget 150k")
    requests_before = sample("memory_zep_context_requests_total")
    hits_before = sample("memory_zep_context_cache_hits_total")

    context, meta = runtime.fetch("t-1", "summary")
    assert context == {
        "summary": "Looking for a 2+1 in Kyrenia", "context": "Budget 150k",
        "messages": [{"role": r, "role_type": r, "content": f"message {i}"}
                     for i, r in [(2, "user"), (3, "assistant"), (4, "user"), (5, "assistant")]],
    }
    assert meta["source"] == "zep" and meta["used"] is True and meta["cached"] is False
    assert meta["mode"] == "read_write" and meta["reason"] is None
    assert isinstance(meta["took_ms"], float)

    again, meta2 = runtime.fetch("t-1", "summary")
    assert again == context and meta2["cached"] is True and meta2["source"] == "zep"
    assert zep_api.reads() == zep_api.reads_per_view("summary")  # the hit sent nothing
    assert sample("memory_zep_context_requests_total") == requests_before + 2
    assert sample("memory_zep_context_cache_hits_total") == hits_before + 1


def test_recent_view_returns_the_last_n_messages(
    runtime: Runtime, zep_api: ZepApiUnderTest
) -> None:
    """recent → {"messages": [last MEMORY_RECENT_LASTN]}, one request."""
    zep_api.write("t-2", 15)
    context, _ = runtime.fetch("t-2", "recent")
    assert context is not None
    assert context["messages"] == [
        {"role": r, "role_type": r, "content": f"message {i}"}
        for i, r in ((i, ("user", "assistant")[i % 2]) for i in range(3, 15))]
    assert zep_api.reads() == zep_api.reads_per_view("recent") == 1


def test_facts_view_returns_the_facts(runtime: Runtime, zep_api: ZepApiUnderTest) -> None:
    """facts → {"facts": [str]}, one request (v4: the facts section of the context block)."""
    zep_api.seed("t-3", facts=["Prefers Kyrenia", "Has a dog"])
    context, meta = runtime.fetch("t-3", "facts")
    assert context == {"facts": ["Prefers Kyrenia", "Has a dog"]} and meta["used"] is True
    assert zep_api.reads() == zep_api.reads_per_view("facts") == 1


def test_the_positive_cache_lives_for_the_configured_ttl(
    runtime: Runtime, zep_api: ZepApiUnderTest, conn: redis.Redis, keys: Keys
) -> None:
    """The entry carries MEMORY_CACHE_TTL_SECONDS."""
    zep_api.seed("t-ttl", summary="s")
    runtime.fetch("t-ttl", "summary")
    assert 29_000 < conn.pttl(keys.context("t-ttl", "summary")) <= 30_000


def test_not_found_is_negative_cached_with_its_reason(
    runtime: Runtime, zep_api: ZepApiUnderTest, conn: redis.Redis, keys: Keys
) -> None:
    """404: None, not_found; the next read is a negative-cache hit keeping the reason."""
    context, meta = runtime.fetch("nobody", "summary")
    assert context is None and meta["reason"] == "not_found" and meta["source"] == "error"
    assert meta["used"] is False
    context, meta = runtime.fetch("nobody", "summary")
    assert meta["source"] == "negative_cache" and meta["reason"] == "not_found"
    # v2 asks Zep, which answers 404. v4 knows no Zep thread of a thread_id never
    # written (no mapping): it answers not_found without a request.
    assert zep_api.reads() == {"v2": 1, "v4": 0}[zep_api.version]
    assert 2_000 < conn.pttl(keys.context("nobody", "summary")) <= 3_000
    assert conn.get(keys.consecutive_failures) is None


def test_a_404_from_zep_for_a_known_thread_is_negative_cached_too(
    runtime: Runtime, zep_api: ZepApiUnderTest, conn: redis.Redis, keys: Keys
) -> None:
    """A thread Zep had, answering 404 (deleted there): not_found, negative-cached, no failure."""
    zep_api.prepare("gone")
    zep_api.sim.add_fault(zep_api.read_fault(status=404))
    context, meta = runtime.fetch("gone", "summary")
    assert context is None and meta["reason"] == "not_found" and meta["source"] == "error"
    assert runtime.fetch("gone", "summary")[1]["source"] == "negative_cache"
    assert zep_api.reads() == zep_api.reads_per_view("summary")
    assert 2_000 < conn.pttl(keys.context("gone", "summary")) <= 3_000
    assert conn.get(keys.consecutive_failures) is None and conn.exists(keys.forced) == 0


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_forces_write_only_at_once_and_reads_stop_calling_zep(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys, status: int
) -> None:
    """401/403: reason auth, forced at once; while forced, the simulator sees no read."""
    for thread in ("t-auth", "other", "third"):
        zep_api.prepare(thread)
    sim.add_fault(zep_api.read_fault(status=status))
    before = sample("memory_zep_downgrades_total", {"reason": "auth"})
    context, meta = runtime.fetch("t-auth", "summary")
    assert context is None and meta["reason"] == "auth" and meta["source"] == "error"
    assert meta["mode"] == "write_only"
    assert json.loads(conn.get(keys.forced) or "")["reason"] == "auth"
    assert sample("memory_zep_downgrades_total", {"reason": "auth"}) == before + 1

    sim.reset_requests()
    for thread in ("t-auth", "other", "third"):
        context, meta = runtime.fetch(thread, "recent")
        assert context is None and meta["source"] == "write_only_forced"
        assert meta["reason"] == "auth" and meta["until"] > 0 and meta["mode"] == "write_only"
    assert sim.requests() == []


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"latency_ms": 600}, "timeout"),
        ({"status": 408}, "timeout"),
        ({"status": 500}, "server_error"),
        ({"status": 503}, "server_error"),
        ({"status": 502, "raw_body": "<html>bad gateway</html>"}, "server_error"),
        ({"drop": True}, "connection_error"),
        ({"reset": True}, "connection_error"),
    ],
)
def test_timeouts_5xx_and_connection_errors_count_a_failure(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys, fault: dict[str, Any], reason: str,
) -> None:
    """Each returns None with its reason and adds one to the shared failure count."""
    zep_api.seed("t-f", summary="s")
    sim.add_fault(zep_api.read_fault(**fault))
    before = sample("memory_zep_context_failures_total", {"reason": reason})
    context, meta = runtime.fetch("t-f", "summary")
    assert context is None and meta["reason"] == reason and meta["source"] == "error"
    assert conn.get(keys.consecutive_failures) == "1"
    assert sample("memory_zep_context_failures_total", {"reason": reason}) == before + 1
    negative = conn.get(keys.context("t-f", "summary"))
    if reason == "timeout":
        assert negative is not None and json.loads(negative)["reason"] == "timeout"
    else:
        assert negative is None


def scripts_run(conn: redis.Redis) -> int:
    stats = conn.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
               for name in ("eval", "evalsha"))


@pytest.mark.parametrize("side", ["sync", "async"])
@pytest.mark.parametrize(("status", "reason"), [(500, "consecutive_failures"), (401, "auth")])
def test_a_failed_read_takes_one_round_trip_to_redis_after_zep(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys, status: int, reason: str, side: str
) -> None:
    """Its negative entry, its latency sample and the guard's count (or the downgrade an
    auth failure forces) are one script, as the caching after a success is: a crowd of
    reads that a sick Zep fails at once is not held up by a second round trip each."""
    def fetch(thread: str) -> tuple[Any, Any]:
        if side == "sync":
            return runtime.fetch(thread, "summary")
        return asyncio.run(runtime.afetch(thread, "summary"))

    for thread in ("w", "x", "y"):
        zep_api.prepare(thread)
    sim.add_fault(zep_api.read_fault(status=status))
    fetch("w")  # the scripts loaded, the connections made
    conn.delete(keys.forced, keys.consecutive_failures)
    before = scripts_run(conn)
    _, meta = fetch("x")
    assert meta["source"] == "error"
    assert scripts_run(conn) - before == 1
    if reason == "auth":
        assert json.loads(conn.get(keys.forced) or "")["reason"] == "auth"
        assert meta["mode"] == "write_only"
        assert fetch("y")[1]["source"] == "write_only_forced"
    else:
        assert conn.get(keys.consecutive_failures) == "1" and conn.exists(keys.forced) == 0


def test_three_failures_force_write_only_with_consecutive_failures(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys
) -> None:
    """The third 5xx inside the window downgrades; the fourth read is blocked."""
    for thread in ("a", "b", "c", "d"):
        zep_api.prepare(thread)
    sim.add_fault(zep_api.read_fault(status=500))
    for thread in ("a", "b", "c"):
        runtime.fetch(thread, "summary")
    assert json.loads(conn.get(keys.forced) or "")["reason"] == "consecutive_failures"
    _, meta = runtime.fetch("d", "summary")
    assert meta["source"] == "write_only_forced"


def test_a_success_resets_the_failure_count(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys
) -> None:
    """Two failures, a success: the counter is gone."""
    zep_api.seed("ok", summary="s")
    zep_api.prepare("x1")
    zep_api.prepare("x2")
    fault = sim.add_fault(zep_api.read_fault(status=500))
    runtime.fetch("x1", "summary")
    runtime.fetch("x2", "summary")
    sim.remove_fault(fault)
    runtime.fetch("ok", "summary")
    assert conn.get(keys.consecutive_failures) is None and conn.exists(keys.forced) == 0


@pytest.mark.parametrize(
    ("headers", "expected_wait"),
    [({"Retry-After": "7"}, 7.0), ({}, 5.0), ({"Retry-After": "100000"}, 300.0)],
)
def test_429_pauses_reads_in_every_process_until_retry_after(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys, clock: FakeClock, headers: dict[str, str], expected_wait: float,
) -> None:
    """429: rate_limited, no failure counted; other reads skip Zep until Retry-After."""
    zep_api.prepare("t-429")
    zep_api.prepare("another-thread")
    sim.add_fault(zep_api.read_fault(status=429, headers=headers, times=1))
    context, meta = runtime.fetch("t-429", "summary")
    assert context is None and meta["reason"] == "rate_limited"
    assert conn.get(keys.consecutive_failures) is None
    until = float(conn.get(keys.rate_limited_until) or 0)
    assert until == pytest.approx(clock() + expected_wait, abs=1.0)

    sim.reset_requests()
    context, meta = runtime.fetch("another-thread", "recent")
    assert meta["source"] == "rate_limited" and meta["reason"] == "rate_limited"
    assert sim.requests() == []


def test_429_with_an_http_date_retry_after(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys
) -> None:
    """Retry-After as an HTTP-date is honoured too."""
    zep_api.prepare("t-date")
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    sim.add_fault(zep_api.read_fault(status=429, headers={"Retry-After": when}))
    runtime.fetch("t-date", "summary")
    until = float(conn.get(keys.rate_limited_until) or 0)
    assert until - runtime.clock() == pytest.approx(20, abs=2)


@pytest.mark.parametrize("status", [400, 409, 422])
def test_other_4xx_is_a_client_error_without_guard_effects(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys, status: int
) -> None:
    """Other 4xx: client_error; nothing counted, nothing forced, nothing cached."""
    zep_api.prepare("t-4xx")
    sim.add_fault(zep_api.read_fault(status=status))
    context, meta = runtime.fetch("t-4xx", "summary")
    assert context is None and meta["reason"] == "client_error"
    assert conn.get(keys.consecutive_failures) is None and conn.exists(keys.forced) == 0
    assert conn.get(keys.context("t-4xx", "summary")) is None


@pytest.mark.parametrize(
    ("thread_id", "view"),
    [("", "summary"), ("a/b", "summary"), ("x" * 257, "summary"), ("ok", "everything"),
     (None, "summary"), ("t", None)],
)
def test_invalid_arguments_raise_invalid_request_and_call_nothing(
    runtime: Runtime, sim: ZepSimulator, thread_id: Any, view: Any
) -> None:
    """A bad thread_id or view is the caller's bug: InvalidRequest, a ValueError."""
    with pytest.raises(InvalidRequest) as info:
        runtime.fetch(thread_id, view)
    assert isinstance(info.value, ValueError)
    assert sim.requests() == []


@pytest.mark.parametrize(("write", "read", "mode"), [(True, False, "write_only"),
                                                     (False, False, "off")])
def test_reads_disabled_by_flags_return_disabled(
    read_settings: Settings, sim: ZepSimulator, conn: redis.Redis, write: bool, read: bool,
    mode: str,
) -> None:
    """Without FLAG_ZEP_READ the read returns at once with source disabled."""
    rt = Runtime(dataclasses.replace(read_settings, flag_zep_write=write, flag_zep_read=read))
    context, meta = rt.fetch("t", "summary")
    assert context is None and meta["source"] == "disabled" and meta["mode"] == mode
    assert sim.requests() == []


def test_read_only_base_mode_reads_and_forced_gives_off(
    read_settings: Settings, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis
) -> None:
    """read_only reads; an auth failure makes it off (writes were never on)."""
    rt = Runtime(dataclasses.replace(read_settings, flag_zep_write=False))
    zep_api.seed("ro", summary="s")
    zep_api.prepare("ro2")
    assert rt.fetch("ro", "summary")[1]["mode"] == "read_only"
    sim.add_fault(zep_api.read_fault(status=401))
    assert rt.fetch("ro2", "summary")[1]["mode"] == "off"


def test_a_record_past_until_still_blocks_reads(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, clock: FakeClock
) -> None:
    """Only a probe or clear lifts the record, not the passing of `until`."""
    zep_api.prepare("t")
    # Every read request of the first read fails (v4's summary view sends three).
    sim.add_fault(zep_api.read_fault(status=401, times=zep_api.reads_per_view("summary")))
    runtime.fetch("t", "summary")
    clock.advance(301)
    assert runtime.fetch("t", "summary")[1]["source"] == "write_only_forced"
    clock.advance(120)  # hold + grace: as good as gone, the read acts as the probe
    zep_api.seed("t", summary="back")
    context, meta = runtime.fetch("t", "summary")
    assert meta["source"] == "zep" and context is not None


def test_latency_downgrade_forces_when_the_median_is_too_slow(
    read_settings: Settings, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys
) -> None:
    """≥5 reads in 30 s with a median over MEMORY_LATENCY_DOWNGRADE_MS force reason latency."""
    rt = warmed(Runtime(dataclasses.replace(read_settings, latency_downgrade_ms=60)), zep_api)
    conn.delete(keys.read_latencies)
    for i in range(5):
        zep_api.seed(f"slow{i}", summary="s")
    sim.add_fault(zep_api.read_fault(latency_ms=90))
    for i in range(4):
        rt.fetch(f"slow{i}", "summary")
        assert conn.exists(keys.forced) == 0
    _, meta = rt.fetch("slow4", "summary")
    assert json.loads(conn.get(keys.forced) or "")["reason"] == "latency"
    assert meta["mode"] == "write_only" and meta["used"] is True


def test_latency_downgrade_can_be_disabled(
    read_settings: Settings, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys
) -> None:
    """MEMORY_LATENCY_DOWNGRADE_MS=0 records nothing and never forces."""
    rt = warmed(Runtime(dataclasses.replace(read_settings, latency_downgrade_ms=0)), zep_api)
    for i in range(6):
        zep_api.seed(f"s{i}", summary="s")
    sim.add_fault(zep_api.read_fault(latency_ms=30))
    for i in range(6):
        assert rt.fetch(f"s{i}", "summary")[1]["used"] is True
    assert conn.exists(keys.forced) == 0 and conn.exists(keys.read_latencies) == 0


def test_shadow_mode_keeps_reading_through_failures(
    read_settings: Settings, zep_api: ZepApiUnderTest, sim: ZepSimulator, conn: redis.Redis,
    keys: Keys
) -> None:
    """DISABLE_AUTO_DOWNGRADE: the guard counts but reads keep going to Zep."""
    rt = Runtime(dataclasses.replace(read_settings, disable_auto_downgrade=True))
    for i in range(4):
        zep_api.prepare(f"t{i}")
    sim.add_fault(zep_api.read_fault(status=401))
    for i in range(4):
        _, meta = rt.fetch(f"t{i}", "summary")
        assert meta["source"] == "error"
    assert conn.exists(keys.forced) == 0
    assert zep_api.reads() == 4 * zep_api.reads_per_view("summary")


def test_invalidate_removes_positive_and_negative_entries(
    runtime: Runtime, zep_api: ZepApiUnderTest, conn: redis.Redis, keys: Keys
) -> None:
    """invalidate deletes mem:ctx:{thread}:summary|recent|facts."""
    from memory_worker import cache

    zep_api.seed("inv", summary="s")
    runtime.fetch("inv", "summary")
    runtime.fetch("inv", "facts")
    conn.set(keys.context("inv", "recent"), cache.negative("not_found"))
    assert cache.invalidate(conn, keys, "inv") == 3
    assert conn.exists(*keys.contexts("inv")) == 0


@pytest.mark.parametrize("garbage", ["{", "[]", '{"context": 3}', '{"negative": true}'])
def test_garbage_in_the_cache_reads_as_a_miss(
    runtime: Runtime, zep_api: ZepApiUnderTest, conn: redis.Redis, keys: Keys, garbage: str
) -> None:
    """A corrupt entry is ignored and replaced, never raised."""
    zep_api.seed("g", summary="fresh")
    conn.set(keys.context("g", "summary"), garbage)
    context, meta = runtime.fetch("g", "summary")
    assert context is not None and context["summary"] == "fresh" and meta["cached"] is False


def test_a_caller_changing_its_context_does_not_change_the_next_hit(
    runtime: Runtime, zep_api: ZepApiUnderTest
) -> None:
    """Hits of one stored entry decode it once; each caller still gets its own copy."""
    zep_api.write("mine", 6)
    zep_api.seed("mine", summary="kept")
    first, _ = runtime.fetch("mine", "summary")
    hit, meta = runtime.fetch("mine", "summary")
    assert meta["cached"] is True and hit == first and hit is not None
    hit["summary"] = "changed"
    hit["messages"].append({"role": "user", "role_type": "user", "content": "mine"})
    hit["messages"][0]["content"] = "changed"
    again, _ = runtime.fetch("mine", "summary")
    assert again == first


def test_a_new_value_of_a_cache_entry_is_read_as_it_is_now(
    runtime: Runtime, zep_api: ZepApiUnderTest, conn: redis.Redis, keys: Keys
) -> None:
    """An entry decoded before does not hide a value written since (another process's)."""
    zep_api.seed("n", summary="old")
    first, _ = runtime.fetch("n", "summary")
    assert first is not None and first["summary"] == "old"
    assert runtime.fetch("n", "summary")[1]["cached"] is True
    conn.set(keys.context("n", "summary"),
             json.dumps({"context": {"summary": "new", "context": None, "messages": []}}))
    context, meta = runtime.fetch("n", "summary")
    assert meta["cached"] is True and context is not None and context["summary"] == "new"


@pytest.mark.parametrize(
    "fault",
    [{"latency_ms": 2000}, {"trickle_bytes": 4, "trickle_interval_ms": 100},
     {"latency_ms": 2000, "drop": True}],
    ids=["stall", "trickle", "late-drop"],
)
@pytest.mark.parametrize("view", ["summary", "recent", "facts"])
def test_a_read_returns_within_its_budget_whatever_zep_does(
    runtime: Runtime, zep_api: ZepApiUnderTest, sim: ZepSimulator, fault: dict[str, Any],
    view: str,
) -> None:
    """Slow headers, a trickling body, a late drop: None, timeout, within budget + 25 ms."""
    zep_api.write("t-slow", 6)
    zep_api.seed("t-slow", summary="s")
    warmed(runtime, zep_api)
    sim.add_fault(zep_api.read_fault(**fault))
    started = time.monotonic()
    context, meta = runtime.fetch("t-slow", view)
    took = time.monotonic() - started
    assert context is None and meta["reason"] == "timeout" and meta["source"] == "error"
    assert took <= runtime.settings.read_timeout_ms / 1000 + SLACK_S, f"took {took:.3f}s"
