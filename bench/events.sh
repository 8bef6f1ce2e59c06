#!/usr/bin/env bash
# What following the event stream costs writes (docs/performance.md,
# "Events"): write throughput at 64 clients over 16 locations with 0, 1
# and 16 watchers, each on a fresh `garrison dev` cluster, in ROUNDS
# alternating rounds, and the watchers' lag from an entry's log time to
# delivery.
#
#   bench/events.sh [SECONDS] [ROUNDS]      (default 10 s, 2 rounds)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
D=${1:-10}
ROUNDS=${2:-2}
(cd "$root" && cargo build -q --locked --release --bin garrison)
garrison="$root/target/release/garrison"
work=$(mktemp -d)
export GARRISON_HOME=$work/home
dev_pid=""
start_dev() {
  rm -rf "$GARRISON_HOME"
  "$garrison" dev >"$work/dev.log" 2>&1 &
  dev_pid=$!
  for _ in $(seq 1 600); do
    grep -q "is up" "$work/dev.log" 2>/dev/null && return 0
    kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.log"; return 1; }
    sleep 0.1
  done
  echo "garrison dev did not come up"; cat "$work/dev.log"; return 1
}
stop_dev() {
  [ -n "$dev_pid" ] && kill -INT "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
  dev_pid=""
}
trap 'stop_dev; rm -rf "$work"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for w in 0 1 16; do
    start_dev
    echo "round $round, $w watchers:"
    "$garrison" bench --mode put -c 64 -l 16 -d "$D" --watchers "$w" 2>/dev/null | grep -v '^RESULT'
    stop_dev
  done
done
