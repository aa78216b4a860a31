#!/usr/bin/env bash
# Make sure the services Flotilla's tests talk to are installed and running on this machine:
# RabbitMQ (with the management plugin), Mosquitto and PostgreSQL. Idempotent; never stops
# a running service. Progress on stderr.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  flock /var/lock/flotilla-apt.lock apt-get update -qq
  flock /var/lock/flotilla-apt.lock apt-get install -y -qq "${missing[@]}" >/dev/null
}

wait_port() {  # host port seconds
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { log "ERROR: nothing listens on $1:$2 after $3 s"; return 1; }
    sleep 0.5
  done
}

apt_install rabbitmq-server mosquitto postgresql

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  rabbitmq-server -detached
fi
rabbitmqctl -q await_startup --timeout 120 >/dev/null
# start_app is harmless when the app runs, and heals a node left stopped by an interrupted test.
rabbitmqctl -q start_app >/dev/null
rabbitmq-plugins -q enable rabbitmq_management >/dev/null
# RabbitMQ 3.10 can come back from `stop_app`/`start_app` without the supervisor of quorum
# queues' dead-letter workers; every queue with at-least-once dead-lettering then fails to
# start (INTERNAL_ERROR). Restart that one supervisor when it is missing.
if [ "$(rabbitmqctl -q eval 'whereis(rabbit_fifo_dlx_sup).' 2>/dev/null)" = "undefined" ]; then
  log "restarting RabbitMQ's quorum-queue dead-letter supervisor"
  rabbitmqctl -q eval 'supervisor:restart_child(rabbit_sup, rabbit_fifo_dlx_sup).' >/dev/null
fi
# A test interrupted around a broker restart can leave its quorum queues "down" (their Raft
# members gone); such a queue refuses to be declared again. Test queues are throwaway.
rabbitmqctl -q list_queues name state --no-table-headers 2>/dev/null |
  awk '$2 == "down" && $1 ~ /^flotilla\./ {print $1}' |
  while read -r queue; do
    log "deleting queue $queue (down)"
    rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null
  done
wait_port 127.0.0.1 5672 120
wait_port 127.0.0.1 15672 120

if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  log "starting Mosquitto"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi
wait_port 127.0.0.1 1883 30

if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi
wait_port 127.0.0.1 5432 60
log "RabbitMQ, Mosquitto and PostgreSQL are up"
