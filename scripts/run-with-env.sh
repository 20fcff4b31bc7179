#!/usr/bin/env bash
# Start one program of the supervisord stack (supervisord.conf) with the defaults it needs.
#
# supervisord hands its own environment to its programs, and its %(ENV_X)s expansion fails
# when X is unset, so defaults are applied here, at start:
#   PROMETHEUS_MULTIPROC_DIR  var/prometheus at the repository root, unless the caller set it;
#                             created when missing.
#
# The metric files are emptied when the whole deployment starts, never when one program
# (re)starts: a counter served by the metrics server must not go down (see
# memory_worker/exposition.py). Started by supervisord (SUPERVISOR_ENABLED), the deployment
# is that supervisord, named by its pid and start time: the first program it starts empties
# the directory, under a lock, before running; its other programs, and the programs it
# restarts later, find that name recorded and remove nothing.
#
# Process ids are reused: files named after this process id (which the program keeps, by
# exec) were left by a dead process. Its counter files stay, the program carries on from
# their counts; its live-gauge files go, a dead process has no live value.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$here/var/prometheus}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
if [[ -n "${SUPERVISOR_ENABLED:-}" ]]; then
    started=$(ps -o lstart= -p "$PPID" 2>/dev/null || true)
    "$here/.venv/bin/memory-worker" metrics-clean --deployment "supervisord $PPID $started"
fi
rm -f "$PROMETHEUS_MULTIPROC_DIR"/gauge_live*_"$$".db
exec "$@"
