#!/usr/bin/env bash
# A real local rooms cluster without containers: Redis + 3 roomhosts + 2 gateways,
# started with the same flags and values the Helm chart (k8s/rooms) gives them;
# k8s/check.sh verifies that. The differences are deliberate: file: membership
# here (dns: in Kubernetes), --auth none and no admin token (a development
# cluster), text logs, and loopback addresses.
#
#   deploy/local-cluster.sh up       # build if needed, start, wait until ready
#   deploy/local-cluster.sh status   # which processes are alive
#   deploy/local-cluster.sh down     # SIGTERM everything, wait, clean up
#
# Environment: ROOMS_LOCAL_DIR (state, logs; /tmp/rooms-local), ROOMS_BIN_DIR
# (binaries; target/release, built when missing), REDIS_PORT (6390),
# ROOMHOST_PORTS ("20051 20052 20053"), METRICS_PORTS ("9101 9102 9103",
# the roomhosts' /metrics), GATEWAY_PORTS ("8080 8081"), ADMIN_PORTS
# ("9090 9091"), GATEWAY_ARGS / ROOMHOST_ARGS (extra flags, appended),
# REDIS_CLUSTER=1 (a 3-master Redis Cluster on REDIS_PORT..REDIS_PORT+2
# instead of one Redis), GATEWAY_WORKERS / ROOMHOST_WORKERS (each process's
# --worker-threads; 2 / 1).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${ROOMS_LOCAL_DIR:-/tmp/rooms-local}"
BIN="${ROOMS_BIN_DIR:-$ROOT/target/release}"
REDIS_PORT="${REDIS_PORT:-6390}"
# Below Linux's ephemeral range (32768–60999): 50051 and up can still be
# held by a client socket in TIME_WAIT after a load test, and `up` fails.
read -r -a ROOMHOST_PORTS <<< "${ROOMHOST_PORTS:-20051 20052 20053}"
read -r -a METRICS_PORTS <<< "${METRICS_PORTS:-9101 9102 9103}"
read -r -a GATEWAY_PORTS <<< "${GATEWAY_PORTS:-8080 8081}"
read -r -a ADMIN_PORTS <<< "${ADMIN_PORTS:-9090 9091}"
read -r -a GATEWAY_EXTRA <<< "${GATEWAY_ARGS:-}"
read -r -a ROOMHOST_EXTRA <<< "${ROOMHOST_ARGS:-}"
# Five processes share this machine's cores, so each gets few tokio workers,
# as a pod is sized to its CPU share: more only wake each other's idle
# threads. A roomhost's room is one actor; a gateway keeps two, which write a
# big room's sockets side by side (docs/operations.md has the measurements).
GATEWAY_WORKERS="${GATEWAY_WORKERS:-2}"
ROOMHOST_WORKERS="${ROOMHOST_WORKERS:-1}"

start() {  # name, command...
  local name=$1; shift
  nohup "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

http_ok() {  # port path: is the answer 200? (bash only, no curl needed)
  local status
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" >&3
  read -r -t 2 _ status _ <&3 || status=""
  exec 3<&-
  [ "$status" = "200" ]
}

log_end() {  # log: its error (a process's last words), else its last lines
  grep -m1 -A3 -E '^Error:|panicked at' "$1" || tail -n 5 "$1"
}

wait_http() {  # port path name: ready within 30 s, or say why not
  local log="$DIR/$3.log" pid
  pid=$(cat "$DIR/$3.pid")
  for _ in $(seq 1 300); do
    http_ok "$1" "$2" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$3 exited before 127.0.0.1:$1$2 answered; the end of $log:" >&2
      log_end "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "timed out waiting for 127.0.0.1:$1$2 ($3); the end of $log:" >&2
  log_end "$log" >&2
  return 1
}

up() {
  command -v redis-server >/dev/null || { echo "redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
  if [ ! -x "$BIN/gateway" ] || [ ! -x "$BIN/roomhost" ]; then
    echo "==> building release binaries"
    (cd "$ROOT" && cargo build --release --bins --locked)
  fi
  mkdir -p "$DIR"
  : >"$DIR/members"
  for p in "${ROOMHOST_PORTS[@]}"; do echo "127.0.0.1:$p" >>"$DIR/members"; done

  local redis_url="redis://127.0.0.1:$REDIS_PORT"
  if [ "${REDIS_CLUSTER:-0}" = 1 ]; then
    local nodes=() hosts=()
    for i in 0 1 2; do
      local port=$((REDIS_PORT + i))
      rm -rf "$DIR/redis-$i"; mkdir -p "$DIR/redis-$i"
      redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR/redis-$i" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --daemonize yes --pidfile "$DIR/redis-$i.pid" --logfile "$DIR/redis-$i.log"
      for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
      nodes+=("127.0.0.1:$port"); hosts+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    for _ in $(seq 1 200); do
      redis-cli -p "$REDIS_PORT" cluster info 2>/dev/null | grep -q cluster_state:ok && break
      sleep 0.05
    done
    redis_url="redis-cluster://$(IFS=,; echo "${hosts[*]}")"
  else
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" \
      --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
    for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  fi

  # The chart's values (k8s/rooms/values.yaml), flag for flag.
  for i in "${!ROOMHOST_PORTS[@]}"; do
    local p=${ROOMHOST_PORTS[$i]}
    start "roomhost-$i" "$BIN/roomhost" --listen="127.0.0.1:$p" \
      --metrics-listen="127.0.0.1:${METRICS_PORTS[$i]}" --advertise="127.0.0.1:$p" \
      --roomhosts="file:$DIR/members" --redis="$redis_url" \
      --room-idle-timeout=30s --history-limit=1000 --max-rooms=100000 --lease-ttl=5s \
      --shutdown-grace=20s --log-format=text --worker-threads="$ROOMHOST_WORKERS" "${ROOMHOST_EXTRA[@]}"
  done
  for i in "${!GATEWAY_PORTS[@]}"; do
    start "gateway-$i" "$BIN/gateway" --listen="127.0.0.1:${GATEWAY_PORTS[$i]}" \
      --admin-listen="127.0.0.1:${ADMIN_PORTS[$i]}" --roomhosts="file:$DIR/members" \
      --auth=none --rate-limit=20 --rate-burst=40 --send-queue=256 --max-connections=50000 \
      --ping-interval=30s --shutdown-grace=10s --log-format=text --worker-threads="$GATEWAY_WORKERS" \
      "${GATEWAY_EXTRA[@]}"
  done
  local ready=1
  for i in "${!METRICS_PORTS[@]}"; do wait_http "${METRICS_PORTS[$i]}" /readyz "roomhost-$i" || { ready=0; break; }; done
  if [ "$ready" -eq 1 ]; then
    for i in "${!GATEWAY_PORTS[@]}"; do wait_http "${GATEWAY_PORTS[$i]}" /readyz "gateway-$i" || { ready=0; break; }; done
  fi
  [ "$ready" -eq 1 ] || { down >/dev/null; exit 1; }
  # Something else may have answered on those ports: every process must be ours and alive.
  local dead=0
  while read -r name pid; do
    kill -0 "$pid" 2>/dev/null || { echo "$name exited; see $DIR/$name.log" >&2; dead=1; }
  done < <(pids)
  [ "$dead" -eq 0 ] || { down; exit 1; }
  echo "rooms local cluster is up (state and logs in $DIR)"
  echo "  chat:     http://127.0.0.1:${GATEWAY_PORTS[0]}  (and :${GATEWAY_PORTS[1]:-})"
  echo "  operator: $BIN/roomctl --admin http://127.0.0.1:${ADMIN_PORTS[0]} status"
  echo "  metrics:  http://127.0.0.1:${GATEWAY_PORTS[0]}/metrics and http://127.0.0.1:${METRICS_PORTS[0]}/metrics"
  echo "  stop:     $0 down"
}

pids() {
  for f in "$DIR"/gateway-*.pid "$DIR"/roomhost-*.pid "$DIR"/redis*.pid; do
    [ -f "$f" ] && echo "$(basename "$f" .pid) $(cat "$f")"
  done
}

status() {
  pids | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then echo "$name (pid $pid) running"; else echo "$name (pid $pid) NOT running"; fi
  done
}

down() {
  # Gateways first (clients get 1012), then roomhosts (rooms flush), then Redis.
  for pattern in gateway roomhost redis; do
    for f in "$DIR"/$pattern*.pid; do
      [ -f "$f" ] || continue
      local pid; pid=$(cat "$f")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$f"
    done
  done
  echo "rooms local cluster is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  pids) pids ;;
  *) echo "usage: $0 up|down|status|pids" >&2; exit 2 ;;
esac
