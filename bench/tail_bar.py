#!/usr/bin/env python3
"""Issue 14's bar for the fault tail, read from one bench/run.sh JSON file.

    bench/tail_bar.py build/bench/run-*.json          (a table; --json for one JSON object)

The bar: with the bulk stream saturating, the fault p90 is at most 1.5x and the p99 at most 3x
the fault p50 of the same guest with the bulk stream capped, both measured in the same run; the
vCPU stalls likewise. Each pair is a `quiet-bulk-X` and a `saturated-bulk-X` scenario of
bench/scenarios.sh (X: random, hot, random-4vcpu, hot-4vcpu) run on the same kind of vCPUs.
Every figure is the median over the runs of that run's percentile (a run reports its latency at
fixed quantiles: fault_latency_cdf_us, vcpu_stall_cdf_us). A pair with a failed or unverified
run is reported, never passed. Python's standard library only; malformed input ends with
status 2 and a message naming the file and the field.
"""
import argparse
import json
import statistics
import sys

P90_BAR, P99_BAR = 1.5, 3.0
FIELDS = {"fault": "fault_latency_cdf_us", "vcpu_stall": "vcpu_stall_cdf_us"}


class InputError(Exception):
    """Bench JSON that cannot be read; the message names the file and the field."""


def quantile(run, field, q, where):
    for point in run.get(field) or []:
        if abs(point.get("q", -1) - q) < 1e-9:
            return point["us"]
    raise InputError(f"{where}: {field} has no q={q}")


def median_quantile(runs, field, q, where):
    return statistics.median(quantile(r, field, q, f"{where} run {i}") for i, r in enumerate(runs))


def pairs(doc, path):
    """(suffix, vcpu kind) -> {"quiet": result, "saturated": result} for every complete pair."""
    found = {}
    for i, result in enumerate(doc.get("results") or []):
        try:
            name, kind = result["scenario"], result["vcpus_asked"]
        except KeyError as e:
            raise InputError(f"{path}: results[{i}] has no {e}") from None
        for side in ("quiet", "saturated"):
            prefix = f"{side}-bulk-"
            if name.startswith(prefix):
                found.setdefault((name[len(prefix):], kind), {})[side] = result
    return {k: v for k, v in sorted(found.items()) if len(v) == 2}


def judge(pair, metric, where):
    quiet, saturated = pair["quiet"], pair["saturated"]
    if not quiet["runs"] or not saturated["runs"]:
        return {"verdict": "no runs"}
    field = FIELDS[metric]
    if any(not r.get(field) for r in quiet["runs"] + saturated["runs"]):
        return {"verdict": f"no {field}"}
    base = median_quantile(quiet["runs"], field, 0.5, f"{where} quiet")
    p90 = median_quantile(saturated["runs"], field, 0.9, f"{where} saturated")
    p99 = median_quantile(saturated["runs"], field, 0.99, f"{where} saturated")
    out = {"capped_p50_us": base, "saturated_p90_us": p90, "saturated_p99_us": p99,
           "p90_ratio": p90 / base if base else None, "p99_ratio": p99 / base if base else None}
    complete = all(r["failed_runs"] == 0 and r["summary"].get("verified") for r in pair.values())
    if not complete:
        out["verdict"] = "incomplete"
    elif out["p90_ratio"] is None:
        out["verdict"] = "no capped p50"
    else:
        out["verdict"] = "pass" if out["p90_ratio"] <= P90_BAR and out["p99_ratio"] <= P99_BAR else "fail"
    return out


def tail_bar(doc, path):
    rows = []
    for (suffix, kind), pair in pairs(doc, path).items():
        row = {"pair": suffix, "vcpus_asked": kind,
               "saturated_throughput_mib_s": pair["saturated"]["summary"].get("throughput_mib_s")}
        for metric in FIELDS:
            row[metric] = judge(pair, metric, f"{path}: {suffix} [{kind}] {metric}")
        rows.append(row)
    return {"bar": {"p90_over_capped_p50": P90_BAR, "p99_over_capped_p50": P99_BAR},
            "size": doc.get("size"), "runs": doc.get("runs"), "pairs": rows}


def describe(m):
    if "capped_p50_us" not in m or m.get("p90_ratio") is None:
        return f"{m['verdict']:>10s}"
    return (f"capped p50 {m['capped_p50_us']:7.0f} us, saturated p90 {m['saturated_p90_us']:7.0f} "
            f"({m['p90_ratio']:5.1f}x) p99 {m['saturated_p99_us']:7.0f} ({m['p99_ratio']:5.1f}x) "
            f"{m['verdict']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", help="bench/run.sh JSON (JSON=FILE)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    a = ap.parse_args()
    try:
        with open(a.file) as f:
            doc = json.load(f)
        result = tail_bar(doc, a.file)
    except (OSError, ValueError, InputError, KeyError, TypeError) as e:
        print(f"tail_bar: {a.file}: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(result))
        return 0
    if not result["pairs"]:
        print("tail bar: no quiet-bulk-X / saturated-bulk-X pair in this run")
    for row in result["pairs"]:
        label = f"tail bar {row['pair']} [{row['vcpus_asked']}]"
        for metric in FIELDS:
            print(f"{label:34s} {metric:10s} {describe(row[metric])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
