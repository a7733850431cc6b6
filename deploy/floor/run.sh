#!/usr/bin/env bash
# The floor under the many-small-rooms figure (docs/scaling.md, "The floor"):
# the same load (5,000 rooms x 2 clients, 1 message/s per room, clients over
# two gateways) against, in turn:
#   rooms      deploy/local-cluster.sh: 2 gateways, 3 roomhosts, Redis
#   floor      this crate: 2 gateways and 1 hub relaying over plain TCP, Redis
#              (an XADD per message before it is delivered), nothing else
#   rust-min   the single-process peer
# ROUNDS times (3), alternating. Prints server CPU per message over 10 s of
# each run's steady phase, per tier, and context switches (cs) per message.
#
#   deploy/floor/run.sh          # ROUNDS=3 ROOMS=5000 TARGETS="rooms floor rust-min"
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ROUNDS="${ROUNDS:-3}"
ROOMS="${ROOMS:-5000}"
TARGETS="${TARGETS:-rooms floor rust-min}"
WORK="${FLOOR_WORK:-/tmp/rooms-floor}"
PEER="${RUST_MIN:-$ROOT/../shared/peers/rust-min/start.sh}"
mkdir -p "$WORK"
cd "$ROOT"
cargo build --release --bins --locked -q
cargo build --release -q --locked --manifest-path deploy/floor/Cargo.toml --target-dir "$WORK/target"
FLOOR="$WORK/target/release/rooms-floor"
ROOMCTL="$ROOT/target/release/roomctl"
TCK=$(getconf CLK_TCK)

ticks() {  # pids... -> user+system ticks
  local t=0 p f
  for p in "$@"; do
    read -r -a f < <(sed 's/.*) //' "/proc/$p/stat")
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}
switches() {  # pids... -> context switches of all their threads
  cat $(printf '/proc/%s/task/*/status ' "$@") 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s}'
}
ready() {  # port
  for _ in $(seq 1 300); do
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null && { exec 3<&-; return 0; }
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

declare -A TIER  # tier -> pids
STARTED=()
start_rooms() {
  ROOMS_LOCAL_DIR="$WORK/cluster" deploy/local-cluster.sh up >/dev/null
  local list; list=$(ROOMS_LOCAL_DIR="$WORK/cluster" deploy/local-cluster.sh pids)
  TIER[gateways]=$(awk '/^gateway/ {print $2}' <<<"$list" | xargs)
  TIER[roomhosts]=$(awk '/^roomhost/ {print $2}' <<<"$list" | xargs)
  TIER[redis]=$(awk '/^redis/ {print $2}' <<<"$list" | xargs)
  URL="ws://127.0.0.1:8080,ws://127.0.0.1:8081"
}
start_floor() {
  redis-server --port 6391 --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    --logfile "$WORK/redis.log" & STARTED+=($!); TIER[redis]=$!
  ready 6391
  WORKERS=1 "$FLOOR" hub 127.0.0.1:20060 127.0.0.1:6391 & STARTED+=($!); TIER[roomhosts]=$!
  ready 20060
  WORKERS=2 "$FLOOR" gateway 127.0.0.1:8080 127.0.0.1:20060 & STARTED+=($!); TIER[gateways]=$!
  WORKERS=2 "$FLOOR" gateway 127.0.0.1:8081 127.0.0.1:20060 & STARTED+=($!); TIER[gateways]+=" $!"
  ready 8080; ready 8081
  URL="ws://127.0.0.1:8080,ws://127.0.0.1:8081"
}
start_rust_min() {
  PORT=9003 "$PEER" & STARTED+=($!)
  ready 9003
  TIER[server]=$(pgrep -f 'rust-min-chat 127.0.0.1:9003' | head -1)
  URL="ws://127.0.0.1:9003"
}
stop() {
  ROOMS_LOCAL_DIR="$WORK/cluster" deploy/local-cluster.sh down >/dev/null 2>&1 || true
  pkill -f 'rust-min-chat 127.0.0.1:9003' 2>/dev/null || true
  for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done
  STARTED=(); TIER=()
}
trap stop EXIT

for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do
    "start_${target//-/_}"
    "$ROOMCTL" bench --url "$URL" --rooms "$ROOMS" --clients $((ROOMS * 2)) --senders "$ROOMS" \
      --rate "$ROOMS" --duration 30s --json >"$WORK/bench.json" 2>"$WORK/bench.err" &
    bench=$!
    sleep 12   # connected and past the first messages: the steady phase
    declare -A t0=() t1=() s0=() s1=()
    for tier in "${!TIER[@]}"; do t0[$tier]=$(ticks ${TIER[$tier]}); s0[$tier]=$(switches ${TIER[$tier]}); done
    sleep 10
    for tier in "${!TIER[@]}"; do t1[$tier]=$(ticks ${TIER[$tier]}); s1[$tier]=$(switches ${TIER[$tier]}); done
    wait "$bench" || { echo "roomctl bench failed against $target:" >&2; cat "$WORK/bench.err" >&2; exit 1; }
    msgs=$((ROOMS * 10))
    line="round $round $target:" all_ticks=0 all_switches=0
    for tier in gateways roomhosts redis server; do
      [ -n "${TIER[$tier]:-}" ] || continue
      ((all_ticks += t1[$tier] - t0[$tier], all_switches += s1[$tier] - s0[$tier])) || true
      line+=" $tier $(( (t1[$tier] - t0[$tier]) * 1000000 / TCK / msgs )) µs ($(echo "scale=1; (${s1[$tier]} - ${s0[$tier]}) / $msgs" | bc) cs),"
    done
    errors=$(python3 -c "import json; print(json.load(open('$WORK/bench.json'))['errors'])")
    echo "$line total $(( all_ticks * 1000000 / TCK / msgs )) µs ($(echo "scale=1; $all_switches / $msgs" | bc) cs) per message; errors $errors"
    stop
  done
done
