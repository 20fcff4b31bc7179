#!/usr/bin/env bash
# Make sure a Redis answers at REDIS_URL (default redis://127.0.0.1:6379/0).
# When none does, start a private redis-server on that host and port (installing
# it with apt when it is missing), keeping its files under var/redis/.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
url=${REDIS_URL:-redis://127.0.0.1:6379/0}

ping() {
  "$python" - "$url" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

if ping; then
  echo "redis: answering at $url"
  exit 0
fi

read -r host port < <("$python" - "$url" <<'PY'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 6379)
PY
)
case "$host" in
  127.*|localhost|::1) ;;
  *) echo "redis: nothing answers at $url and it is not local; start it yourself" >&2; exit 1 ;;
esac

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: redis-server missing, installing it with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq redis-server >/dev/null
fi

mkdir -p "$here/var/redis"
redis-server --bind "$host" --port "$port" --daemonize yes --save "" --appendonly no \
  --dir "$here/var/redis" --pidfile "$here/var/redis/redis-$port.pid" \
  --logfile "$here/var/redis/redis-$port.log"
for _ in $(seq 1 50); do
  if ping; then
    echo "redis: started a private redis-server at $host:$port (var/redis/)"
    exit 0
  fi
  sleep 0.1
done
echo "redis: started redis-server at $host:$port but it does not answer; see var/redis/redis-$port.log" >&2
exit 1
