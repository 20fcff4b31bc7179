#!/usr/bin/env bash
# Check the Prometheus alert rules and run their unit tests with promtool.
# When promtool is missing, install Debian's `prometheus` package, which ships it
# (and /usr/bin/prometheus, which tests/test_promql.py runs).
#   scripts/check-rules.sh            install if needed, check and test the rules
#   scripts/check-rules.sh --install  only install if needed
# This script starts and stops no service. (On a machine whose init runs services the
# package's own postinst may start its prometheus unit; containers' policy-rc.d forbids it.)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rules=$here/grafana/alerts/memory_alerts.yml
tests=$here/grafana/alerts/memory_alerts_test.yml

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "check-rules: promtool or prometheus is missing and apt-get is not available" >&2
    exit 1
  fi
  echo "check-rules: promtool or prometheus missing, installing Debian's prometheus package" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
fi

if [ "${1:-}" = "--install" ]; then
  exit 0
fi

promtool --version 2>&1 | head -n 1
promtool check rules "$rules"
promtool test rules "$tests"
