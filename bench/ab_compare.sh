#!/usr/bin/env bash
# Two builds side by side: the same demo scenarios as bench/run.sh, run interleaved
# (before, after, before, after, ...) so that drift in a shared machine's load hits both alike;
# prints the median fault p50/p99 and throughput of each, and the mismatches (must be 0).
#   bench/ab_compare.sh BEFORE_BIN_DIR AFTER_BIN_DIR [runs] [size]
#   SCEN="saturated-bulk-random" bench/ab_compare.sh ...   (a subset of the scenarios)
# Build the other commit in a worktree: git worktree add ../before REV && cmake --preset release
# && cmake --build --preset release --target lazymig lazymig-agent lazymig-testvm
set -uo pipefail
A=$1 B=$2 runs=${3:-3} size=${4:-256MiB}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# RAW=FILE keeps every run's JSON line (scenario, side, JSON) for a closer look.
printf 'migration:\n  bulk_rate_limit_mib_s: 32\n' > "$tmp/quiet.yaml"; : > "$tmp/none.yaml"
scen() {
  case $1 in
    quiet-bulk-random) echo "$tmp/quiet.yaml --pattern random --vcpus 1 --accesses 2000";;
    saturated-bulk-random) echo "$tmp/none.yaml --pattern random --vcpus 1 --accesses 2000";;
    saturated-bulk-hot-4vcpu) echo "$tmp/none.yaml --pattern hot --vcpus 4 --accesses 5000";;
  esac
}
for s in ${SCEN:-quiet-bulk-random saturated-bulk-random saturated-bulk-hot-4vcpu}; do
  read -r extra flags <<<"$(scen $s)"
  for ((i = 0; i < runs; i++)); do
    for side in before after; do
      bin=$A; [[ $side == after ]] && bin=$B
      line=$($bin/lazymig demo --size "$size" --extra-yaml "$extra" $flags 2>/dev/null | tail -1)
      echo "$s $side $line" >> "$tmp/out"
    done
  done
done
[[ -n ${RAW:-} ]] && cp "$tmp/out" "$RAW"
python3 - "$tmp/out" <<'PY'
import json, sys, statistics as st
rows = {}
for l in open(sys.argv[1]):
    s, side, js = l.split(" ", 2)
    try: j = json.loads(js)
    except Exception: continue
    rows.setdefault((s, side), []).append(j)
def g(j, *path):
    for p in path:
        j = j.get(p, {}) if isinstance(j, dict) else {}
    return j if isinstance(j, (int, float)) else float('nan')
def q(xs):  # the middle half of the runs: whether two medians differ by more than the noise
    xs = sorted(xs)
    return f"{xs[len(xs) // 4]:.0f}-{xs[(3 * len(xs)) // 4]:.0f}" if xs else "-"
print(f"{'scenario':28s} {'side':7s} {'fault p50':>10s} {'(IQR)':>10s} {'p99':>9s} {'MiB/s':>7s} {'mismatch':>8s} n")
for (s, side), js in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] != 'before')):
    p50s = [g(j, 'fault_latency_us', 'p50') for j in js]
    p50 = st.median(p50s)
    p99 = st.median(g(j, 'fault_latency_us', 'p99') for j in js)
    thr = st.median(g(j, 'throughput_mib_s') for j in js)
    mm = sum(int(j.get('mismatches', -1)) for j in js)
    print(f"{s:28s} {side:7s} {p50:10.0f} {q(p50s):>10s} {p99:9.0f} {thr:7.0f} {mm:8d} {len(js)}")
PY
