"""The whole stack watched by a real Prometheus: every panel returns data, every alert parses.

Starts what ``make demo`` starts (the Zep simulator, the supervisord stack and the
example app, on the test Redis database), a Prometheus scraping the metrics server
and the app, drives a conversation, the drills (downgrades), a recovery by the
beat probe and a dead-lettered write, then evaluates every dashboard panel's query
and every alert expression through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from scripts.demo import Demo
from tests.test_dashboards import ALERTS, alert_rules, load_dashboard, substitute_variables
from tests.test_promql import Prometheus, _free_port, _prometheus_binary


@pytest.fixture
def stack(redis_url: str, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Demo]:
    monkeypatch.setenv("MEMORY_DEMO_REDIS_URL", redis_url)
    demo = Demo()
    try:
        demo.start()
        yield demo
    finally:
        demo.stop()


def start_prometheus(workdir: Path, targets: dict[str, tuple[str, str]]
                     ) -> tuple[subprocess.Popen[bytes], Prometheus]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [target]}]}
            for job, (target, path) in targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")
    port = _free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [_prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    return process, Prometheus(f"http://127.0.0.1:{port}", log)


def panel_queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in load_dashboard()["panels"]
            for target in panel.get("targets", []) if "expr" in target]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_panel_returns_data_after_real_traffic(stack: Demo, tmp_path: Path) -> None:
    """Downgrades, a recovery and a dead letter later, each panel query has samples."""
    def hostport(url: str) -> str:
        return urlsplit(url).netloc

    process, prometheus = start_prometheus(tmp_path, {
        "memory_metrics": (hostport(stack.metrics_url), "/metrics"),
        "chat_app": (hostport(stack.app_url), "/api/metrics/"),
    })
    try:
        prometheus.wait_for("both targets up", lambda: sorted(
            float(r["value"][1]) for r in prometheus.query("up")["data"]["result"]) == [1.0, 1.0],
            timeout=30)

        # Traffic: a conversation, the drills (each a downgrade), a beat recovery...
        assert stack.run(), "the demo scenario failed"
        # ... and a write Zep refuses for good.
        fault = httpx.post(f"{stack.sim_url}/_sim/faults", timeout=5, json={
            "method": "POST", "path": "*/memory", "status": 400,
            "body": {"message": "refused"}}).json()
        httpx.post(f"{stack.app_url}/api/chat/", timeout=5,
                   json={"message": "this one is refused", "thread_id": "e2e-dead"})
        deadline = time.monotonic() + 30
        while stack.status()["dlq_size"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stack.status()["dlq_size"] >= 1
        httpx.delete(f"{stack.sim_url}/_sim/faults/{fault['id']}", timeout=5)
        prometheus.wait_for("a scrape that saw the dead letter", lambda: any(
            float(r["value"][1]) >= 1
            for r in prometheus.query("max(memory_write_dlq_size)")["data"]["result"]))

        empty: dict[str, Any] = {}
        for title, expr in panel_queries():
            reply = prometheus.query(substitute_variables(expr))
            assert reply["status"] == "success", (title, reply.get("error"))
            if not reply["data"]["result"]:
                empty[title] = expr
        assert empty == {}, f"panels without data: {empty}"

        failed = {name: prometheus.query(expr).get("error")
                  for name, expr in alert_rules(ALERTS.read_text(encoding="utf-8")).items()
                  if prometheus.query(expr)["status"] != "success"}
        assert failed == {}
    finally:
        process.terminate()
        process.wait(timeout=10)
