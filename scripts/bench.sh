#!/usr/bin/env bash
# Side-by-side benchmark: the rooms local cluster (Redis + 3 roomhosts + 2
# gateways, deploy/local-cluster.sh) and the peer servers of ../shared/peers,
# driven by the same `roomctl bench` scenarios, in one run.
#
# For every (target, scenario) it prints one JSON line: roomctl bench's report
# plus the CPU the server processes used (summed over all of them) and CPU
# microseconds per delivery. Lines are also appended to $OUT.
#
#   scripts/bench.sh                          # every target, fanout + latency
#   TARGETS="rooms rust-min" SCENARIOS=fanout DURATION=5s scripts/bench.sh
#
# Scenarios: fanout  = 1 room, 1,000 clients, 10 senders as fast as possible
#            latency = 1 room, 100 clients, 100 msg/s in all (10k deliveries/s)
#            rooms   = 2,500 rooms of 2 clients, 1 msg/s per room
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS="${PEERS_DIR:-$ROOT/../shared/peers}"
TARGETS="${TARGETS:-rooms rust-min node-ws workerd}"
SCENARIOS="${SCENARIOS:-fanout latency}"
DURATION="${DURATION:-10s}"
OUT="${OUT:-$ROOT/target/bench/results.jsonl}"
WORK="${BENCH_WORK:-/tmp/rooms-bench}"
mkdir -p "$(dirname "$OUT")" "$WORK"
CLK_TCK=$(getconf CLK_TCK)

cd "$ROOT"
cargo build --release --bins --locked -q
ROOMCTL="$ROOT/target/release/roomctl"

cpu_ticks() {  # pids... -> utime+stime of all, in clock ticks
  local total=0 pid stat
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }   # fields after the command name
    read -r -a f <<< "$stat"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

scenario_args() {
  case "$1" in
    fanout) echo "--rooms 1 --clients 1000 --senders 10 --rate 0" ;;
    latency) echo "--rooms 1 --clients 100 --senders 10 --rate 100" ;;
    rooms) echo "--rooms 2500 --clients 5000 --senders 2500 --rate 2500" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

wait_port() {  # port: until it accepts TCP connections (peers may build first)
  for _ in $(seq 1 1200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.25
  done
  echo "nothing listens on port $1" >&2
  return 1
}

PIDS=()
URLS=""
start_target() {
  case "$1" in
    rooms)
      export ROOMS_LOCAL_DIR="$WORK/rooms" REDIS_PORT=16390 ROOMHOST_PORTS="15051 15052 15053" \
        GATEWAY_PORTS="18080 18081" ADMIN_PORTS="19090 19091" \
        GATEWAY_ARGS="--rate-limit 1000000 --rate-burst 1000000 --send-queue 4096"
      deploy/local-cluster.sh up >/dev/null
      mapfile -t PIDS < <(deploy/local-cluster.sh pids | awk '{print $2}')
      URLS="ws://127.0.0.1:18080,ws://127.0.0.1:18081"
      ;;
    rust-min | node-ws | workerd)
      local port
      port=$(( 19100 + $(echo "rust-min node-ws workerd" | tr ' ' '\n' | grep -n "^$1$" | cut -d: -f1) ))
      PEER_WORK="$WORK/peers" PORT=$port "$PEERS/$1/start.sh" >"$WORK/$1.log" 2>&1 &
      PIDS=($!)
      wait_port "$port"
      URLS="ws://127.0.0.1:$port"
      ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

stop_target() {
  case "$1" in
    rooms) deploy/local-cluster.sh down >/dev/null ;;
    *) kill "${PIDS[@]}" 2>/dev/null || true; wait "${PIDS[@]}" 2>/dev/null || true ;;
  esac
}

for target in $TARGETS; do
  start_target "$target"
  trap 'stop_target "$target"' EXIT
  for scenario in $SCENARIOS; do
    # shellcheck disable=SC2046
    before=$(cpu_ticks "${PIDS[@]}")
    report=$("$ROOMCTL" bench --url "$URLS" $(scenario_args "$scenario") --duration "$DURATION" \
      --label "$target/$scenario")
    after=$(cpu_ticks "${PIDS[@]}")
    python3 - "$report" "$before" "$after" "$CLK_TCK" <<'PY' | tee -a "$OUT"
import json, sys
report = json.loads(sys.argv[1])
cpu_s = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
report["server_cpu_s"] = round(cpu_s, 2)
report["server_cpu_us_per_delivery"] = round(cpu_s * 1e6 / report["delivered"], 3) if report["delivered"] else None
print(json.dumps(report))
PY
  done
  trap - EXIT
  stop_target "$target"
done

python3 "$ROOT/scripts/bench-table.py" "$OUT"
