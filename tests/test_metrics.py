"""Metrics: every contract name exists from the first scrape; live values are one-hot."""

from __future__ import annotations

import os
import threading
import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from memory_worker import metrics
from tests.contract import CONTRACT, LIVE

PROCESS_METRICS = {name: kind for name, kind in CONTRACT.items() if name not in LIVE}


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample.labels)
    return found


def test_every_contract_metric_is_exposed_after_warming() -> None:
    """warm_metrics() makes each series, with its known labels, visible at zero."""
    metrics.warm_metrics()
    samples = _samples(generate_latest().decode())
    for name, (kind, label) in PROCESS_METRICS.items():
        sample_name = name + "_count" if kind == "histogram" else name
        assert sample_name in samples, name
        if label is not None:
            assert all(label in labels for labels in samples[sample_name]), name
    assert {"success", "failure", "locked"} <= {
        s["result"] for s in samples["memory_probe_total"]
    }
    assert {"auth", "consecutive_failures", "latency", "probe_failed"} <= {
        s["reason"] for s in samples["memory_zep_downgrades_total"]
    }
    assert {"email", "phone", "address"} == {
        s["field_type"] for s in samples["memory_zep_redactions_total"]
    }


def test_live_collector_reports_a_one_hot_mode_and_the_dlq_size() -> None:
    """One sample per mode, 1 for the effective one, no pid label; the DLQ size as read."""
    registry = CollectorRegistry()
    registry.register(metrics.LiveStateCollector(lambda: ("write_only", 4)))
    assert registry.get_sample_value("memory_mode_gauge", {"mode": "write_only"}) == 1.0
    for other in ("read_write", "read_only", "off"):
        assert registry.get_sample_value("memory_mode_gauge", {"mode": other}) == 0.0
    assert registry.get_sample_value("memory_write_dlq_size") == 4.0


def test_live_collector_leaves_a_gap_when_redis_fails() -> None:
    """No samples rather than stale or invented ones, and the error is counted."""

    def broken() -> tuple[str, int]:
        raise ConnectionError("down")

    registry = CollectorRegistry()
    registry.register(metrics.LiveStateCollector(broken))
    before = metrics.redis_errors.labels(op="mode")._value.get()
    assert registry.get_sample_value("memory_mode_gauge", {"mode": "off"}) is None
    assert metrics.redis_errors.labels(op="mode")._value.get() == before + 1


def test_safe_inc_swallows_label_mistakes() -> None:
    """Recording is best-effort: a wrong label is logged, not raised."""
    metrics.safe_inc(metrics.downgrades, reason="auth", extra="nope")


def _private_counter(name: str) -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    return registry, Counter(name, "a counter of the test", registry=registry)


def test_a_tally_adds_every_threads_counts_to_its_counter_when_flushed() -> None:
    """Counts made by many threads at once all reach the counter, none twice."""
    registry, counter = _private_counter("tally_threads")
    tally = metrics.Tally(counter, interval_s=3600)

    def count() -> None:
        for _ in range(10_000):
            tally.cell()[0] += 1

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    tally.flush()  # while they count: a flush in the middle loses and doubles nothing
    for thread in threads:
        thread.join()
    tally.flush()
    tally.flush()
    assert registry.get_sample_value("tally_threads_total") == 80_000.0


def test_a_tally_flushes_by_itself_within_its_interval() -> None:
    """Without a scrape or an exit, the flusher thread brings the counts in."""
    registry, counter = _private_counter("tally_interval")
    tally = metrics.Tally(counter, interval_s=0.05)
    tally.cell()[0] += 3
    deadline = time.monotonic() + 10
    while registry.get_sample_value("tally_interval_total") != 3.0:
        assert time.monotonic() < deadline, "the flusher never added the counts"
        time.sleep(0.01)


def test_a_scrape_of_the_default_registry_sees_a_read_counted_just_before() -> None:
    """The read counters are flushed before the default registry is collected."""
    before = REGISTRY.get_sample_value("memory_zep_context_cache_hits_total") or 0.0
    metrics.read_counts.cell()[metrics.CONTEXT_CACHE_HITS] += 1
    assert REGISTRY.get_sample_value("memory_zep_context_cache_hits_total") == before + 1


def test_a_forked_child_does_not_count_its_parents_pending_counts_again() -> None:
    """The parent flushes what it counted; the child starts from zero."""
    registry, counter = _private_counter("tally_fork")
    tally = metrics.Tally(counter, interval_s=3600)
    tally.cell()[0] += 5
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count once, report what it flushed
        try:
            tally.cell()[0] += 1
            tally.flush()
            os.write(write, str(registry.get_sample_value("tally_fork_total")).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        assert float(pipe.read()) == 1.0
    tally.flush()
    assert registry.get_sample_value("tally_fork_total") == 5.0


def test_a_tally_lets_go_of_the_counts_of_threads_that_ended() -> None:
    """Thread-per-request servers must not grow the tally without end."""
    registry, counter = _private_counter("tally_ended")
    tally = metrics.Tally(counter, interval_s=3600)
    for _ in range(50):
        thread = threading.Thread(target=lambda: tally.cell().__setitem__(0, 2))
        thread.start()
        thread.join()
    tally.flush()
    assert registry.get_sample_value("tally_ended_total") == 100.0
    assert len(tally._cells) == 0
