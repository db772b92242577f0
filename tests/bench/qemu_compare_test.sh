#!/usr/bin/env bash
# bench/qemu_compare.sh on a tiny guest (64 MiB, 1 run, precopy and pure postcopy): a real
# source and destination QEMU on loopback, driven through QMP; checks the shape of what it
# prints and writes (a JSON line per run, the table, the JSON file with QEMU's figures per
# mode), not the speed. Skipped (77) where QEMU is not installed: the bench installs it, CI
# does not (see docs/performance.md, "QEMU side by side"). Bad arguments are refused first.
#   qemu_compare_test.sh REPO_ROOT
set -euo pipefail
root=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL  $*"; exit 1; }

if bash "$root/bench/qemu_compare.sh" 0 64MiB 2>"$work/err"; then fail "0 runs accepted"; fi
grep -q "runs must be a positive count, got '0'" "$work/err" || fail "0 runs: $(cat "$work/err")"
if bash "$root/bench/qemu_compare.sh" 1 8GiB 2>"$work/err"; then fail "8GiB accepted"; fi
grep -q "size must be 16MiB..3GiB" "$work/err" || fail "8GiB: $(cat "$work/err")"

if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "skip  qemu-system-x86_64 is not installed (bench/qemu_compare.sh installs it: apt-get install qemu-system-x86)"
  exit 77
fi
if MODES=precopy,bogus INSTALL=0 bash "$root/bench/qemu_compare.sh" 1 64MiB >/dev/null 2>"$work/err"; then
  fail "an unknown mode ran"
fi
grep -q "unknown mode 'bogus'" "$work/err" || fail "unknown mode: $(cat "$work/err")"

out=$(MODES=precopy,postcopy SWITCH=now INSTALL=0 TIMEOUT=60 JSON="$work/q.json" \
  bash "$root/bench/qemu_compare.sh" 1 64MiB 2>"$work/err") || fail "the bench failed: $(cat "$work/err")"
grep -q '^{"mode": "precopy"' <<<"$out" || fail "no JSON line for precopy: $out"
grep -q '^mode  *ok postcopy  *total ms  *downtime ms' <<<"$out" || fail "table header: $out"
grep -Eq '^postcopy  +1 +1 ' <<<"$out" || fail "postcopy row (1 run, in postcopy): $out"
[[ $(tail -1 "$work/err") == "results: $work/q.json" ]] || fail "names its file: $(cat "$work/err")"
python3 - "$work/q.json" <<'PY' || fail "JSON file: $(cat "$work/q.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["size"] == "64M" and d["runs"] == 1 and d["accel"] == "tcg" and d["qemu"].startswith("QEMU"), d
assert len(d["host"]["loadavg_start"]) == 3 and d["host"]["kernel"] and d["git"] and d["tsc_hz"] > 0
assert [(r["mode"], len(r["runs"]), r["failed_runs"]) for r in d["results"]] == \
    [("precopy", 1, 0), ("postcopy", 1, 0)], d["results"]
pre, post = (r["runs"][0] for r in d["results"])
assert not pre["postcopy"] and post["postcopy"] and post["statuses"][-1] == "completed", post
for r in (pre, post):
    assert r["total_ms"] > 0 and r["throughput_mib_s"] > 0 and r["transferred_mib"] >= 50, r
    assert 0 <= r["downtime_ms"] <= r["total_ms"] and r["setup_ms"] is not None, r
    assert r["guest_touches_per_s"] > 0, r  # the guest ran and touched memory
assert post["postcopy_mib"] > 0 and post["postcopy_requests"] is not None, post
assert post["postcopy_blocktime_ms"] is not None, post
cdf = post["vcpu_stall_cdf_us"]  # the demo's form: plot_cdf.py draws it beside lazymig's
if post["dst_stalls"]:  # nearly always: the destination's guest faults on missing pages
    assert len(cdf) == 27 and cdf[11]["q"] == 0.5 and cdf[11]["us"] == round(post["dst_stall_us"]["p50"], 1), cdf
else:
    assert cdf == [], cdf
s = d["results"][1]["summary"]["total_ms"]
assert s["q1"] <= s["median"] <= s["q3"], s
PY
python3 "$root/bench/plot_cdf.py" --metric vcpu_stall -o "$work/stalls.svg" "$work/q.json=qemu" \
  2>"$work/err" || fail "plot_cdf.py cannot draw its stalls: $(cat "$work/err")"
grep -q 'data-label="qemu postcopy \[qemu-tcg\]"' "$work/stalls.svg" || grep -q 'no run with' "$work/err" ||
  fail "no postcopy stall curve: $(cat "$work/err")"
echo "ok    bench/qemu_compare.sh: precopy and postcopy between two QEMUs, table and JSON"
