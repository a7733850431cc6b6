#!/usr/bin/env bash
# Side-by-side benchmark of rooms and peer servers, in one run: the targets
# take turns (rooms, then each peer, again for every round), and the same
# `roomctl bench` loads run against each. Every measurement starts its server
# fresh, waits for the machine to be quiet first and records the
# server's CPU time (/proc/PID/stat) and memory (RSS) next to the load
# generator's report. At the end one table of medians, spreads and ratios is
# printed and docs/benchmarks.md is written from it.
#
#   deploy/bench.sh                                  # rooms + the peers in ../shared/peers
#   deploy/bench.sh rust-min=/path/to/start.sh       # peers given as NAME=START_COMMAND
#   ROUNDS=1 DURATION=5s SCENARIOS="fanout latency" deploy/bench.sh
#   TARGETS="rooms-class rust-min" deploy/bench.sh rust-min=…   # some targets only
#
# A peer's start command must serve the chat subset of the client protocol
# on 127.0.0.1:$PORT in the foreground (see ../shared/peers/README.md).
#
# Targets: rooms          the local cluster (Redis + 3 roomhosts + 2 gateways,
#                         deploy/local-cluster.sh), CPU and memory summed over
#                         all its processes;
#          rooms-class    the same cluster running the workerd peer's ChatRoom
#                         class (examples/workerd-chat/worker.js) on every room;
#          rooms-cluster  the same on a 3-master Redis Cluster (many-rooms and
#                         cold-room scenarios only);
#          floor          deploy/floor: 2 gateways relaying to a hub over plain
#                         TCP, one XADD per message, nothing else — the least a
#                         gateway/roomhost split costs (many-rooms scenario only);
#          each peer.
# Scenarios: idle    9,000 idle connections in 90 rooms: server memory per
#                    connection, time to connect them (fresh process);
#            fanout  1 room, 1,000 clients, 10 senders as fast as they can;
#            latency 1 room, 100 clients, 100 msg/s in all (10k deliveries/s);
#            rooms   5,000 rooms x 2 clients, 1 msg/s per room; then the rooms
#                    go idle and must leave roomhost memory;
#            cold    200 rooms with 100 stored events each, evicted, then
#                    joined once each: time to welcome + history (rooms only;
#                    rooms-class: a name and 20 chats stored through the
#                    class, then time to the handshake its new instance answers).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
SCENARIOS="${SCENARIOS:-idle fanout latency rooms cold}"
WORK="${BENCH_WORK:-/tmp/rooms-bench}"
OUT="${OUT:-$ROOT/target/bench/results.jsonl}"
DOC="${DOC:-$ROOT/docs/benchmarks.md}"
IDLE_TIMEOUT=5   # roomhost --room-idle-timeout (s) in the benchmark cluster
# A room leaves memory this long after its last client: the gateway keeps an
# empty room's stream open 5 s (its LINGER), then the roomhost's idle timeout.
EVICTED_AFTER=$((5 + IDLE_TIMEOUT + 3))
CLK_TCK=$(getconf CLK_TCK)
mkdir -p "$(dirname "$OUT")" "$WORK"
: >"$OUT"

declare -A PEERS=()
if [ "$#" -gt 0 ]; then
  for spec in "$@"; do PEERS["${spec%%=*}"]="${spec#*=}"; done
else
  for name in rust-min node-ws workerd; do
    start="$ROOT/../shared/peers/$name/start.sh"
    [ -x "$start" ] && PEERS[$name]="$start"
  done
fi
TARGETS="${TARGETS:-rooms ${ROOMS_CLASS_TARGET-rooms-class} ${!PEERS[*]} ${ROOMS_CLUSTER_TARGET-rooms-cluster} floor}"

cd "$ROOT"
echo "==> building release binaries" >&2
cargo build --release --bins --locked -q
ROOMCTL="$ROOT/target/release/roomctl"
FLOOR="$WORK/floor-target/release/rooms-floor"
if [[ " $TARGETS " == *" floor "* ]]; then
  cargo build --release --locked -q --manifest-path deploy/floor/Cargo.toml --target-dir "$WORK/floor-target"
fi

# ---- measuring ------------------------------------------------------------

# The process and its descendants.
tree() {
  local pid
  for pid in "$@"; do
    echo "$pid"
    # shellcheck disable=SC2046
    tree $(pgrep -P "$pid" || true)
  done
}

cpu_ticks() {  # pids... -> user+system ticks of all
  local total=0 pid stat f
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

rss_kb() {  # pids... -> summed VmRSS
  local total=0 pid kb
  for pid in "$@"; do
    kb=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null) || kb=0
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

# Waits (at most 60 s) until the machine is quiet: under 5% of all cores
# busy over half a second. Prints how busy it was when measuring started.
wait_quiet() {
  local busy=100 a b
  for _ in $(seq 1 120); do
    read -r -a a < <(head -1 /proc/stat)
    sleep 0.5
    read -r -a b < <(head -1 /proc/stat)
    local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) ))
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    busy=$(( total > 0 ? 100 * (total - idle) / total : 0 ))
    [ "$busy" -lt 5 ] && break
  done
  echo "$busy"
}

wait_port() {
  for _ in $(seq 1 1200); do
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null && { exec 3<&-; return 0; }
    sleep 0.25
  done
  echo "nothing listens on port $1" >&2
  return 1
}

metric() {  # port name -> value summed over lines (0 when absent)
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || { echo 0; return; }
  printf 'GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n' >&3
  awk -v n="$2" '$1 == n {s += $2} END {printf "%.0f\n", s}' <&3
  exec 3<&-
}

# ---- targets --------------------------------------------------------------

PIDS=() GATEWAY_PIDS=() ROOMHOST_PIDS=() REDIS_PIDS=() URLS="" METRICS=""
NEXT_PEER_PORT=19100
start_target() {
  case "$1" in
    rooms | rooms-cluster | rooms-class)
      export ROOMS_LOCAL_DIR="$WORK/$1" REDIS_PORT=16390 ROOMHOST_PORTS="15051 15052 15053" \
        METRICS_PORTS="15101 15102 15103" GATEWAY_PORTS="18080 18081" ADMIN_PORTS="19090 19091" \
        GATEWAY_ARGS="--rate-limit=1000000 --rate-burst=1000000 --send-queue=4096" \
        ROOMHOST_ARGS="--room-idle-timeout=${IDLE_TIMEOUT}s" REDIS_CLUSTER=0
      [ "$1" = rooms-cluster ] && export REDIS_CLUSTER=1
      # The workerd peer's own class file, unmodified, on every room.
      [ "$1" = rooms-class ] &&
        ROOMHOST_ARGS+=" --room-class=*=$ROOT/examples/workerd-chat/worker.js#ChatRoom"
      deploy/local-cluster.sh up >/dev/null
      mapfile -t PIDS < <(deploy/local-cluster.sh pids | awk '{print $2}')
      mapfile -t GATEWAY_PIDS < <(deploy/local-cluster.sh pids | awk '/^gateway/{print $2}')
      mapfile -t ROOMHOST_PIDS < <(deploy/local-cluster.sh pids | awk '/^roomhost/{print $2}')
      mapfile -t REDIS_PIDS < <(deploy/local-cluster.sh pids | awk '/^redis/{print $2}')
      URLS="ws://127.0.0.1:18080,ws://127.0.0.1:18081"
      METRICS="15101 15102 15103"
      ;;
    floor)
      redis-server --port 16391 --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
        --logfile "$WORK/floor-redis.log" &
      REDIS_PIDS=("$!")
      wait_port 16391
      WORKERS=1 "$FLOOR" hub 127.0.0.1:15060 127.0.0.1:16391 >"$WORK/floor.log" 2>&1 &
      ROOMHOST_PIDS=("$!")
      wait_port 15060
      GATEWAY_PIDS=()
      for port in 18082 18083; do
        WORKERS=2 "$FLOOR" gateway "127.0.0.1:$port" 127.0.0.1:15060 >>"$WORK/floor.log" 2>&1 &
        GATEWAY_PIDS+=("$!")
      done
      wait_port 18082 && wait_port 18083
      PIDS=("${GATEWAY_PIDS[@]}" "${ROOMHOST_PIDS[@]}" "${REDIS_PIDS[@]}")
      URLS="ws://127.0.0.1:18082,ws://127.0.0.1:18083"
      METRICS=""
      ;;
    *)
      # A new port each start: a predecessor still closing thousands of
      # sockets may hold the last one.
      local port=$NEXT_PEER_PORT
      NEXT_PEER_PORT=$((NEXT_PEER_PORT + 1))
      PEER_WORK="$WORK/peers" PORT=$port bash -c "${PEERS[$1]}" >"$WORK/$1.log" 2>&1 &
      local pid=$!
      wait_port "$port"
      mapfile -t PIDS < <(tree "$pid")
      GATEWAY_PIDS=("${PIDS[@]}") ROOMHOST_PIDS=() REDIS_PIDS=()
      URLS="ws://127.0.0.1:$port"
      METRICS=""
      ;;
  esac
}

stop_target() {
  case "$1" in
    rooms | rooms-cluster) deploy/local-cluster.sh down >/dev/null ;;
    *)
      kill "${PIDS[@]}" 2>/dev/null || true
      for _ in $(seq 1 100); do
        local alive=0 p
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
      done
      kill -9 "${PIDS[@]}" 2>/dev/null || true
      ;;
  esac
}

scenario_args() {
  case "$1" in
    idle) echo "--rooms 90 --clients 9000 --senders 0 --rate 0 --duration 0s --hold 5s" ;;
    fanout) echo "--rooms 1 --clients 1000 --senders 10 --rate 0 --duration $DURATION" ;;
    latency) echo "--rooms 1 --clients 100 --senders 10 --rate 100 --duration $DURATION" ;;
    rooms) echo "--rooms 5000 --clients 10000 --senders 5000 --rate 5000 --duration $DURATION" ;;
    cold) echo "--rooms 200 --preload 100 --cold-wait ${EVICTED_AFTER}s" ;;
    # The workerd class: a name and chats stored through it, then a join to
    # each room once, timed to its handshake (a new instance answers it).
    cold-class) echo "--rooms 200 --preload 20 --class-rooms --cold-wait ${EVICTED_AFTER}s" ;;
  esac
}

applies() {  # target scenario
  case "$1:$2" in
    rooms-cluster:rooms | rooms-cluster:cold | rooms-class:cold | rooms:*) return 0 ;;
    rooms-cluster:*) return 1 ;;
    floor:rooms) return 0 ;;
    floor:*) return 1 ;;
    *:cold) return 1 ;;   # peers keep no history
    # workerd holds 2 descriptors per WebSocket: 10,000 clients exceed the
    # 20,000-descriptor limit of this machine.
    workerd:rooms) return 1 ;;
    *) return 0 ;;
  esac
}

batch_stats() {  # -> "commits events loads" summed over the roomhosts
  local commits=0 events=0 loads=0 port
  for port in $METRICS; do
    commits=$((commits + $(metric "$port" rooms_roomhost_redis_batch_events_count)))
    events=$((events + $(metric "$port" rooms_roomhost_redis_batch_events_sum)))
    loads=$((loads + $(metric "$port" rooms_roomhost_rooms_loaded_total)))
  done
  echo "$commits $events $loads"
}

measure() {  # target scenario round
  local target=$1 scenario=$2 round=$3 busy
  busy=$(wait_quiet)
  local cpu0 gw_rss0 rh_cpu0 rh_rss0 rd_rss0 batch0
  cpu0=$(cpu_ticks "${PIDS[@]}")
  rh_cpu0=$(cpu_ticks "${ROOMHOST_PIDS[@]}")
  gw_rss0=$(rss_kb "${GATEWAY_PIDS[@]}")
  rh_rss0=$(rss_kb "${ROOMHOST_PIDS[@]}")
  rd_rss0=$(rss_kb "${REDIS_PIDS[@]}")
  read -r -a batch0 < <(batch_stats)
  local err="$WORK/bench.err"
  # shellcheck disable=SC2046
  local args=$scenario
  [ "$target:$scenario" = rooms-class:cold ] && args=cold-class
  # shellcheck disable=SC2046
  "$ROOMCTL" bench --url "$URLS" $(scenario_args "$args") --label "$target/$scenario" \
    >"$WORK/report.json" 2>"$err" &
  local bench=$!
  # Memory while the load's clients are all connected.
  local marker="clients connected"
  [ "$scenario" = idle ] && marker="holding"
  local gw_rss1=0 rh_rss1=0 rd_rss1=0 rh_cpu_a=0 rh_cpu_b=0 t_a t_b
  local gw_cpu_a=0 gw_cpu_b=0 rd_cpu_a=0 rd_cpu_b=0
  for _ in $(seq 1 1200); do
    grep -q "$marker" "$err" 2>/dev/null && break
    kill -0 "$bench" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$scenario" = rooms ]; then
    # Steady state: roomhost CPU over 4 s of the 1 msg/s-per-room load.
    sleep 2
    # Every tier over the same 4 s (a peer is all "gateway").
    rh_cpu_a=$(cpu_ticks "${ROOMHOST_PIDS[@]}"); gw_cpu_a=$(cpu_ticks "${GATEWAY_PIDS[@]}")
    rd_cpu_a=$(cpu_ticks "${REDIS_PIDS[@]}"); t_a=$(date +%s.%N)
    sleep 4
    rh_cpu_b=$(cpu_ticks "${ROOMHOST_PIDS[@]}"); gw_cpu_b=$(cpu_ticks "${GATEWAY_PIDS[@]}")
    rd_cpu_b=$(cpu_ticks "${REDIS_PIDS[@]}"); t_b=$(date +%s.%N)
  else
    sleep 1
    t_a=0 t_b=1
  fi
  gw_rss1=$(rss_kb "${GATEWAY_PIDS[@]}")
  rh_rss1=$(rss_kb "${ROOMHOST_PIDS[@]}")
  rd_rss1=$(rss_kb "${REDIS_PIDS[@]}")
  wait "$bench" || { echo "bench failed for $target/$scenario: $(cat "$err")" >&2; return 0; }
  local cpu1 rh_active_after=-1 rh_rss2=0 batch1
  cpu1=$(cpu_ticks "${PIDS[@]}")
  read -r -a batch1 < <(batch_stats)
  if [ "$scenario" = rooms ] && [ -n "$METRICS" ]; then
    # The clients are gone: after the idle timeout every room must have left memory.
    sleep "$EVICTED_AFTER"
    rh_active_after=0
    for port in $METRICS; do
      rh_active_after=$((rh_active_after + $(metric "$port" rooms_roomhost_rooms_active)))
    done
    rh_rss2=$(rss_kb "${ROOMHOST_PIDS[@]}")
  fi
  python3 - "$WORK/report.json" <<PY | tee -a "$OUT"
import json, sys
r = json.load(open(sys.argv[1]))
tck = $CLK_TCK
r.update({
    "target": "$target", "scenario": "$scenario", "round": $round, "busy_before_pct": $busy,
    "server_cpu_s": ($cpu1 - $cpu0) / tck,
    "gateway_rss_kb": [$gw_rss0, $gw_rss1], "roomhost_rss_kb": [$rh_rss0, $rh_rss1, $rh_rss2],
    "redis_rss_kb": [$rd_rss0, $rd_rss1],
    "roomhost_steady_cpu_s_per_s": (($rh_cpu_b - $rh_cpu_a) / tck) / max($t_b - $t_a, 1e-9),
    "steady_cpu_s_per_s": {
        tier: (b - a) / tck / max($t_b - $t_a, 1e-9)
        for tier, a, b in (("gateways", $gw_cpu_a, $gw_cpu_b), ("roomhosts", $rh_cpu_a, $rh_cpu_b),
                           ("redis", $rd_cpu_a, $rd_cpu_b))
    },
    "roomhost_rooms_active_after_idle": $rh_active_after,
    "redis_commits": ${batch1[0]} - ${batch0[0]}, "redis_events": ${batch1[1]} - ${batch0[1]},
    "rooms_loaded": ${batch1[2]} - ${batch0[2]},
})
print(json.dumps(r))
PY
}

# ---- the run --------------------------------------------------------------

# Every measurement gets a freshly started server: memory figures start
# from nothing, and no scenario inherits another's sockets.
for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do
    echo "==> round $round: $target" >&2
    for scenario in $SCENARIOS; do
      applies "$target" "$scenario" || continue
      echo "    $scenario" >&2
      start_target "$target"
      trap 'stop_target "$target"' EXIT
      measure "$target" "$scenario" "$round" >/dev/null
      trap - EXIT
      stop_target "$target"
    done
  done
done

python3 "$ROOT/deploy/bench-report.py" "$OUT" --doc "$DOC" \
  --command "deploy/bench.sh (ROUNDS=$ROUNDS DURATION=$DURATION SCENARIOS=\"$SCENARIOS\")"
