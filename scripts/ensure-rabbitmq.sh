#!/usr/bin/env bash
# Make sure Debian's rabbitmq-server is installed (installing it with apt when it is
# missing). The suite starts private RabbitMQ nodes of its own (tests/processes.py:
# PrivateRabbit, own node name, ports and files); nothing here starts or touches a
# system RabbitMQ.
set -euo pipefail
server=/usr/lib/rabbitmq/bin/rabbitmq-server

if [ -x "$server" ]; then
  echo "rabbitmq: rabbitmq-server installed ($server)"
  exit 0
fi

echo "rabbitmq: rabbitmq-server missing, installing it with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq rabbitmq-server >/dev/null
if [ ! -x "$server" ]; then
  echo "rabbitmq: rabbitmq-server installed but $server is missing" >&2
  exit 1
fi
echo "rabbitmq: installed rabbitmq-server"
