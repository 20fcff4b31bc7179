"""Metrics: every contract name exists from the first scrape; live values are one-hot."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
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
