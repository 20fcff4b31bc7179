"""The metric names of SPEC §9, shared by the tests that check them."""

from __future__ import annotations

# SPEC §9: every name, its type, and the label it carries.
CONTRACT: dict[str, tuple[str, str | None]] = {
    "memory_mode_gauge": ("gauge", "mode"),
    "memory_zep_downgrades_total": ("counter", "reason"),
    "memory_zep_context_failures_total": ("counter", "reason"),
    "memory_zep_redactions_total": ("counter", "field_type"),
    "memory_zep_read_latency_seconds": ("histogram", None),
    "memory_zep_context_requests_total": ("counter", None),
    "memory_zep_context_cache_hits_total": ("counter", None),
    "memory_zep_read_requests_total": ("counter", None),
    "memory_zep_write_requests_total": ("counter", None),
    "memory_zep_write_success_total": ("counter", None),
    "memory_zep_write_failures_total": ("counter", "reason"),
    "memory_zep_write_skipped_total": ("counter", "reason"),
    "memory_zep_write_latency_seconds": ("histogram", None),
    "memory_circuit_breaker_opens_total": ("counter", None),
    "memory_probe_total": ("counter", "result"),
    "memory_write_dlq_size": ("gauge", None),
    "memory_redis_errors_total": ("counter", "op"),
}

# Read live from Redis by the metrics server, not kept by processes.
LIVE = ("memory_mode_gauge", "memory_write_dlq_size")
