"""Alert routing: a downgrade pages, a warning goes to chat, and nothing leaves loopback.

``grafana/alertmanager.yml`` sends critical alerts to PagerDuty and warnings to Slack.
``amtool`` checks the file and routes every rule of ``memory_alerts.yml`` by its labels.
Then the whole chain runs for real, on 127.0.0.1 only:

- the incident: a read in a process of its own, with a Zep API key the simulator
  refuses, gets a 401; the guard forces ``write_only`` (reason ``auth``) and counts
  the downgrade in ``PROMETHEUS_MULTIPROC_DIR``, as a web process would;
- the real ``memory-worker metrics-server`` serves that counter and the mode it reads
  from Redis;
- a real Prometheus scrapes it every second and evaluates a test copy of the rules in
  which only ``for`` is shorter, a sixtieth of it (a minute becomes a second): the
  expressions are the file's own;
- a real Alertmanager runs a test copy of ``alertmanager.yml`` in which the route tree
  and the inhibitions are the file's own, ``group_wait``/``group_interval`` are a
  second, and each receiver keeps its name but becomes a webhook to an HTTP server in
  a thread of this process (``/pagerduty-critical`` standing in for PagerDuty,
  ``/slack-warnings`` for Slack). The copy has no ``pagerduty_configs`` or
  ``slack_configs`` left, which the tests assert before starting it: no notification
  can reach an outside host, and no key file is read.

Prometheus and Alertmanager come from Debian's ``prometheus`` and
``prometheus-alertmanager`` packages, installed by ``scripts/check-rules.sh --install``
when missing, and run as private processes on free loopback ports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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
import redis

from tests.processes import ROOT, project_env
from tests.test_dashboards import ALERTS, CHECK_RULES, alert_rules
from tests.test_exposition import metrics_server_process
from tests.test_promql import Prometheus, _free_port, _prometheus_binary

ROUTING = ROOT / "grafana" / "alertmanager.yml"
PAGER, CHAT = "pagerduty-critical", "slack-warnings"
RECEIVER_BY_SEVERITY = {"critical": PAGER, "warning": CHAT}
CRITICAL = {"MemoryAutoDowngrade", "MemoryStuckInDowngrade", "MemoryWriteDLQGrowing"}
ENVIRONMENT = "e2e"  # the deployment label the test Prometheus adds to its alerts
WAIT = 40.0  # seconds: an upper bound for each awaited signal, never a pause

# Loopback only, and never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}

Notification = dict[str, Any]


def _private_env() -> dict[str, str]:
    """The environment of the Go servers: no proxy, so loopback stays loopback."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None and shutil.which("apt-get") is not None:
        subprocess.run(["bash", str(CHECK_RULES), "--install"], cwd=ROOT, check=True,
                       timeout=840)
        found = shutil.which(name)
    if found is None:
        pytest.skip(f"no {name} and no apt-get to install Debian's prometheus-alertmanager")
    return found


def _wait(what: str, check: Callable[[], bool], log: Path | None = None,
          timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# --- test copies of the configuration ------------------------------------------------------

def loopback_copy(text: str, webhooks: str) -> str:
    """``alertmanager.yml`` with each receiver a webhook to ``webhooks``/<its name>.

    The route tree and the inhibitions are kept as written; only the group timers are
    a second, so that a notification follows its alert at once. ``receivers:`` is the
    file's last section (its header says so): everything from it on is replaced.
    """
    head, found, receivers = text.partition("\nreceivers:\n")
    assert found, "alertmanager.yml: no top-level receivers section"
    names = re.findall(r"(?m)^  - name: (\S+)\s*$", receivers)
    head = re.sub(r"(?m)^(\s+group_(?:wait|interval):) \S+\s*$", r"\1 1s", head)
    webhook = ("  - name: {0}\n    webhook_configs:\n"
               "      - url: {1}/{0}\n        send_resolved: false\n")
    return head + "\nreceivers:\n" + "".join(webhook.format(name, webhooks) for name in names)


def quick_rules(text: str) -> str:
    """The alert rules with each ``for`` a sixtieth as long: minutes become seconds."""
    unit = {"s": 1, "m": 60, "h": 3600}

    def shorter(found: re.Match[str]) -> str:
        seconds = int(found.group(2)) * unit[found.group(3)]
        return f"{found.group(1)}for: {max(1, seconds // 60)}s"

    copy, count = re.subn(r"(?m)^(\s+)for: (\d+)([smh])\s*$", shorter, text)
    assert count == len(alert_rules(text))
    return copy


def rule_labels(text: str) -> dict[str, dict[str, str]]:
    """``{alert name: its labels}`` of a rules file in this project's layout."""
    found: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*- alert:\s*", text)[1:]:
        name = block.split()[0]
        labels = re.search(r"\n(\s+)labels:\n((?:\1\s+\S.*\n)+)", block)
        assert labels, name
        found[name] = dict(re.findall(r"^\s+(\w+):\s*(\S+)\s*$", labels.group(2), re.M))
    return found


# --- the receivers' stand-in ---------------------------------------------------------------

class Webhooks:
    """An HTTP server on 127.0.0.1 recording each notification with the path it came to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[tuple[str, Notification]] = []
        webhooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with webhooks._lock:
                    webhooks._received.append((self.path.strip("/"), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Webhooks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def alerts(self, receiver: str, **labels: str) -> list[dict[str, Any]]:
        """The alerts notified at ``receiver`` whose labels include ``labels``."""
        with self._lock:
            received = list(self._received)
        return [alert for path, note in received if path == receiver
                for alert in note["alerts"]
                if labels.items() <= alert["labels"].items()]

    def receivers(self) -> set[str]:
        with self._lock:
            return {path for path, _ in self._received}


class Alertmanager:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log

    def request(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        with _OPENER.open(request, timeout=5) as reply:
            raw = reply.read()
        return json.loads(raw) if raw else None

    def ready(self) -> bool:
        with _OPENER.open(f"{self.base}/-/ready", timeout=2) as reply:
            return bool(reply.status == 200)

    def alerts(self, **labels: str) -> dict[str, dict[str, Any]]:
        """``{alertname: status}`` of the alerts whose labels include ``labels``."""
        query = urllib.parse.urlencode(
            [("filter", f'{name}="{value}"') for name, value in labels.items()])
        found = self.request(f"/api/v2/alerts?{query}")
        return {alert["labels"]["alertname"]: alert["status"] for alert in found}


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def amtool() -> str:
    return _tool("amtool")


@pytest.fixture(scope="module")
def webhooks() -> Iterator[Webhooks]:
    with Webhooks() as server:
        yield server


@pytest.fixture(scope="module")
def alertmanager(webhooks: Webhooks, amtool: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Alertmanager]:
    binary = _tool("prometheus-alertmanager")
    workdir = tmp_path_factory.mktemp("alertmanager")
    config = workdir / "alertmanager.yml"
    config.write_text(loopback_copy(ROUTING.read_text(encoding="utf-8"), webhooks.url),
                      encoding="utf-8")
    subprocess.run([amtool, "check-config", str(config)], check=True, capture_output=True,
                   timeout=60)
    port = _free_port()
    log = workdir / "alertmanager.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=_private_env())
    try:
        server = Alertmanager(f"http://127.0.0.1:{port}", log)
        _wait("alertmanager readiness", server.ready, log)
        yield server
    finally:
        _stop(process)


@pytest.fixture
def metrics_server(redis_url: str, conn: redis.Redis, sim: Any, tmp_path: Path
                   ) -> Iterator[tuple[str, dict[str, str]]]:
    """The real metrics server on the test Redis; yields its host:port and the project env."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = project_env(redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                      ZEP_API_URL=sim.url, ZEP_API_KEY="test-key",
                      PROMETHEUS_MULTIPROC_DIR=str(directory))
    with metrics_server_process(env, directory, tmp_path / "metrics.log") as (_, url):
        yield urllib.parse.urlsplit(url).netloc, env


@pytest.fixture
def prometheus(metrics_server: tuple[str, dict[str, str]], alertmanager: Alertmanager,
               tmp_path: Path) -> Iterator[Prometheus]:
    target, _ = metrics_server
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    rules = workdir / "memory_alerts.yml"
    rules.write_text(quick_rules(ALERTS.read_text(encoding="utf-8")), encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "external_labels": {"environment": ENVIRONMENT}},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [urllib.parse.urlsplit(alertmanager.base).netloc]}]}]},
        "scrape_configs": [{"job_name": "memory_metrics",
                            "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")
    port = _free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [_prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=_private_env())
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", log)
    finally:
        _stop(process)


# --- the configuration ---------------------------------------------------------------------

@pytest.mark.timeout(900)
def test_amtool_accepts_the_routing_file(amtool: str) -> None:
    """`amtool check-config grafana/alertmanager.yml` succeeds: routes, inhibitions, receivers."""
    done = subprocess.run([amtool, "check-config", str(ROUTING)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    assert "2 receivers" in done.stdout


def test_the_file_holds_no_secret_and_reads_keys_from_files() -> None:
    """PagerDuty's routing key and Slack's webhook URL are file paths, never values."""
    text = ROUTING.read_text(encoding="utf-8")
    assert re.search(r"(?m)^\s+(- )?routing_key_file: /\S+$", text)
    assert re.search(r"(?m)^\s+(- )?api_url_file: /\S+$", text)
    assert not re.search(r"(?m)^\s+(- )?(routing_key|service_key|api_url|url):", text)
    assert "hooks.slack.com" not in text


def test_rules_carry_the_severity_and_service_the_routing_uses() -> None:
    """Auto-downgrade, stuck in downgrade and a growing DLQ page; every other rule warns."""
    labels = rule_labels(ALERTS.read_text(encoding="utf-8"))
    assert set(labels) == set(alert_rules(ALERTS.read_text(encoding="utf-8")))
    assert {name for name, found in labels.items() if found["severity"] == "critical"} == CRITICAL
    assert {found["severity"] for name, found in labels.items() if name not in CRITICAL} == {
        "warning"}
    assert {found["service"] for found in labels.values()} == {"memory_worker"}


@pytest.mark.timeout(900)
def test_amtool_routes_every_rule_by_its_severity(amtool: str) -> None:
    """Each rule's labels, through the routing tree, reach the receiver of its severity."""
    routed = {}
    for name, labels in rule_labels(ALERTS.read_text(encoding="utf-8")).items():
        done = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={ROUTING}",
             f"alertname={name}", *(f"{key}={value}" for key, value in labels.items())],
            capture_output=True, text=True, timeout=60, check=True)
        routed[name] = (done.stdout.strip(), RECEIVER_BY_SEVERITY[labels["severity"]])
    assert {name: got for name, (got, want) in routed.items() if got != want} == {}


def test_the_test_copy_sends_to_loopback_only() -> None:
    """The copy the tests run keeps routes and inhibitions; its receivers are local webhooks."""
    original = ROUTING.read_text(encoding="utf-8")
    copy = loopback_copy(original, "http://127.0.0.1:9")
    assert "pagerduty_configs" not in copy and "slack_configs" not in copy
    assert "_file:" not in copy
    urls = re.findall(r"(?m)^\s+- url: (\S+)$", copy)
    assert urls == [f"http://127.0.0.1:9/{PAGER}", f"http://127.0.0.1:9/{CHAT}"]

    def tree(text: str) -> str:
        kept = text.partition("\nreceivers:\n")[0]
        return re.sub(r"(?m)^(\s+group_(?:wait|interval):) \S+$", r"\1 -", kept)

    assert tree(copy) == tree(original)


# --- end to end ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_forced_downgrade_pages_and_the_warning_goes_to_chat(
    prometheus: Prometheus, alertmanager: Alertmanager, webhooks: Webhooks,
    metrics_server: tuple[str, dict[str, str]],
) -> None:
    """Zep refuses the key: write_only, a page for the downgrade, then for being stuck."""
    _, env = metrics_server
    prometheus.wait_for("readiness and the first scrape", lambda: [
        item["value"][1] for item in prometheus.query("up")["data"]["result"]] == ["1"],
        timeout=WAIT)
    prometheus.wait_for("read_write seen and every rule evaluated", lambda: (
        prometheus.query('memory_mode_gauge{mode="read_write"} == 1')["data"]["result"] != []
        and all(rule["health"] == "ok" for group in
                prometheus.get("/api/v1/rules")["data"]["groups"]
                for rule in group["rules"])), timeout=WAIT)

    # When a read meets a revoked key (a 401 from Zep) in a process of the deployment...
    read = subprocess.run(
        [sys.executable, "-c",
         "import json, memory_worker\n"
         "_, meta = memory_worker.fetch_thread_context('alert-routing-e2e')\n"
         "print(json.dumps(meta))"],
        cwd=ROOT, env={**env, "ZEP_API_KEY": "revoked-key"}, capture_output=True, text=True,
        timeout=60, check=False)
    assert read.returncode == 0, read.stderr[-2000:]
    meta = json.loads(read.stdout.strip().splitlines()[-1])
    assert meta["reason"] == "auth"
    assert meta["mode"] == "write_only"

    # ... the downgrade pages (PagerDuty's stand-in), with the deployment's labels.
    _wait("the auto-downgrade page", lambda: webhooks.alerts(
        PAGER, alertname="MemoryAutoDowngrade", environment=ENVIRONMENT) != [],
        prometheus.log)
    [page] = webhooks.alerts(PAGER, alertname="MemoryAutoDowngrade")[:1]
    assert page["labels"] == {"alertname": "MemoryAutoDowngrade", "reason": "auth",
                              "severity": "critical", "service": "memory_worker",
                              "environment": ENVIRONMENT}
    assert page["status"] == "firing"
    assert "reason auth" in page["annotations"]["summary"]

    # No probe ran since (no beat here): a warning, to Slack's stand-in and not paged.
    _wait("the probe warning in chat", lambda: webhooks.alerts(
        CHAT, alertname="MemoryProbeNotRunning", environment=ENVIRONMENT) != [],
        prometheus.log)
    assert webhooks.alerts(PAGER, alertname="MemoryProbeNotRunning") == []

    # Still write_only after the (shortened) 15 minutes: the stuck page, which from now
    # on inhibits the auto-downgrade alert of the same deployment.
    _wait("the stuck-in-downgrade page", lambda: webhooks.alerts(
        PAGER, alertname="MemoryStuckInDowngrade", environment=ENVIRONMENT) != [],
        prometheus.log)
    [stuck] = webhooks.alerts(PAGER, alertname="MemoryStuckInDowngrade")[:1]
    assert stuck["labels"]["mode"] == "write_only"
    assert stuck["labels"]["severity"] == "critical"
    _wait("the auto-downgrade inhibited by the stuck alert", lambda: alertmanager.alerts(
        alertname="MemoryAutoDowngrade", environment=ENVIRONMENT)["MemoryAutoDowngrade"][
        "inhibitedBy"] != [], alertmanager.log)

    # Every page was critical, every chat message a warning.
    assert {alert["labels"]["severity"] for alert in webhooks.alerts(
        PAGER, environment=ENVIRONMENT)} == {"critical"}
    assert {alert["labels"]["severity"] for alert in webhooks.alerts(
        CHAT, environment=ENVIRONMENT)} == {"warning"}
    assert webhooks.receivers() <= {PAGER, CHAT}


@pytest.mark.timeout(120)
def test_inhibitions_hold_within_one_deployment_only(
    alertmanager: Alertmanager, webhooks: Webhooks
) -> None:
    """A page mutes the warnings it explains, in its own deployment and not in another."""
    def alert(name: str, environment: str, severity: str = "warning") -> dict[str, Any]:
        return {"labels": {"alertname": name, "service": "memory_worker",
                           "severity": severity, "environment": environment},
                "annotations": {"summary": name}}

    alertmanager.request("/api/v2/alerts", [
        alert("MemoryAutoDowngrade", "inhibit-a", "critical"),
        alert("MemoryReadFailuresSpike", "inhibit-a"),
        alert("MemoryReadLatencyHigh", "inhibit-a"),
        alert("MemoryProbeNotRunning", "inhibit-a"),
        alert("MemoryReadFailuresSpike", "inhibit-b"),
        alert("MemoryWriteDLQGrowing", "inhibit-c", "critical"),
        alert("MemoryWriteDLQNotEmpty", "inhibit-c"),
    ])
    expected = {
        "inhibit-a": {"MemoryAutoDowngrade": False, "MemoryReadFailuresSpike": True,
                      "MemoryReadLatencyHigh": True, "MemoryProbeNotRunning": False},
        "inhibit-b": {"MemoryReadFailuresSpike": False},
        "inhibit-c": {"MemoryWriteDLQGrowing": False, "MemoryWriteDLQNotEmpty": True},
    }

    def inhibited() -> dict[str, dict[str, bool]]:
        return {environment: {name: status["inhibitedBy"] != [] for name, status in
                              alertmanager.alerts(environment=environment).items()}
                for environment in expected}

    _wait("the inhibitions", lambda: inhibited() == expected, alertmanager.log)
    # The page itself went out, to PagerDuty's stand-in.
    _wait("the page of the inhibiting alert", lambda: webhooks.alerts(
        PAGER, alertname="MemoryAutoDowngrade", environment="inhibit-a") != [],
        alertmanager.log)
