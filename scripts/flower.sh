#!/usr/bin/env bash
# Flower for the memory workers, never without basic auth (SPEC §3, §11).
#
# Refuses to start (exit 1, one line) unless FLOWER_BASIC_AUTH is user:password (several
# credentials are separated by commas). Flower reads FLOWER_BASIC_AUTH from the environment
# itself, so the password never appears on a command line (visible to every local user in
# `ps`) nor in anything this script prints. Listens on 127.0.0.1, port FLOWER_PORT (5555).
#
# Flower serves its own metrics (flower_*) at its /metrics. It is kept out of the project's
# PROMETHEUS_MULTIPROC_DIR: there the metrics server would serve them as well, with a pid
# label, and the gauges of every Flower that ever ran would stay there as if still live.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

refuse() {
  echo "memory_flower: $1" >&2
  exit 1
}

auth=${FLOWER_BASIC_AUTH:-}
credential='[^:,]+:[^,]+'
[ -n "$auth" ] || refuse "FLOWER_BASIC_AUTH is not set; Flower does not start without basic auth"
[[ "$auth" =~ ^${credential}(,${credential})*$ ]] \
  || refuse "FLOWER_BASIC_AUTH must be user:password (a comma separates several)"
port=${FLOWER_PORT:-5555}
[[ "$port" =~ ^[0-9]+$ ]] || refuse "FLOWER_PORT must be a port number"

export FLOWER_BASIC_AUTH="$auth"
unset PROMETHEUS_MULTIPROC_DIR
exec "$here/.venv/bin/celery" -A memory_worker flower --address=127.0.0.1 --port="$port"
