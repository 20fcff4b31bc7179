#!/usr/bin/env bash
# Check the Prometheus alert rules and run their unit tests with promtool; check the
# Alertmanager routing with amtool.
# When a tool is missing, install the Debian package that ships it: `prometheus`
# (promtool, and /usr/bin/prometheus, which tests/test_promql.py runs) and
# `prometheus-alertmanager` (amtool, and /usr/bin/prometheus-alertmanager, which
# tests/test_alert_routing.py runs).
#   scripts/check-rules.sh            install if needed, check and test rules and routing
#   scripts/check-rules.sh --install  only install if needed
# This script starts and stops no service. (On a machine whose init runs services the
# packages' own postinst may start their units; containers' policy-rc.d forbids it.)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rules=$here/grafana/alerts/memory_alerts.yml
tests=$here/grafana/alerts/memory_alerts_test.yml
routing=$here/grafana/alertmanager.yml

missing=()
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  missing+=(prometheus)
fi
if ! command -v amtool >/dev/null 2>&1 || ! command -v prometheus-alertmanager >/dev/null 2>&1; then
  missing+=(prometheus-alertmanager)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "check-rules: ${missing[*]} missing and apt-get is not available" >&2
    exit 1
  fi
  echo "check-rules: installing Debian's ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--install" ]; then
  exit 0
fi

promtool --version 2>&1 | head -n 1
promtool check rules "$rules"
promtool test rules "$tests"

amtool --version 2>&1 | head -n 1
amtool check-config "$routing"
# Where each severity goes (tests/test_alert_routing.py checks every rule of $rules).
route() {
  local want=$1
  shift
  local got
  got=$(amtool config routes test --config.file="$routing" "$@" 2>/dev/null)
  if [ "$got" != "$want" ]; then
    echo "check-rules: $* routed to '$got', expected '$want'" >&2
    exit 1
  fi
  echo "  route {$*} -> $got"
}
echo "Routing: $routing"
route pagerduty-critical service=memory_worker severity=critical alertname=MemoryStuckInDowngrade
route slack-warnings service=memory_worker severity=warning alertname=MemoryProbeNotRunning
echo "  SUCCESS"
