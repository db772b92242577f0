#!/usr/bin/env bash
# Migration numbers beside this machine's floors, measured in the same run (DESIGN.md,
# "Performance model"): fault latency against the latency floors of matching conditions (idle
# or busy CPUs), and both agents' CPU seconds per GiB against lazymig-floors' CPU floor. Prints a table and one JSON object per scenario and vCPU kind (KVM
# vCPUs, host threads standing in); medians of N runs. Writes everything to one JSON file
# (the floors, and per scenario and vCPU kind the summary and every run's demo JSON), which
# bench/plot_cdf.py draws from; its path is the last line on stderr. Then pre-copy against pure
# post-copy, the same guest in the same run (run_precopy_pair below).
#   bench/run.sh [runs=3] [size=256MiB] [scenarios=.]   (scenarios: a regex of the names to run)
#   JSON=FILE bench/run.sh ...   (default build/bench/run-<UTC time>.json)
# The scenarios are bench/scenarios.sh's, shared with bench/ab_compare.sh. Last, the tail bar
# (bench/tail_bar.py): each saturated-bulk scenario's p90 and p99 against its quiet twin's p50.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/scenarios.sh
source bench/scenarios.sh
bin=build/bin
runs=${1:-3}
size=${2:-256MiB}
only=${3:-.}
json_out=${JSON:-build/bench/run-$(date -u +%Y%m%dT%H%M%SZ).json}
[[ -x $bin/lazymig && -x $bin/lazymig-floors ]] || { echo "build first: cmake --build --preset release" >&2; exit 2; }
mkdir -p "$(dirname "$json_out")"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
floors=$($bin/lazymig-floors 2>/dev/null)
echo "floors: $floors"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bench_write_configs "$tmp"
: > "$tmp/results.jsonl"

# Each scenario runs twice over in the same run: on KVM vCPUs executing the guest program
# (where /dev/kvm can run a guest) and on host threads standing in for them, so the fault
# latency and vCPU stall as KVM vCPUs see them sit beside the stand-in's; the KVM rows add the
# guest's rate not migrating and during, and the share of its work lost to the migration.
# Each is read against the floors of its condition (bench/scenarios.sh).
run_scenario() {  # name
  local name=$1
  [[ $name =~ $only ]] || return 0
  bench_scenario "$name" "$tmp"
  for vcpus in kvm threads; do
    local as=()
    [[ $vcpus == threads ]] && as=(--vcpus-as-threads)
    for ((i = 0; i < runs; i++)); do
      $bin/lazymig demo --size "$size" --extra-yaml "$scenario_config" "${as[@]}" \
        "${scenario_flags[@]}" 2>/dev/null | tail -1 || true
    done > "$tmp/$name-$vcpus.jsonl"
  done
  python3 - "$name" "$tmp/$name" "$floors" "$scenario_condition" "$tmp/results.jsonl" "$runs" <<'PY'
import json, statistics, sys
name, prefix, floors, condition = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
runs_asked = int(sys.argv[6])
results = open(sys.argv[5], "a")
def parse(line):  # a demo that printed no report counts as a failed run
    try:
        j = json.loads(line)
        return j if isinstance(j, dict) else None
    except ValueError:
        return None
med = lambda xs: statistics.median(xs) if xs else 0
# Floors of the matching condition; an older lazymig-floors had the idle ones only.
lat = floors.get(condition, floors)
floor = lat["local_fault_us"]["p50"] + lat["network_rtt_us"]["p50"]
cpu_floor = floors.get("cpu_s_per_gib", {}).get(condition, {}).get("total", {})
for asked in ("kvm", "threads"):
    lines = [l for l in open(f"{prefix}-{asked}.jsonl") if l.strip()]
    rows = [j for j in map(parse, lines) if j is not None]
    failed = runs_asked - len(rows)
    ran = sorted({r.get("vcpus", "threads") for r in rows}) or ["none"]
    p50 = med([r["fault_latency_us"]["p50"] for r in rows])
    p99 = med([r["fault_latency_us"]["p99"] for r in rows])
    vp50 = med([r["vcpu_access_latency_us"]["p50"] for r in rows])
    vp99 = med([r["vcpu_access_latency_us"]["p99"] for r in rows])
    thr = med([r["throughput_mib_s"] for r in rows])
    rate = lambda k: med([r["guest_rate"][k] for r in rows if r.get("guest_rate", {}).get(k) is not None])
    cpu = lambda side: med([r["cpu_seconds_per_gib"][side] for r in rows
                            if (r.get("cpu_seconds_per_gib") or {}).get(side) is not None])
    src_cpu, dst_cpu = cpu("source"), cpu("destination")
    ratio = lambda x, f: x / f if f else 0
    src_floor, dst_floor = cpu_floor.get("source_cpu_s", 0), cpu_floor.get("destination_cpu_s", 0)
    degr = [r["degradation"] for r in rows if r.get("degradation") is not None]
    ok = bool(rows) and failed == 0 and all(r["verified"] for r in rows)
    mismatches = sum(r["mismatches"] + r.get("guest_mismatches", 0) for r in rows)
    label = f"{name} [{'/'.join(ran)}]"
    print(f"{label:38s} fault p50 {p50:7.0f} us ({p50/floor:4.1f}x {condition} floor {floor:.0f} us) p99 {p99:7.0f} us  "
          f"vCPU stall p50 {vp50:7.0f} p99 {vp99:7.0f} us  {thr:5.0f} MiB/s  "
          f"CPU s/GiB source {src_cpu:.2f} ({ratio(src_cpu, src_floor):.1f}x floor {src_floor:.2f}) "
          f"destination {dst_cpu:.2f} ({ratio(dst_cpu, dst_floor):.1f}x floor {dst_floor:.2f}) "
          f"both {ratio(src_cpu + dst_cpu, src_floor + dst_floor):.1f}x  "
          f"guest {rate('before'):.2f}->{rate('during'):.2f} pages/ms, lost {100*med(degr):3.0f}%  "
          f"verified={ok} mismatches={mismatches}")
    summary = {"scenario": name, "vcpus": "/".join(ran), "runs": len(rows), "fault_p50_us": p50,
               "fault_p99_us": p99, "floor_us": floor, "floor_condition": condition,
               "ratio_to_floor": p50 / floor,
               "vcpu_stall_p50_us": vp50, "vcpu_stall_p99_us": vp99, "throughput_mib_s": thr,
               "install_floor_mib_s": floors["uffd_copy_64page_mib_s"],
               "cpu_s_per_gib": {"source": src_cpu, "destination": dst_cpu},
               "cpu_floor_s_per_gib": {"source": src_floor, "destination": dst_floor},
               "cpu_ratio_to_floor": {"source": ratio(src_cpu, src_floor),
                                      "destination": ratio(dst_cpu, dst_floor),
                                      "both": ratio(src_cpu + dst_cpu, src_floor + dst_floor)},
               "guest_rate_before": rate("before"), "guest_rate_during": rate("during"),
               "guest_rate_after": rate("after"), "degradation": med(degr),
               "verified": ok, "mismatches": mismatches}
    print(json.dumps(summary))
    results.write(json.dumps({"scenario": name, "condition": condition, "vcpus_asked": asked,
                              "failed_runs": failed, "summary": summary, "runs": rows}) + "\n")
PY
}

# Pre-copy against pure post-copy (bench/scenarios.sh's BENCH_PRECOPY_PAIR): the same guest,
# the two modes' runs interleaved so that a shared machine's drift hits both alike; each side's
# medians, then their ratios: demand faults after the switch (the issue's bar: pre-copy's at
# most 10% of pure post-copy's), the pages fetched over the network for them, the guest's
# work lost, total time and downtime (the source VM's pause to the destination VM's resume).
run_precopy_pair() {
  local pair=("${BENCH_PRECOPY_PAIR[@]}") name
  [[ ${pair[0]} =~ $only || ${pair[1]} =~ $only ]] || return 0
  for name in "${pair[@]}"; do : > "$tmp/$name.jsonl"; done
  for ((i = 0; i < runs; i++)); do
    for name in "${pair[@]}"; do
      bench_scenario "$name" "$tmp"
      { $bin/lazymig demo --size "$size" --extra-yaml "$scenario_config" "${scenario_flags[@]}" \
          2>/dev/null | tail -1 || true; } >> "$tmp/$name.jsonl"
    done
  done
  python3 - "$tmp" "$tmp/results.jsonl" "$runs" "${pair[@]}" <<'PY'
import json, statistics, sys
tmp, results, runs_asked, names = sys.argv[1], open(sys.argv[2], "a"), int(sys.argv[3]), sys.argv[4:]
def parse(line):
    try:
        j = json.loads(line)
        return j if isinstance(j, dict) else None
    except ValueError:
        return None
med = lambda xs: statistics.median(xs) if xs else None
fmt = lambda x, spec: "n/a" if x is None else format(x, spec)
sides = {}
for name in names:
    rows = [j for j in map(parse, open(f"{tmp}/{name}.jsonl")) if j is not None]
    pick = lambda key: med([r[key] for r in rows if isinstance(r.get(key), (int, float))])
    pre = [r.get("precopy") or {} for r in rows]
    s = {"scenario": name, "vcpus": "/".join(sorted({r.get("vcpus", "threads") for r in rows})) or "none",
         "runs": len(rows), "mode": pre[0].get("mode") if pre else None,
         "demand_faults_after_switch": pick("demand_faults_after_switch"),
         "demand_pages": pick("demand_pages"), "degradation": pick("degradation"),
         "total_seconds": pick("total_seconds"), "downtime_ms": pick("downtime_ms"),
         "rounds": med([p["rounds"] for p in pre if isinstance(p.get("rounds"), int)]),
         "stale_pages": med([p["stale_pages"] for p in pre if isinstance(p.get("stale_pages"), int)]),
         "verified": bool(rows) and len(rows) == runs_asked and all(r.get("verified") for r in rows),
         "mismatches": sum(r.get("mismatches", 0) + r.get("guest_mismatches", 0) for r in rows)}
    sides[name] = s
    print(f"{name + ' [' + s['vcpus'] + ']':38s} demand faults after the switch {fmt(s['demand_faults_after_switch'], '.0f')} "
          f"(fetched over the network {fmt(s['demand_pages'], '.0f')})  guest lost {fmt(s['degradation'] and 100 * s['degradation'], '.0f')}%  "
          f"total {fmt(s['total_seconds'], '.2f')} s  downtime_ms {fmt(s['downtime_ms'], '.0f')}  "
          f"rounds {fmt(s['rounds'], '.0f')} stale {fmt(s['stale_pages'], '.0f')}  "
          f"verified={s['verified']} mismatches={s['mismatches']}")
    print(json.dumps(s))
    results.write(json.dumps({"scenario": name, "condition": "busy", "vcpus_asked": "kvm",
                              "failed_runs": runs_asked - len(rows), "summary": s, "runs": rows}) + "\n")
pre, post = sides[names[0]], sides[names[1]]
def ratio(key):
    a, b = pre[key], post[key]
    return a / b if a is not None and b else None
pair = {"pair": names, "faults_ratio": ratio("demand_faults_after_switch"),
        "network_pages_ratio": ratio("demand_pages"), "faults_bar": 0.10,
        "precopy": pre, "postcopy": post}
pair["faults_within_bar"] = pair["faults_ratio"] is not None and pair["faults_ratio"] <= 0.10
pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"
print(f"{'precopy vs postcopy (hot)':38s} demand faults after the switch {fmt(pre['demand_faults_after_switch'], '.0f')} vs "
      f"{fmt(post['demand_faults_after_switch'], '.0f')} = {pct(pair['faults_ratio'])} of pure post-copy's (bar 10%: "
      f"{'met' if pair['faults_within_bar'] else 'NOT met'}); fetched over the network {pct(pair['network_pages_ratio'])}; "
      f"guest lost {fmt(pre['degradation'] and 100 * pre['degradation'], '.0f')}% vs {fmt(post['degradation'] and 100 * post['degradation'], '.0f')}%; "
      f"total {fmt(pre['total_seconds'], '.2f')} vs {fmt(post['total_seconds'], '.2f')} s; "
      f"downtime_ms {fmt(pre['downtime_ms'], '.0f')} vs {fmt(post['downtime_ms'], '.0f')}")
print(json.dumps(pair))
results.write(json.dumps({"scenario": "precopy-vs-postcopy-hot", "condition": "busy", "vcpus_asked": "kvm",
                          "failed_runs": 2 * runs_asked - pre["runs"] - post["runs"], "summary": pair,
                          "runs": []}) + "\n")
PY
}

for name in "${BENCH_SCENARIOS[@]}"; do
  run_scenario "$name"
done
run_precopy_pair

python3 - "$json_out" "$tmp/results.jsonl" "$floors" "$started" "$runs" "$size" "$only" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$load_start" <<'PY'
import json, os, sys
out, results, floors, started, runs, size, only, rev, load_start = sys.argv[1:]
loadavg = lambda text: [float(x) for x in text.split()[:3]]
doc = {"bench": "bench/run.sh", "started": started, "runs": int(runs), "size": size,
       "scenarios": only, "git": rev,
       "host": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                "loadavg_start": loadavg(load_start),
                "loadavg_end": loadavg(open("/proc/loadavg").read())},
       "floors": json.loads(floors), "results": [json.loads(l) for l in open(results) if l.strip()]}
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
PY
# Issue 14's bar for the tail: each saturated scenario against its capped twin of this run.
python3 bench/tail_bar.py "$json_out" || echo "tail bar: could not read $json_out" >&2
echo "results: $json_out" >&2
