#!/usr/bin/env bash
# Where a migrated GiB's CPU goes, both agents: one demo migration under `perf record` (every
# thread of the demo, its agents and its test VMs, sampled on the CPU clock; the hardware
# counters are not there on these virtual machines), its samples grouped per agent by what the
# code was doing (bench/cpu_profile.py). perf comes with Debian's linux-perf package.
#   bench/cpu_profile.sh [size=1GiB] [demo flags...]   (default flags: --pattern random --vcpus 1)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/bin
size=${1:-1GiB}
shift || true
flags=("$@")
[[ ${#flags[@]} -gt 0 ]] || flags=(--pattern random --vcpus 1 --accesses 2000)
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 2; }
[[ -x $bin/lazymig ]] || { echo "build first: cmake --build --preset release" >&2; exit 2; }
hz=999
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
perf record -q -e cpu-clock -F $hz -g -o "$tmp/perf.data" -- \
  $bin/lazymig demo --size "$size" --json "${flags[@]}" 2>"$tmp/demo.err" | tail -1 > "$tmp/demo.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("demo:", json.dumps({k: r.get(k) for k in ("verified", "mismatches", "throughput_mib_s", "cpu_seconds", "cpu_seconds_per_gib", "size_bytes")}))' "$tmp/demo.json"
perf script -i "$tmp/perf.data" -F comm,pid,tid,ip,sym,dso 2>/dev/null > "$tmp/perf.txt"
gib=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["size_bytes"] / 2**30)' "$tmp/demo.json")
python3 bench/cpu_profile.py "$tmp/perf.txt" $hz "$gib"
