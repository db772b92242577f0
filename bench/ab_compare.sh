#!/usr/bin/env bash
# Two builds side by side: the same demo scenarios as bench/run.sh (bench/scenarios.sh), run
# interleaved (before, after, before, after, ...) so that drift in a shared machine's load hits
# both alike; prints the median fault p50/p99 and throughput of each, and the mismatches (must
# be 0).
#   bench/ab_compare.sh BEFORE_BIN_DIR AFTER_BIN_DIR [runs] [size]
#   SCEN="saturated-bulk-random" bench/ab_compare.sh ...   (a subset of the scenarios)
#   JSON=FILE bench/ab_compare.sh ...   (every run's demo JSON, as bench/run.sh writes it, with
#                                        "side": before/after; bench/plot_cdf.py draws it)
# Build the other commit in a worktree: git worktree add ../before REV && cmake --preset release
# && cmake --build --preset release --target lazymig lazymig-agent lazymig-testvm
set -uo pipefail
A=$1 B=$2 runs=${3:-3} size=${4:-256MiB}
# shellcheck source=bench/scenarios.sh
source "$(dirname "$0")/scenarios.sh"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# RAW=FILE keeps every run's JSON line (scenario, side, JSON) for a closer look.
bench_write_configs "$tmp"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ) load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for s in ${SCEN:-${BENCH_BASE_SCENARIOS[*]}}; do
  bench_scenario "$s" "$tmp" || exit 2
  for ((i = 0; i < runs; i++)); do
    for side in before after; do
      bin=$A; [[ $side == after ]] && bin=$B
      line=$("$bin"/lazymig demo --size "$size" --extra-yaml "$scenario_config" "${scenario_flags[@]}" \
        2>/dev/null | tail -1)
      echo "$s $side $line" >> "$tmp/out"
    done
  done
done
[[ -n ${RAW:-} ]] && cp "$tmp/out" "$RAW"
if [[ -n ${JSON:-} ]]; then
  python3 - "$tmp/out" "$JSON" "$A" "$B" "$started" "$runs" "$size" "$load_start" <<'PY'
import json, os, sys
out, path, before, after, started, runs, size, load_start = sys.argv[1:]
results = {}
for l in open(out):
    s, side, js = (l.rstrip("\n").split(" ", 2) + [""])[:3]
    r = results.setdefault((s, side), {"scenario": s, "side": side,
                                       "bin": before if side == "before" else after,
                                       "failed_runs": 0, "runs": []})
    try:
        r["runs"].append(json.loads(js))
    except ValueError:
        r["failed_runs"] += 1
loadavg = lambda text: [float(x) for x in text.split()[:3]]
doc = {"bench": "bench/ab_compare.sh", "started": started, "runs": int(runs), "size": size,
       "host": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                "loadavg_start": loadavg(load_start),
                "loadavg_end": loadavg(open("/proc/loadavg").read())},
       "results": list(results.values())}
with open(path, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
PY
fi
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
print(f"{'scenario':28s} {'side':7s} {'fault p50':>10s} {'(IQR)':>10s} {'p99':>9s} {'(IQR)':>12s} "
      f"{'MiB/s':>7s} {'(IQR)':>10s} {'src CPU/GiB':>16s} {'dst CPU/GiB':>16s} {'mismatch':>8s} n")
def cpu(js, side):  # the agent's CPU seconds per GiB moved, median (IQR)
    xs = [g(j, 'cpu_seconds_per_gib', side) for j in js]
    xs = sorted(x for x in xs if x == x)
    if not xs: return "-"
    return f"{st.median(xs):.2f} ({xs[len(xs) // 4]:.2f}-{xs[(3 * len(xs)) // 4]:.2f})"
for (s, side), js in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] != 'before')):
    p50s = [g(j, 'fault_latency_us', 'p50') for j in js]
    p99s = [g(j, 'fault_latency_us', 'p99') for j in js]
    thrs = [g(j, 'throughput_mib_s') for j in js]
    mm = sum(int(j.get('mismatches', -1)) for j in js)
    print(f"{s:28s} {side:7s} {st.median(p50s):10.0f} {q(p50s):>10s} {st.median(p99s):9.0f} "
          f"{q(p99s):>12s} {st.median(thrs):7.0f} {q(thrs):>10s} {cpu(js, 'source'):>16s} "
          f"{cpu(js, 'destination'):>16s} {mm:8d} {len(js)}")
PY
echo "load average (1, 5, 15 min): start $load_start, end $(cut -d' ' -f1-3 /proc/loadavg)"
