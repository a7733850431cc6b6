#!/usr/bin/env bash
# A long seeded fault schedule against a real cluster in network namespaces:
# roomhost crashes, stops, freezes, additions and removals with skewed
# membership, partitions, Redis restarts and a slow Redis, under steady load
# in three rooms, checked for safety and liveness by the history checker.
# Prints the seed, every fault with the longest pause it caused, its bound
# and the verdict. Needs root (ip netns, tc), redis-server and iproute2.
#
#   deploy/chaos.sh [SECONDS] [SEED]     # default 600 s, a fresh seed
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
[ "$(id -u)" -eq 0 ] || { echo "chaos.sh needs root (network namespaces)" >&2; exit 2; }
cargo build --workspace --bins --locked
export ROOMS_CHAOS_SECONDS="$seconds"
[ -n "${2:-}" ] && export ROOMS_CHAOS_SEED="$2"
cargo test -p rooms-tests --locked --test nemesis -- --nocapture 2>&1 \
  | grep --line-buffered -vE '^\s*(Compiling|Finished|Running)'
