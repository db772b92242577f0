#!/usr/bin/env bash
# bench/run.sh and bench/ab_compare.sh with stand-in binaries (a `lazymig` that prints a fixed
# demo report and records its arguments, a `lazymig-floors` that prints fixed floors; nothing
# is measured): both run the scenarios of bench/scenarios.sh with the same flags, run.sh writes
# one JSON file with every run and counts a demo that printed no report as failed, and
# ab_compare.sh keeps its table and writes the same form with JSON=FILE.
#   bench_scripts_test.sh REPO_ROOT
set -euo pipefail
root=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL  $*"; exit 1; }

mkdir -p "$work/tree/bench" "$work/tree/build/bin"
cp "$root/bench/run.sh" "$root/bench/scenarios.sh" "$root/bench/tail_bar.py" "$work/tree/bench/"
cat > "$work/tree/build/bin/lazymig" <<'EOF'
#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/args"
[[ " $* " == *" --memory hugetlb "* ]] && { echo "demo: FAILED: stand-in" >&2; exit 1; }
if [[ " $* " == *" --precopy auto "* ]]; then
  echo '{"verified":true,"mismatches":0,"vcpus":"kvm","demand_faults_after_switch":40,"demand_pages":0,"degradation":0.1,"total_seconds":2.5,"downtime_ms":20,"precopy":{"mode":"auto","rounds":3,"pages_per_round":[16384,900,60],"stale_pages":12}}'
  exit 0
elif [[ " $* " == *" --precopy off "* ]]; then
  echo '{"verified":true,"mismatches":0,"vcpus":"kvm","demand_faults_after_switch":800,"demand_pages":600,"degradation":0.3,"total_seconds":2.0,"downtime_ms":15,"precopy":{"mode":"off"}}'
  exit 0
fi
echo '{"verified":true,"mismatches":0,"vcpus":"kvm","fault_latency_us":{"p50":50,"p99":900},"vcpu_access_latency_us":{"p50":60,"p99":1000},"throughput_mib_s":300,"fault_latency_cdf_us":[{"q":0.5,"us":50},{"q":0.9,"us":70},{"q":0.99,"us":900}],"vcpu_stall_cdf_us":[]}'
EOF
cat > "$work/tree/build/bin/lazymig-floors" <<'EOF'
#!/usr/bin/env bash
echo '{"local_fault_us":{"p50":7},"network_rtt_us":{"p50":30},"uffd_copy_64page_mib_s":2000,"busy":{"local_fault_us":{"p50":7},"network_rtt_us":{"p50":30}},"idle":{"local_fault_us":{"p50":60},"network_rtt_us":{"p50":50}}}'
EOF
chmod +x "$work/tree/build/bin/"*

# run.sh: its table and JSON lines as before, and the file.
out=$(JSON="$work/run.json" bash "$work/tree/bench/run.sh" 2 64MiB '^(quiet-bulk-random|saturated-bulk-random|hugetlb-write-4vcpu)$' 2>"$work/err")
grep -q '^quiet-bulk-random \[kvm\] .*verified=True mismatches=0' <<<"$out" || fail "run.sh table: $out"
grep -q '^{"scenario": "quiet-bulk-random"' <<<"$out" || fail "run.sh JSON lines: $out"
grep -q '^hugetlb-write-4vcpu \[none\] .*verified=False' <<<"$out" || fail "a failed demo is not verified: $out"
# The tail bar of the pair: saturated p90 70 (1.4x the capped p50 of 50), p99 900 (18x).
grep -q '^tail bar random \[kvm\] *fault .*( *1\.4x).*( *18\.0x) fail$' <<<"$out" || fail "run.sh tail bar: $out"
grep -q '^tail bar random \[kvm\] *vcpu_stall *no vcpu_stall_cdf_us$' <<<"$out" || fail "tail bar without stalls: $out"
[[ $(tail -1 "$work/err") == "results: $work/run.json" ]] || fail "run.sh names its file: $(cat "$work/err")"
python3 - "$work/run.json" <<'PY' || fail "run.sh JSON file"
import json, sys
d = json.load(open(sys.argv[1]))
got = [(r["scenario"], r["vcpus_asked"], len(r["runs"]), r["failed_runs"]) for r in d["results"]]
want = [("quiet-bulk-random", "kvm", 2, 0), ("quiet-bulk-random", "threads", 2, 0),
        ("saturated-bulk-random", "kvm", 2, 0), ("saturated-bulk-random", "threads", 2, 0),
        ("hugetlb-write-4vcpu", "kvm", 0, 2), ("hugetlb-write-4vcpu", "threads", 0, 2)]
assert got == want, got
assert d["floors"]["uffd_copy_64page_mib_s"] == 2000 and d["size"] == "64MiB" and d["runs"] == 2
assert d["results"][0]["condition"] == "idle" and d["results"][2]["condition"] == "busy"
assert d["results"][0]["runs"][0]["fault_latency_cdf_us"][2] == {"q": 0.99, "us": 900}
assert len(d["host"]["loadavg_start"]) == 3, d["host"]
PY

# run.sh's pre-copy pair: the same guest in both modes, runs interleaved, each side's line and
# their ratios (demand faults after the switch against the issue's 10% bar; downtime_ms).
: > "$work/tree/build/bin/args"
pair=$(JSON="$work/pair.json" bash "$work/tree/bench/run.sh" 2 64MiB '^(precopy-auto-hot|postcopy-hot)$' 2>"$work/err")
grep -q '^precopy-auto-hot \[kvm\]  *demand faults after the switch 40 (fetched over the network 0)  guest lost 10%  total 2.50 s  downtime_ms 20  rounds 3 stale 12  verified=True mismatches=0$' <<<"$pair" ||
  fail "run.sh pre-copy side: $pair"
grep -q '^postcopy-hot \[kvm\]  *demand faults after the switch 800 (fetched over the network 600)  guest lost 30%  total 2.00 s  downtime_ms 15  rounds n/a stale n/a  verified=True' <<<"$pair" ||
  fail "run.sh post-copy side: $pair"
grep -q "^precopy vs postcopy (hot)  *demand faults after the switch 40 vs 800 = 5.0% of pure post-copy's (bar 10%: met); fetched over the network 0.0%; guest lost 10% vs 30%; total 2.50 vs 2.00 s; downtime_ms 20 vs 15$" <<<"$pair" ||
  fail "run.sh pair line: $pair"
! grep -q "tail bar: could not read" "$work/err" || fail "bench/tail_bar.py reads the pair's JSON: $(cat "$work/err")"
modes=$(grep -o -- '--precopy [a-z]*' "$work/tree/build/bin/args" | tr '\n' ' ')
[[ $modes == "--precopy auto --precopy off --precopy auto --precopy off " ]] || fail "the pair's runs interleave: $modes"
[[ $(sed 's/--precopy [a-z]*//' "$work/tree/build/bin/args" | sort -u | wc -l) == 1 ]] ||
  fail "the pair runs the same guest: $(cat "$work/tree/build/bin/args")"
python3 - "$work/pair.json" <<'PY' || fail "run.sh pair in the JSON file"
import json, sys
d = json.load(open(sys.argv[1]))
got = [(r["scenario"], len(r.get("runs", []))) for r in d["results"]]
assert got == [("precopy-auto-hot", 2), ("postcopy-hot", 2), ("precopy-vs-postcopy-hot", 0)], got
pair = d["results"][2]["summary"]
assert pair["faults_ratio"] == 0.05 and pair["faults_within_bar"], pair
assert all("vcpus_asked" in r for r in d["results"]), d["results"]  # bench/tail_bar.py reads it
assert pair["precopy"]["downtime_ms"] == 20 and pair["postcopy"]["downtime_ms"] == 15, pair
PY

# ab_compare.sh: the same scenario, the same flags; its table as before; JSON=FILE.
mkdir -p "$work/before"
cp "$work/tree/build/bin/lazymig" "$work/before/"
table=$(SCEN=quiet-bulk-random JSON="$work/ab.json" bash "$root/bench/ab_compare.sh" \
  "$work/before" "$work/tree/build/bin" 1 64MiB)
grep -q '^scenario  *side  *fault p50' <<<"$table" || fail "ab_compare header: $table"
grep -q '^quiet-bulk-random  *before  *50  *50-50  *900  *900-900  *300  *300-300  *-  *-  *0 1$' <<<"$table" || fail "ab_compare row: $table"
grep -q '^load average (1, 5, 15 min): start .*, end ' <<<"$table" || fail "ab_compare load average: $table"
flags() { grep -- '--pattern random --vcpus 1' "$1" | head -1 | sed 's/--extra-yaml [^ ]*quiet.yaml/CONFIG/'; }
[[ -n $(flags "$work/before/args") && $(flags "$work/before/args") == $(flags "$work/tree/build/bin/args") ]] ||
  fail "run.sh and ab_compare.sh ran quiet-bulk-random differently"
python3 -c "
import json, sys
d = json.load(open('$work/ab.json'))
assert [(r['scenario'], r['side'], len(r['runs'])) for r in d['results']] == \
    [('quiet-bulk-random', 'before', 1), ('quiet-bulk-random', 'after', 1)], d['results']
" || fail "ab_compare.sh JSON file"
if SCEN=no-such-scenario bash "$root/bench/ab_compare.sh" "$work/before" "$work/before" 1 2>"$work/err"; then
  fail "an unknown scenario ran"
fi
grep -q "unknown scenario 'no-such-scenario'" "$work/err" || fail "unknown scenario: $(cat "$work/err")"
echo "ok    bench/run.sh and bench/ab_compare.sh: shared scenarios, JSON files, tables"
