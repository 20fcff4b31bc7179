"""Every dashboard query and alert expression against a real Prometheus.

A Prometheus from Debian's ``prometheus`` package (installed by
``scripts/check-rules.sh --install`` when missing) runs on loopback with its own
config and storage in a temporary directory. It scrapes a small in-test HTTP server
that serves the project's metrics (warmed, plus the live mode gauge and dead-letter
size) and loads ``grafana/alerts/memory_alerts.yml``. After one scrape and one rule
evaluation, every dashboard expression (template variables set to All) and every
alert expression goes through ``/api/v1/query`` and must parse and evaluate.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from memory_worker import metrics
from tests.test_dashboards import (
    ALERTS,
    CHECK_RULES,
    ROOT,
    alert_rules,
    dashboard_exprs,
    load_dashboard,
    substitute_variables,
)

JOB = "memory_metrics"
LIVE_MODE, LIVE_DLQ = "write_only", 2
# Loopback only, and never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _registry() -> CollectorRegistry:
    """The contract's metrics as a metrics server would expose them (values untouched)."""
    metrics.warm_metrics()
    registry = CollectorRegistry(auto_describe=True)
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            registry.register(value)
    registry.register(metrics.LiveStateCollector(lambda: (LIVE_MODE, LIVE_DLQ)))
    return registry


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    registry = _registry()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None and shutil.which("apt-get") is not None:
        subprocess.run(["bash", str(CHECK_RULES), "--install"], cwd=ROOT, check=True,
                       timeout=840)
        found = shutil.which("prometheus")
    if found is None:
        pytest.skip("no prometheus binary and no apt-get to install Debian's package")
    return found


class Prometheus:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _OPENER.open(url, timeout=5) as reply:
                body = reply.read()
        except urllib.error.HTTPError as exc:  # 4xx answers carry the error as JSON
            body = exc.read()
        data: dict[str, Any] = json.loads(body)
        return data

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        pytest.fail(f"prometheus: timed out waiting for {what}\n{tail}")


@pytest.fixture(scope="module")
def prometheus(exporter: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = _prometheus_binary()
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [exporter]}]}],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")
    port = _free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
        )
    try:
        server = Prometheus(f"http://127.0.0.1:{port}", log)

        def ready() -> bool:
            with _OPENER.open(f"{server.base}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)

        server.wait_for("readiness", ready)
        server.wait_for("the first scrape", lambda: _values(
            server.query(f'up{{job="{JOB}"}} == 1')) == [1.0])
        server.wait_for("the first rule evaluation", lambda: all(
            rule["health"] != "unknown" for rule in _rules(server)))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _values(reply: dict[str, Any]) -> list[float]:
    return [float(item["value"][1]) for item in reply["data"]["result"]]


def _rules(server: Prometheus) -> list[dict[str, Any]]:
    groups = server.get("/api/v1/rules")["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.mark.timeout(60)
def test_alert_rules_load_and_evaluate(prometheus: Prometheus) -> None:
    rules = {rule["name"]: rule for rule in _rules(prometheus)}
    assert set(rules) == set(alert_rules(ALERTS.read_text(encoding="utf-8")))
    unhealthy = {name: rule.get("lastError") for name, rule in rules.items()
                 if rule["health"] != "ok"}
    assert unhealthy == {}


@pytest.mark.timeout(60)
def test_every_alert_expression_parses(prometheus: Prometheus) -> None:
    exprs = {rule["name"]: rule["query"] for rule in _rules(prometheus)}
    exprs.update(alert_rules(ALERTS.read_text(encoding="utf-8")))
    failed = {}
    for name, expr in exprs.items():
        reply = prometheus.query(expr)
        if reply["status"] != "success":
            failed[name] = reply.get("error")
    assert failed == {}


@pytest.mark.timeout(60)
def test_every_dashboard_expression_parses(prometheus: Prometheus) -> None:
    exprs = dashboard_exprs(load_dashboard())
    assert len(exprs) >= 10
    failed = {}
    for expr in exprs:
        reply = prometheus.query(substitute_variables(expr))
        if reply["status"] != "success":
            failed[expr] = reply.get("error")
    assert failed == {}


@pytest.mark.timeout(60)
def test_mode_panel_and_job_variable_see_the_scraped_values(prometheus: Prometheus) -> None:
    mode_expr = substitute_variables(load_dashboard()["panels"][0]["targets"][0]["expr"])
    result = prometheus.query(mode_expr)["data"]["result"]
    assert [item["metric"]["mode"] for item in result] == [LIVE_MODE]
    assert _values(prometheus.query(f'max(memory_write_dlq_size{{job="{JOB}"}})')) == [
        float(LIVE_DLQ)]
    jobs = prometheus.get("/api/v1/label/job/values",
                          **{"match[]": "memory_zep_context_requests_total"})
    assert jobs["data"] == [JOB]
