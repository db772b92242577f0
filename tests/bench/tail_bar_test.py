#!/usr/bin/env python3
"""bench/tail_bar.py judges each saturated-bulk scenario against its capped twin of the same
run: p90 <= 1.5x and p99 <= 3x the capped p50, for the agent's faults and the vCPU stalls; a pair
with a failed or unverified run never passes; malformed input is named.
    python3 tests/bench/tail_bar_test.py REPO_ROOT
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = sys.argv.pop(1) if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../..")
SCRIPT = os.path.join(ROOT, "bench/tail_bar.py")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import tail_bar  # noqa: E402


def cdf(p50, p90, p99):
    return [{"q": 0.5, "us": p50}, {"q": 0.9, "us": p90}, {"q": 0.99, "us": p99}]


def run(p50, p90, p99):
    return {"fault_latency_cdf_us": cdf(p50, p90, p99),
            "vcpu_stall_cdf_us": cdf(p50 + 10, p90 + 10, p99 + 10)}


def result(scenario, kind, runs, failed=0, verified=True):
    return {"scenario": scenario, "vcpus_asked": kind, "failed_runs": failed,
            "summary": {"verified": verified, "throughput_mib_s": 700}, "runs": runs}


def doc(*results):
    return {"size": "2GiB", "runs": 3, "results": list(results)}


class TailBar(unittest.TestCase):
    def judge(self, d):
        return {(p["pair"], p["vcpus_asked"]): p for p in tail_bar.tail_bar(d, "fixture")["pairs"]}

    def test_ratios_are_against_the_median_capped_p50_and_the_median_saturated_tail(self):
        d = doc(result("quiet-bulk-random", "kvm", [run(90, 100, 200), run(100, 100, 200),
                                                    run(110, 100, 200)]),
                result("saturated-bulk-random", "kvm", [run(50, 140, 250), run(50, 150, 300),
                                                        run(50, 900, 9000)]))
        fault = self.judge(d)[("random", "kvm")]["fault"]
        self.assertEqual(fault["capped_p50_us"], 100)
        self.assertEqual(fault["saturated_p90_us"], 150)
        self.assertEqual(fault["saturated_p99_us"], 300)
        self.assertAlmostEqual(fault["p90_ratio"], 1.5)
        self.assertAlmostEqual(fault["p99_ratio"], 3.0)
        self.assertEqual(fault["verdict"], "pass")

    def test_a_tail_past_either_bar_fails(self):
        for p90, p99 in ((151, 200), (100, 301)):
            d = doc(result("quiet-bulk-hot-4vcpu", "threads", [run(100, 1, 1)]),
                    result("saturated-bulk-hot-4vcpu", "threads", [run(1, p90, p99)]))
            self.assertEqual(self.judge(d)[("hot-4vcpu", "threads")]["fault"]["verdict"], "fail")

    def test_pairs_are_per_vcpu_kind_and_an_unpaired_scenario_is_left_out(self):
        d = doc(result("quiet-bulk-random", "kvm", [run(100, 1, 1)]),
                result("saturated-bulk-random", "threads", [run(1, 1, 1)]),
                result("saturated-bulk-hot", "kvm", [run(1, 1, 1)]))
        self.assertEqual(self.judge(d), {})

    def test_a_failed_or_unverified_run_never_passes(self):
        for failed, verified in ((1, True), (0, False)):
            d = doc(result("quiet-bulk-random", "kvm", [run(100, 1, 1)]),
                    result("saturated-bulk-random", "kvm", [run(1, 1, 1)], failed, verified))
            self.assertEqual(self.judge(d)[("random", "kvm")]["fault"]["verdict"], "incomplete")

    def test_the_table_and_json_from_the_command_and_malformed_input_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            good = os.path.join(tmp, "run.json")
            with open(good, "w") as f:
                json.dump(doc(result("quiet-bulk-random", "kvm", [run(100, 1, 1)]),
                              result("saturated-bulk-random", "kvm", [run(1, 120, 400)])), f)
            out = subprocess.run([sys.executable, SCRIPT, good], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertRegex(out.stdout, r"tail bar random \[kvm\] +fault .*\( +1\.2x\).*\( +4\.0x\) fail")
            self.assertRegex(out.stdout, r"tail bar random \[kvm\] +vcpu_stall .* fail")
            js = subprocess.run([sys.executable, SCRIPT, "--json", good], capture_output=True, text=True)
            self.assertEqual(json.loads(js.stdout)["pairs"][0]["fault"]["verdict"], "fail")
            bad = os.path.join(tmp, "bad.json")
            d = doc(result("quiet-bulk-random", "kvm", [run(100, 1, 1)]),
                    result("saturated-bulk-random", "kvm", [run(1, 1, 1)]))
            del d["results"][1]["runs"][0]["fault_latency_cdf_us"][1]  # its q=0.9
            with open(bad, "w") as f:
                json.dump(d, f)
            out = subprocess.run([sys.executable, SCRIPT, bad], capture_output=True, text=True)
            self.assertEqual(out.returncode, 2)
            self.assertIn("saturated run 0: fault_latency_cdf_us has no q=0.9", out.stderr)


if __name__ == "__main__":
    unittest.main()
