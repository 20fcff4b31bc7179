"""Every Prometheus metric of the contract (SPEC §9), defined once.

Process metrics (counters, histograms) live here and work unchanged in
prometheus_client multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set
before the first import, each process writes its own files and the metrics
server merges them. The mode gauge and the dead-letter size are not process
state: they are read from Redis at scrape time by ``LiveStateCollector`` so
that every scrape shows one sample per mode, without a ``pid`` label.

Recording is best-effort (STYLE 8): ``safe_inc`` never raises into a caller.

The two counters every read touches (``context_requests``, ``context_cache_hits``)
are counted through ``read_counts``, a ``Tally``: each thread adds to plain
integers of its own, and the sums reach the counters in batches. A counter
increment costs a lock and, in multiprocess mode, a write to the process's
mmapped file (about 1 µs and 2 µs here); a thread's own integer costs 0.1 µs. The
counters lag by at most ``FLUSH_INTERVAL_S``: a background thread of the process
adds what was counted that often, a scrape of this process's registry adds it
first, and so does a normal exit. A process killed with -9 loses at most its
last interval of read counts.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("memory_worker.metrics")

MODES: tuple[str, ...] = ("read_write", "write_only", "read_only", "off")
DOWNGRADE_REASONS = ("auth", "consecutive_failures", "latency", "probe_failed", "ops")
READ_FAILURE_REASONS = (
    "not_found", "auth", "timeout", "server_error", "connection_error", "rate_limited",
    "client_error",
)
REDACTION_FIELDS = ("email", "phone", "address")
WRITE_FAILURE_REASONS = (
    "rate_limited", "timeout", "server_error", "connection_error", "auth", "client_error",
    "circuit_open",
)
WRITE_SKIP_REASONS = ("mode", "duplicate", "already_done")
PROBE_RESULTS = ("success", "failure", "locked")
REDIS_OPS = ("mode", "guard", "cache", "rate_limit", "enqueue", "write", "probe", "dlq")

FLUSH_INTERVAL_S = 1.0  # the longest a read's count waits before it reaches its counter


class Tally:
    """Counts of hot-path counters, kept per thread and added to the counters in batches.

    ``cell()`` is the calling thread's list of counts, one per counter, that
    only this thread writes: ``tally.cell()[i] += 1`` is a plain integer add,
    without a lock. ``flush()`` adds to each counter what every thread counted
    since the last flush; it alone writes the flushed totals, so an increment
    is never lost to a concurrent flush. It runs every ``interval_s`` on a
    daemon thread started with the first count, before every collection of
    the default registry, and at exit. A forked child starts from zero (its
    parent flushes what the parent counted) and starts its own flusher.
    """

    def __init__(self, *counters: Counter, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._counters = counters
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._local = threading.local()
        # Per thread that counted: (thread, its counts, what of them was flushed).
        self._cells: list[tuple[threading.Thread, list[int], list[int]]] = []
        self._flusher: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forget_parent)
        atexit.register(self.flush)
        _TALLIES.append(self)

    def cell(self) -> list[int]:
        """The calling thread's counts, in the order of the counters."""
        try:
            cell: list[int] = self._local.cell
        except AttributeError:
            cell = self._new_cell()
        return cell

    def _new_cell(self) -> list[int]:
        cell = [0] * len(self._counters)
        with self._lock:
            self._cells.append((threading.current_thread(), cell, [0] * len(cell)))
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_every_interval,
                                                 name="memory-metrics-flush", daemon=True)
                self._flusher.start()
        self._local.cell = cell
        return cell

    def flush(self) -> None:
        """Add to the counters what was counted since the last flush; never raises."""
        try:
            with self._lock:
                totals = [0] * len(self._counters)
                alive = []
                for thread, cell, flushed in self._cells:
                    for i, (count, done) in enumerate(zip(cell, flushed, strict=True)):
                        totals[i] += count - done
                        flushed[i] = count
                    if thread.is_alive():  # an ended thread counts no more: drop its cell
                        alive.append((thread, cell, flushed))
                self._cells = alive
                for counter, amount in zip(self._counters, totals, strict=True):
                    if amount:
                        counter.inc(amount)
        except Exception:
            log.debug("metric flush failed", exc_info=True)

    def _flush_every_interval(self) -> None:
        while True:
            time.sleep(self._interval_s)
            self.flush()

    def _forget_parent(self) -> None:
        """In a forked child: the parent's counts are the parent's to flush."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._cells = []
        self._flusher = None


_TALLIES: list[Tally] = []


class _FlushBeforeCollect(Collector):
    """Registered ahead of every counter, so a collection of the default registry sees
    every count made in this process up to that moment."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for tally in _TALLIES:
            tally.flush()
        return iter(())

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


REGISTRY.register(_FlushBeforeCollect())

# Reads are budgeted in hundreds of milliseconds, writes in seconds.
_READ_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5)
_WRITE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0)

downgrades = Counter(
    "memory_zep_downgrades", "Forced write_only records created, by reason", ["reason"]
)
shadow_downgrades = Counter(
    "memory_zep_shadow_downgrades",
    "Downgrades detected but not applied because DISABLE_AUTO_DOWNGRADE is on, by reason",
    ["reason"],
)
context_failures = Counter(
    "memory_zep_context_failures", "Context reads that returned no context, by reason", ["reason"]
)
redactions = Counter(
    "memory_zep_redactions", "PII replacements made before publishing, by type", ["field_type"]
)
read_latency = Histogram(
    "memory_zep_read_latency_seconds", "Latency of context reads that went to Zep",
    buckets=_READ_BUCKETS,
)
context_requests = Counter(
    "memory_zep_context_requests", "fetch_thread_context calls, cache hits included"
)
context_cache_hits = Counter(
    "memory_zep_context_cache_hits", "fetch_thread_context calls answered by the positive cache"
)
# The read path counts these through ``read_counts`` (cheaper than an increment each).
read_counts = Tally(context_requests, context_cache_hits)
CONTEXT_REQUESTS, CONTEXT_CACHE_HITS = 0, 1
read_requests = Counter("memory_zep_read_requests", "Context reads sent to Zep, failures included")
write_requests = Counter("memory_zep_write_requests", "Write attempts sent to Zep")
write_success = Counter("memory_zep_write_success", "Messages stored in Zep")
write_republished = Counter(
    "memory_zep_write_republished",
    "Messages published again by the ledger sweep: lost in transit or held by a dead worker",
)
write_failures = Counter(
    "memory_zep_write_failures", "Failed write attempts, by reason", ["reason"]
)
write_skipped = Counter(
    "memory_zep_write_skipped", "Messages not written, by reason", ["reason"]
)
write_latency = Histogram(
    "memory_zep_write_latency_seconds", "Latency of write calls to Zep", buckets=_WRITE_BUCKETS
)
circuit_breaker_opens = Counter(
    "memory_circuit_breaker_opens", "Times the shared write circuit breaker opened"
)
probes = Counter("memory_probe", "Recovery probe runs, by result", ["result"])
redis_errors = Counter(
    "memory_redis_errors", "Redis operations that failed and were tolerated", ["op"]
)

MODE_GAUGE = "memory_mode_gauge"
DLQ_SIZE_GAUGE = "memory_write_dlq_size"

_LABELLED: tuple[tuple[Counter, str, Sequence[str]], ...] = (
    (downgrades, "reason", DOWNGRADE_REASONS),
    (shadow_downgrades, "reason", DOWNGRADE_REASONS),
    (context_failures, "reason", READ_FAILURE_REASONS),
    (redactions, "field_type", REDACTION_FIELDS),
    (write_failures, "reason", WRITE_FAILURE_REASONS),
    (write_skipped, "reason", WRITE_SKIP_REASONS),
    (probes, "result", PROBE_RESULTS),
    (redis_errors, "op", REDIS_OPS),
)


def warm_metrics() -> None:
    """Create every known label value at zero so each series exists from the first scrape."""
    for counter, label, values in _LABELLED:
        for value in values:
            counter.labels(**{label: value})


def safe_inc(counter: Counter, amount: float = 1.0, **labels: str) -> None:
    """Increment and never raise: a metrics failure must not break the caller."""
    try:
        (counter.labels(**labels) if labels else counter).inc(amount)
    except Exception:
        log.debug("metric increment failed", exc_info=True)


def safe_observe(histogram: Histogram, seconds: float) -> None:
    try:
        histogram.observe(seconds)
    except Exception:
        log.debug("metric observation failed", exc_info=True)


class LiveStateCollector(Collector):
    """Reads the effective mode and the dead-letter size from Redis at scrape time.

    ``read_state`` returns ``(effective_mode, dlq_size)`` or raises; a failed
    read yields no samples for that scrape (a gap, not a lie).
    """

    def __init__(self, read_state: Callable[[], tuple[str, int]]) -> None:
        self._read_state = read_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            mode, dlq_size = self._read_state()
        except Exception as exc:
            log.warning("live metrics read failed: %s", type(exc).__name__)
            safe_inc(redis_errors, op="mode")
            return
        gauge = GaugeMetricFamily(MODE_GAUGE, "Effective memory mode, one-hot", labels=["mode"])
        for name in MODES:
            gauge.add_metric([name], 1.0 if name == mode else 0.0)
        yield gauge
        yield GaugeMetricFamily(DLQ_SIZE_GAUGE, "Entries in the write dead-letter queue",
                                value=float(dlq_size))

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
