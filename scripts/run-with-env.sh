#!/usr/bin/env bash
# Start one program of the supervisord stack (supervisord.conf) with the defaults it needs.
#
# supervisord hands its own environment to its programs, and its %(ENV_X)s expansion fails
# when X is unset, so defaults are applied here, at start:
#   PROMETHEUS_MULTIPROC_DIR  var/prometheus at the repository root, unless the caller set it;
#                             created when missing.
# Metric files named after this process id can only be left by a dead process (ids are
# reused, on every container start for instance): they are removed before the program,
# which keeps this id (exec), opens its own.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$here/var/prometheus}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
rm -f "$PROMETHEUS_MULTIPROC_DIR"/*_"$$".db
exec "$@"
