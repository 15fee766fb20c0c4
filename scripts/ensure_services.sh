#!/usr/bin/env bash
# The services the production-profile tests use: PostgreSQL (127.0.0.1:5432) and RabbitMQ
# (127.0.0.1:5672). Idempotent: a running service is left alone, a stopped one is started, and the
# script waits until both answer. `make test` runs it (a failure stops it only under CI).
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # name port seconds
  for _ in $(seq 1 "$3"); do up "$2" && return 0; sleep 1; done
  echo "ensure_services: $1 does not answer on 127.0.0.1:$2" >&2
  return 1
}

if ! up 5432; then
  echo "ensure_services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
fi
if ! up 5672; then
  echo "ensure_services: starting RabbitMQ"
  rabbitmq-server -detached || true
fi
wait_for PostgreSQL 5432 60
wait_for RabbitMQ 5672 90
echo "ensure_services: PostgreSQL and RabbitMQ up"
