"""Checks on deploy/prometheus/lazymig-rules.yaml beyond promtool; run by test-chart.sh.

  python3 rules_checks.py RULES.yaml RULES.test.yaml docs/operations.md Chart.yaml

Every alert: a runbook_url of <Chart.yaml home>/blob/main/docs/operations.md#<alert in lower
case> whose section ("### <Alert>") exists in docs/operations.md; a promtool test that
expects it firing and one that expects it quiet (exp_alerts: []). Prints one line per check
and "N passed, M failed".
"""
import re
import sys

import yaml

results = []


def check(name, cond, detail=""):
    results.append(bool(cond))
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"  ({detail})"))


def github_anchor(heading):
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def main(rules_path, tests_path, docs_path, chart_path):
    rules = yaml.safe_load(open(rules_path))
    tests = yaml.safe_load(open(tests_path))
    home = yaml.safe_load(open(chart_path))["home"]
    anchors = {github_anchor(m) for m in re.findall(r"^#+ (.*)$", open(docs_path).read(), re.M)}
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    firing, quiet = set(), set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            (firing if a.get("exp_alerts") else quiet).add(a["alertname"])
    base = f"{home}/blob/main/docs/operations.md#"
    for r in alerts:
        name = r["alert"]
        url = r.get("annotations", {}).get("runbook_url", "")
        check(f"{name}: runbook_url {url}", url == base + name.lower(), f"want {base}{name.lower()}")
        check(f"{name}: docs/operations.md has the runbook section", url.rpartition("#")[2] in anchors)
        check(f"{name}: a promtool test expects it firing", name in firing)
        check(f"{name}: a promtool test expects it quiet", name in quiet)
    print(f"{results.count(True)} passed, {results.count(False)} failed")
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
