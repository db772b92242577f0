#!/usr/bin/env python3
"""bench/plot_cdf.py draws a small bench JSON into valid SVG, one curve per scenario and vCPU
kind with the runs' median at each quantile, and refuses malformed input with a message naming
the field.   python3 tests/bench/plot_cdf_test.py REPO_ROOT
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

ROOT = sys.argv.pop(1) if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../..")
SCRIPT = os.path.join(ROOT, "bench/plot_cdf.py")
FIXTURE = os.path.join(ROOT, "tests/bench/cdf_fixture.json")
SVG = "{http://www.w3.org/2000/svg}"
sys.path.insert(0, os.path.join(ROOT, "bench"))
import plot_cdf  # noqa: E402


class PlotCdf(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="plot-cdf-test-")
        with open(FIXTURE) as f:
            self.doc = json.load(f)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def plot(self, *args, doc=None):
        path = os.path.join(self.dir, "bench.json")
        with open(path, "w") as f:
            json.dump(self.doc if doc is None else doc, f)
        out = os.path.join(self.dir, "out.svg")
        r = subprocess.run([sys.executable, SCRIPT, "-o", out, *args, path], capture_output=True,
                           text=True, timeout=60)
        return r, out

    def broken(self, mutate):
        doc = copy.deepcopy(self.doc)
        mutate(doc)
        r, _ = self.plot(doc=doc)
        self.assertEqual(r.returncode, 2, r.stderr)
        return r.stderr

    def test_renders_valid_svg_with_a_curve_per_group(self):
        r, out = self.plot("--note", "a loaded machine")
        self.assertEqual(r.returncode, 0, r.stderr)
        root = ET.parse(out).getroot()  # raises on anything but well-formed XML
        self.assertEqual(root.tag, SVG + "svg")
        curves = [g.get("data-label") for g in root.iter(SVG + "g") if g.get("class") == "curve"]
        self.assertEqual(curves, ["quiet-bulk-random [kvm]", "saturated-bulk-random [kvm]"])
        # Each curve: a CDF and a tail line per run, and the median's two.
        for g in root.iter(SVG + "g"):
            if g.get("class") == "curve":
                self.assertEqual(len(g.findall(SVG + "polyline")), 2 * 3 + 2)
        texts = [t.text for t in root.iter(SVG + "text")]
        for tick in ("10 µs", "100 µs", "1 ms", "10 ms"):
            self.assertIn(tick, texts, "a log latency axis in decades")
        self.assertIn("a loaded machine", texts)
        self.assertTrue(any("load average 8.5 -> 9" in (t or "") for t in texts), texts)
        self.assertIn("results[2]: no run with fault_latency_cdf_us points", r.stderr)
        if shutil.which("xmllint"):
            subprocess.run(["xmllint", "--noout", out], check=True)

    def test_the_curve_is_the_median_of_the_runs_at_each_quantile(self):
        path = os.path.join(self.dir, "bench.json")
        with open(path, "w") as f:
            json.dump(self.doc, f)
        _, curves = plot_cdf.load(path, "", "fault_latency_cdf_us")
        saturated = dict(curves[1]["median"])
        self.assertEqual(saturated[0.5], 60.0, "runs 60, 90, 48 µs")
        self.assertEqual(saturated[0.99], 3000.0, "runs 3000, 4500, 2400 µs")
        _, stalls = plot_cdf.load(path, "", "vcpu_stall_cdf_us")
        self.assertAlmostEqual(dict(stalls[1]["median"])[0.5], 66.0)

    def test_labels_name_files_and_sides(self):
        self.doc["results"][0]["side"] = "before"
        r, out = self.plot()
        path = os.path.join(self.dir, "bench.json")
        r = subprocess.run([sys.executable, SCRIPT, "-o", out, f"{path}=main"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        labels = [g.get("data-label") for g in ET.parse(out).getroot().iter(SVG + "g")
                  if g.get("class") == "curve"]
        self.assertEqual(labels[0], "main quiet-bulk-random before [kvm]")

    def test_only_picks_curves_by_label(self):
        r, out = self.plot("--only", "^saturated")
        self.assertEqual(r.returncode, 0, r.stderr)
        labels = [g.get("data-label") for g in ET.parse(out).getroot().iter(SVG + "g")
                  if g.get("class") == "curve"]
        self.assertEqual(labels, ["saturated-bulk-random [kvm]"])

    def test_a_bad_latency_names_its_field(self):
        def bad(doc):
            doc["results"][1]["runs"][2]["fault_latency_cdf_us"][3]["us"] = "fast"
        err = self.broken(bad)
        self.assertIn("results[1].runs[2].fault_latency_cdf_us[3].us: expected a number", err)

    def test_a_missing_cdf_names_the_field(self):
        err = self.broken(lambda doc: doc["results"][0]["runs"][1].pop("fault_latency_cdf_us"))
        self.assertIn("results[0].runs[1].fault_latency_cdf_us: missing", err)

    def test_falling_quantiles_are_refused(self):
        def bad(doc):
            doc["results"][0]["runs"][0]["fault_latency_cdf_us"][2]["q"] = 0.05
        err = self.broken(bad)
        self.assertIn("results[0].runs[0].fault_latency_cdf_us[2].q: the quantiles must rise", err)

    def test_not_bench_json_is_refused(self):
        self.assertIn("results: missing or not a list", self.broken(lambda doc: doc.pop("results")))
        path = os.path.join(self.dir, "bench.json")
        with open(path, "w") as f:
            f.write("{not json")
        r = subprocess.run([sys.executable, SCRIPT, path], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("not JSON", r.stderr)

    def test_nothing_to_draw_is_an_error(self):
        def empty(doc):
            for result in doc["results"]:
                for run in result["runs"]:
                    run["fault_latency_cdf_us"] = []
        self.assertIn("no curve to draw", self.broken(empty))


if __name__ == "__main__":
    unittest.main()
