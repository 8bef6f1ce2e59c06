#!/usr/bin/env bash
# Measures etcd 3.4 (../shared/peerbench) and garrison on this machine, in
# one sitting, with the same client counts, and prints the ratios the
# performance targets are stated in (docs/performance.md).
#
#   bench/compare-etcd.sh [SECONDS_PER_POINT] [FAILOVER_RUNS]
#
# Needs: Debian's etcd-server, etcd-client and protobuf-compiler (installed
# if missing, as root), a release build of garrison (made if missing).
# Writes everything under $COMPARE_WORK (default /tmp/garrison-compare) and
# prints the raw RESULT lines of both sides before the ratios.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
D=${1:-15}
RUNS=${2:-3}
peer=${PEERBENCH:-$root/../shared/peerbench}
work=${COMPARE_WORK:-/tmp/garrison-compare}
export PEERBENCH_WORK=$work/peerbench
mkdir -p "$work" "$PEERBENCH_WORK"
out=$work/results-$(date +%Y%m%d-%H%M%S).txt

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
(cd "$peer" && CARGO_TARGET_DIR=$PEERBENCH_WORK/target cargo build --release -q -p etcdload)
(cd "$root" && cargo build --release -q --locked)
etcdload=$PEERBENCH_WORK/target/release/etcdload
garrison=$root/target/release/garrison

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), ${D}s per point" | tee "$out"

# --- etcd -------------------------------------------------------------------
(cd "$peer" && ./etcd-cluster.sh wipe >/dev/null 2>&1 || true; ./etcd-cluster.sh start >/dev/null)
sleep 2
for c in 1 64 256; do
  "$etcdload" --mode put --clients $c --duration "$D" --label etcd-put | sed "s/^RESULT /RESULT side=etcd /" | tee -a "$out"
done
"$etcdload" --mode get --clients 64 --duration "$D" --label etcd-get | sed "s/^RESULT /RESULT side=etcd /" | tee -a "$out"
(cd "$peer" && ./run-etcd-failover.sh "$RUNS" | grep '^RESULT' | sed "s/^RESULT /RESULT side=etcd /") | tee -a "$out"
(cd "$peer" && ./etcd-cluster.sh stop >/dev/null 2>&1 || true)

# --- garrison ---------------------------------------------------------------
export GARRISON_HOME=$work/garrison-home
rm -rf "$GARRISON_HOME"
dev_pid=""
start_dev() {
  "$garrison" dev >"$work/dev.log" 2>&1 &
  dev_pid=$!
  for _ in $(seq 1 300); do
    grep -q "is up" "$work/dev.log" 2>/dev/null && return 0
    kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.log"; return 1; }
    sleep 0.2
  done
  echo "garrison dev did not come up"; cat "$work/dev.log"; return 1
}
stop_dev() {
  [ -n "$dev_pid" ] && kill -INT "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
  dev_pid=""
}
trap stop_dev EXIT
start_dev
for c in 1 64 256; do
  "$garrison" bench --mode put -c $c -l 16 -d "$D" 2>/dev/null | grep '^RESULT' | sed "s/^RESULT /RESULT side=garrison /" | tee -a "$out"
done
"$garrison" bench --mode get -c 64 -l 16 -d "$D" 2>/dev/null | grep '^RESULT' | sed "s/^RESULT /RESULT side=garrison /" | tee -a "$out"
for i in $(seq 1 "$RUNS"); do
  "$garrison" bench --mode failover -l 16 2>/dev/null | grep '^RESULT' | sed "s/^RESULT /RESULT side=garrison run=$i /" | tee -a "$out"
  stop_dev   # the killed node stays down under `garrison dev`: restart the cluster
  start_dev
done
stop_dev

# --- ratios -----------------------------------------------------------------
python3 - "$out" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r'(\w+)=(\S+)', l)) for l in open(sys.argv[1]) if l.startswith('RESULT')]
def pick(side, mode, clients=None, key='ops_per_s'):
    vals = [float(r[key]) for r in rows if r.get('side') == side and r.get('mode', '').lower() == mode
            and (clients is None or r.get('clients') == str(clients)) and key in r]
    return statistics.median(vals) if vals else None
def line(name, g, e, target, better_high=True):
    if g is None or e is None:
        print(f"{name:<44} missing"); return
    ratio = g / e
    ok = ratio >= target if better_high else ratio <= target
    print(f"{name:<44} garrison {g:>10.2f}  etcd {e:>10.2f}  ratio {ratio:6.2f}  target {'>=' if better_high else '<='} {target}  {'met' if ok else 'NOT met'}")
print()
line("writes/s, 64 clients", pick('garrison', 'put', 64), pick('etcd', 'put', 64), 5)
line("writes/s, 256 clients", pick('garrison', 'put', 256), pick('etcd', 'put', 256), 5)
line("p50 latency ms, 1 client", pick('garrison', 'put', 1, 'p50_ms'), pick('etcd', 'put', 1, 'p50_ms'), 0.75, False)
line("linearizable reads/s, 64 clients", pick('garrison', 'get', 64), pick('etcd', 'get', 64), 10)
line("leader kill -> first write ms (median)", pick('garrison', 'failover', key='first_write_ms'), pick('etcd', 'failover', key='first_write_ms'), 0.5, False)
PY
echo "raw results in $out"
