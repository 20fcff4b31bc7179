"""Grafana dashboard and Prometheus alert rules: structure, datasource and metric names.

These checks need neither Grafana nor Prometheus: the dashboard is plain JSON, and every
PromQL expression (dashboard and alert rules) is checked to name only metrics, labels and
functions that exist. ``test_check_rules_script_passes`` runs ``scripts/check-rules.sh``
(``promtool check rules`` and ``promtool test rules``), installing Debian's ``prometheus``
package when promtool is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from memory_worker import metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "memory_service_monitoring.json"
ALERTS = ROOT / "grafana" / "alerts" / "memory_alerts.yml"
ALERT_TESTS = ROOT / "grafana" / "alerts" / "memory_alerts_test.yml"
CHECK_RULES = ROOT / "scripts" / "check-rules.sh"

DATASOURCE_UID = "${DS_PROMETHEUS}"

PANEL_TITLES = (
    "Memory Mode (Current)",
    "Downgrade Events (10min window)",
    "Read Health - p95 Latency",
    "Context Failures by Reason",
    "PII Redactions (Audit Trail)",
    "Cache Hit Rate",
    "Write Health - Success Rate",
    "Circuit Breaker Opens",
    "Read/Write Request Rate",
)

ALERT_NAMES = {
    "MemoryAutoDowngrade",
    "MemoryStuckInDowngrade",
    "MemoryReadFailuresSpike",
    "MemoryReadLatencyHigh",
    "MemoryProbeNotRunning",
    "MemoryWriteDLQGrowing",
}

# Dashboard template variables and the labels Prometheus adds to every scraped series.
TEMPLATE_VALUES = {"$job": ".*", "$instance": ".*"}
TARGET_LABELS = {"job", "instance"}

PROMQL_FUNCTIONS = {
    # aggregation operators
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "delta", "deriv", "floor", "histogram_quantile", "idelta", "increase", "irate",
    "label_replace", "label_join", "predict_linear", "rate", "resets", "round", "scalar",
    "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "last_over_time", "present_over_time",
}
PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "inf", "nan",
}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


# --- helpers shared with test_promql ----------------------------------------------------

def contract_metrics() -> dict[str, set[str]]:
    """Every exposed sample name of memory_worker.metrics, with its label names."""
    metrics.warm_metrics()
    known: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.collect():
            labels = {name for sample in family.samples for name in sample.labels}
            for suffix in _SUFFIXES[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                known[family.name + suffix] = (labels - {"le"}) | extra
    live = metrics.LiveStateCollector(lambda: ("read_write", 0))
    for family in live.collect():
        known[family.name] = {name for sample in family.samples for name in sample.labels}
    return known


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in the tree, depth first."""
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from walk(child)


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and annotation queries."""
    return [str(obj["expr"]) for obj in walk(dashboard) if "expr" in obj]


def substitute_variables(expr: str) -> str:
    """The query as Grafana sends it with every template variable set to All."""
    for name, value in TEMPLATE_VALUES.items():
        expr = expr.replace(name, value)
    return expr


def alert_rules(text: str) -> dict[str, str]:
    """``{alert name: expr}`` of a rules file written in this project's YAML layout.

    Handles plain, quoted and block (``|``, ``>``) scalars for ``expr``; the project
    keeps PyYAML out of its dependencies and promtool validates the full syntax.
    """
    rules: dict[str, str] = {}
    lines = text.splitlines()
    name = None
    for index, line in enumerate(lines):
        alert = re.match(r"\s*- alert:\s*(\S+)\s*$", line)
        if alert:
            name = alert.group(1)
            continue
        found = re.match(r"(\s*)expr:\s*(.*?)\s*$", line)
        if not found or name is None:
            continue
        indent, value = len(found.group(1)), found.group(2)
        if value in {"|", "|-", ">", ">-"}:
            block: list[str] = []
            for following in lines[index + 1:]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following.strip())
            value = "\n".join(block).strip()
        elif value[:1] in {"'", '"'}:
            value = value[1:-1]
        rules[name] = value
    return rules


def promql_names(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, function names, label names) an expression uses."""
    labels: set[str] = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'|`[^`]*`", '""', expr)
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    for clause in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text
    ):
        labels.update(part.strip() for part in clause.split(",") if part.strip())
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )
    names: set[str] = set()
    functions: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*|\d[\w.]*", text):
        token = match.group(0)
        if token[0].isdigit() or token in PROMQL_KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            functions.add(token)
        else:
            names.add(token)
    return names, functions, labels


def check_expr(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Problems of one expression: unknown metrics, functions or labels."""
    problems: list[str] = []
    names, functions, labels = promql_names(substitute_variables(expr))
    if not names:
        problems.append("names no metric")
    problems += [f"unknown metric {name}" for name in sorted(names - set(known))]
    problems += [f"unknown function {name}" for name in sorted(functions - PROMQL_FUNCTIONS)]
    allowed = set(TARGET_LABELS)
    for name in names & set(known):
        allowed |= known[name]
    problems += [f"unknown label {name}" for name in sorted(labels - allowed)]
    return problems


# --- dashboard ----------------------------------------------------------------------------

def test_dashboard_is_importable_json_with_a_datasource_input() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "memory-service-monitoring"
    assert dashboard["title"] == "Memory Service Monitoring"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None
    inputs = {entry["name"]: entry for entry in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert {"job", "instance"} <= set(variables)
    for var in variables.values():
        assert var["datasource"]["uid"] == DATASOURCE_UID


def test_first_nine_panels_are_the_documented_ones_in_order() -> None:
    panels = load_dashboard()["panels"]
    assert tuple(panel["title"] for panel in panels[:9]) == PANEL_TITLES
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    # Grafana lays panels out by position: keep the reading order the list order.
    positions = [(panel["gridPos"]["y"], panel["gridPos"]["x"]) for panel in panels]
    assert positions == sorted(positions)
    assert panels[0]["type"] == "stat"
    assert panels[3]["type"] == "table"


def test_every_panel_and_target_uses_the_datasource_input() -> None:
    for panel in load_dashboard()["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for obj in walk(load_dashboard()):
        source = obj.get("datasource")
        if isinstance(source, dict) and source.get("type") == "prometheus":
            assert source["uid"] == DATASOURCE_UID
    assert "${DS_PROMETHEUS}" in DASHBOARD.read_text(encoding="utf-8")


def test_dashboard_queries_name_only_contract_metrics() -> None:
    known = contract_metrics()
    exprs = dashboard_exprs(load_dashboard())
    assert len(exprs) >= 10
    problems = {expr: check_expr(expr, known) for expr in exprs}
    assert {expr: found for expr, found in problems.items() if found} == {}
    used = set().union(*(promql_names(substitute_variables(e))[0] for e in exprs))
    assert "memory_zep_read_latency_seconds_bucket" in used
    assert "zep_read_latency_seconds_bucket" not in used


def test_dashboard_panels_query_what_the_notes_describe() -> None:
    panels = load_dashboard()["panels"]

    def exprs(index: int) -> str:
        return " ".join(target["expr"] for target in panels[index]["targets"])

    assert "memory_mode_gauge" in exprs(0)
    mappings = panels[0]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {mode: mappings[mode]["color"] for mode in metrics.MODES} == {
        "off": "grey", "write_only": "yellow", "read_only": "blue", "read_write": "green",
    }
    assert "sum by (reason)" in exprs(1) and "[10m]" in exprs(1)
    assert "histogram_quantile(0.95, sum by (le)" in exprs(2)
    steps = panels[2]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps] == [None, 0.25, 0.5]
    assert "sum by (reason)" in exprs(3) and "[1h]" in exprs(3)
    assert "sum by (field_type)" in exprs(4)
    for index in (5, 6):  # percentages: the denominator is filtered, never divided by zero
        assert "> 0)" in exprs(index) and exprs(index).startswith("100 *")
    assert "memory_circuit_breaker_opens_total" in exprs(7)
    assert "memory_zep_read_requests_total" in exprs(8)
    assert "memory_zep_write_requests_total" in exprs(8)


def test_template_variables_query_a_contract_metric() -> None:
    known = contract_metrics()
    for var in load_dashboard()["templating"]["list"]:
        found = re.fullmatch(r"label_values\((\w+)(?:\{[^}]*\})?,\s*(\w+)\)", var["definition"])
        assert found, var["definition"]
        assert found.group(1) in known
        assert found.group(2) in TARGET_LABELS


# --- alert rules --------------------------------------------------------------------------

def test_alert_rules_name_only_contract_metrics() -> None:
    known = contract_metrics()
    rules = alert_rules(ALERTS.read_text(encoding="utf-8"))
    assert set(rules) >= ALERT_NAMES
    problems = {name: check_expr(expr, known) for name, expr in rules.items()}
    assert {name: found for name, found in problems.items() if found} == {}


def test_every_alert_has_severity_and_operator_annotations() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*- alert:\s*", text)[1:]
    assert len(blocks) == len(alert_rules(text))
    for block in blocks:
        name = block.split()[0]
        for key in ("severity:", "summary:", "description:", "runbook:", "for:"):
            assert key in block, (name, key)
        assert "memory-worker " in block, name
    assert "{{ $labels.reason }}" in blocks[0]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    lines = [line.strip() for line in ALERT_TESTS.read_text(encoding="utf-8").splitlines()]
    firing: set[str] = set()
    quiet: set[str] = set()
    for index, line in enumerate(lines):
        found = re.fullmatch(r"alertname:\s*(\S+)", line)
        if not found:
            continue
        following = next(item for item in lines[index + 1:] if item)
        (quiet if following == "exp_alerts: []" else firing).add(found.group(1))
    names = set(alert_rules(ALERTS.read_text(encoding="utf-8")))
    assert names - firing == set()
    assert names - quiet == set()


def test_expression_parser_catches_unknown_names() -> None:
    known = contract_metrics()
    assert check_expr("rate(zep_read_latency_seconds_bucket[5m])", known) == [
        "unknown metric zep_read_latency_seconds_bucket"]
    assert check_expr('sum by (field) (memory_zep_redactions_total{field_type="email"})',
                      known) == ["unknown label field"]
    assert check_expr("histogram_quantil(0.9, memory_zep_read_latency_seconds_bucket)",
                      known) == ["unknown function histogram_quantil"]
    assert check_expr('memory_mode_gauge{mode="off"} == 1 and on () vector(1)', known) == []


@pytest.mark.timeout(900)
@pytest.mark.skipif(
    shutil.which("promtool") is None and shutil.which("apt-get") is None,
    reason="neither promtool nor apt-get (to install Debian's prometheus package) available",
)
def test_check_rules_script_passes() -> None:
    """promtool check rules + promtool test rules, through the script `make test` runs."""
    done = subprocess.run(
        ["bash", str(CHECK_RULES)], cwd=ROOT, capture_output=True, text=True, timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
