#!/usr/bin/env python3
"""Runs one migration between two real agents with a real Prometheus server scraping both,
then prints every Grafana panel's query (deploy/grafana/lazymig-dashboard.json) with its
current value, the alert rules' state, and the migration report beside what Prometheus saw.

    scripts/observe.py [--bindir build/bin] [--size 128MiB] [--bulk-mib-s 24] [--check] [--keep]

With --check (the CTest `observability_prometheus`) it also fails unless:
  - `promtool check metrics` accepts both agents' exposition and `promtool check rules` the rules;
  - Prometheus scraped the destination while pages were still missing;
  - the counters Prometheus holds agree with the destination's migration report (demand faults,
    pages by path, vCPU blocked time, completed migrations);
  - every dashboard and rule expression evaluates without error, every panel shows a series,
    every rule is healthy in Prometheus, and no alert fires for a healthy migration;
  - a plaintext connection to the source agent is refused, counted, and fires LazymigPeerRefused.
"""
import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "deploy/grafana/lazymig-dashboard.json")
RULES = os.path.join(ROOT, "deploy/prometheus/lazymig-rules.yaml")
MIG = "observe-1"
NODES = ("src", "dst")
failures = []


def say(msg):
    print(msg, flush=True)


def check(ok, what):
    say(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, fn, timeout=30.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except (OSError, ValueError, KeyError, subprocess.CalledProcessError):
            pass
        time.sleep(interval)
    raise SystemExit(f"observe: timed out waiting for {what}")


class Run:
    def __init__(self, args):
        self.args = args
        self.bindir = os.path.abspath(args.bindir)
        self.dir = tempfile.mkdtemp(prefix="lazymig-observe.")
        self.procs = []
        self.prom_url = None

    # ---- processes ----
    def spawn(self, argv, log):
        p = subprocess.Popen(argv, stdout=open(os.path.join(self.dir, log), "w"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if self.args.keep or failures:
            say(f"observe: logs and data kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def cli(self, node, *argv):
        out = subprocess.run([f"{self.bindir}/lazymig", "--control", f"unix:{self.dir}/{node}-control.sock",
                              "--json", *argv], check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    # ---- agents ----
    def start_agent(self, node):
        d = self.dir
        subprocess.run([f"{self.bindir}/lazymig", "certs", "--dir", f"{d}/pki", "--node", node,
                        "--san", f"spiffe://lazymig/node/{node}"], check=True, capture_output=True)
        with open(f"{d}/{node}.yaml", "w") as f:
            f.write(f"""node_name: {node}
listen:
  agent: "127.0.0.1:0"
  control: "unix:{d}/{node}-control.sock"
  metrics: "127.0.0.1:0"
tls:
  ca_file: {d}/pki/lazymig-ca.crt
  cert_file: {d}/pki/{node}.crt
  key_file: {d}/pki/{node}.key
state_dir: {d}/{node}-state
handshake_dir: {d}/{node}-vmm
log_format: json
migration:
  bulk_rate_limit_mib_s: {self.args.bulk_mib_s}
""")
        self.spawn([f"{self.bindir}/lazymig-agent", "--config", f"{d}/{node}.yaml"], f"{node}.log")
        return wait_for(f"agent {node}", lambda: self.cli(node, "agent"))

    # ---- Prometheus ----
    def start_prometheus(self, targets):
        port = free_port()
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            json.dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                       "rule_files": [RULES],
                       "scrape_configs": [{"job_name": "lazymig",
                                           "static_configs": [{"targets": targets}]}]}, f)
        self.spawn(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={self.dir}/tsdb",
                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], "prometheus.log")
        self.prom_url = f"http://127.0.0.1:{port}"
        wait_for("Prometheus", lambda: urllib.request.urlopen(self.prom_url + "/-/ready", timeout=2).status == 200)

    def prom(self, path, **params):
        url = f"{self.prom_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            body = urllib.request.urlopen(url, timeout=10).read()
        except urllib.error.HTTPError as e:
            body = e.read()
        return json.loads(body)

    def query(self, expr):
        r = self.prom("/api/v1/query", query=expr)
        if r.get("status") != "success":
            return None, r.get("error", "unknown error")
        return r["data"]["result"], None

    def scalar(self, expr):
        result, err = self.query(expr)
        if err or not result:
            return None
        return float(result[0]["value"][1])


def instantiate(expr):
    # What Grafana does before sending a panel's query: every node, a rate window the 1 s
    # scrape interval fills.
    return expr.replace("$__rate_interval", "30s").replace("$node", ".*").replace("$cluster", ".*")


def show(result):
    if not result:
        return "(no series)"
    parts = []
    for s in result[:6]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())
                          if k not in ("__name__", "instance", "job"))
        v = float(s["value"][1])
        parts.append(f"{{{labels}}} {v:.6g}" if not math.isnan(v) else f"{{{labels}}} NaN")
    more = f" (+{len(result) - 6} more)" if len(result) > 6 else ""
    return "; ".join(parts) + more


def migrate(run, agents):
    size, seed = run.args.size, "7"
    vm = ["--memory", "memfd", "--size", size, "--seed", seed, "--zero-ratio", "0.25", "--regions", "2"]
    mem = os.path.join(run.dir, "vm.mem")
    subprocess.run([f"{run.bindir}/lazymig-testvm", "source", *vm, "--snapshot-file", mem],
                   check=True, capture_output=True)
    token = subprocess.run([f"{run.bindir}/lazymig", "token"], check=True, capture_output=True,
                           text=True).stdout.strip()
    run.cli("src", "migrate", "--id", MIG, "--role", "source", "--token", token,
            "--peer-identity", "spiffe://lazymig/node/dst", "--snapshot-file", mem)
    created = run.cli("dst", "migrate", "--id", MIG, "--role", "destination", "--token", token,
                      "--peer-identity", "spiffe://lazymig/node/src",
                      "--source-address", agents["src"]["agent_address"])
    vm_proc = run.spawn([f"{run.bindir}/lazymig-testvm", "dest", *vm, "--handshake-socket",
                         created["handshake_socket"], "--vcpus", "2", "--pattern", "random",
                         "--accesses", "20000", "--control", f"unix:{run.dir}/dst-control.sock",
                         "--migration", MIG, "--timeout-s", "300"], "vm.log")
    say(f"observe: migrating {size} ({MIG}), bulk stream capped at {run.args.bulk_mib_s} MiB/s")
    last = None
    while True:
        m = run.cli("dst", "status", MIG)
        if m["state"] != last:
            say(f"observe: destination {m['state']}, {m['progress']['pages_remaining']} pages remaining")
            last = m["state"]
        if m["state"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.3)
    wait_for("the source to complete", lambda: run.cli("src", "status", MIG)["state"] == "completed")
    vm_proc.wait(60)
    with open(os.path.join(run.dir, "vm.log")) as f:
        vm_out = [json.loads(line) for line in f if line.startswith("{")]
    return run.cli("dst", "status", MIG), vm_out[-1] if vm_out else {}


def scraped_after(run, t):
    # Both targets scraped after `t`, so Prometheus holds the final counters.
    result, _ = run.query('timestamp(up{job="lazymig"})')
    return result and len(result) == 2 and all(float(s["value"][1]) > t for s in result)


def compare_with_report(run, report):
    say("\nmigration report (control API) against Prometheus")
    p, lat = report["progress"], report["fault_latency_us"]
    pairs = [
        ("demand faults", lat["count"], 'sum(lazymig_fault_latency_seconds_count{node="dst"})'),
        ("demand pages", p["demand_pages"], 'lazymig_pages_total{node="dst",path="demand"}'),
        ("bulk pages", p["bulk_pages"], 'lazymig_pages_total{node="dst",path="bulk"}'),
        ("zero pages", p["zero_pages"], 'lazymig_pages_total{node="dst",path="zero"}'),
        ("pages installed", p["demand_pages"] + p["bulk_pages"] + p["zero_pages"],
         'sum(lazymig_pages_total{node="dst"})'),
        ("pages remaining", p["pages_remaining"], 'lazymig_pages_remaining{node="dst"}'),
        ("vCPU blocked seconds", report["vcpu_blocked_seconds"], 'lazymig_vcpu_blocked_seconds_total{node="dst"}'),
        ("destination completed", 1, 'lazymig_migration_duration_seconds_count{node="dst",outcome="completed"}'),
        ("source completed", 1, 'lazymig_migration_duration_seconds_count{node="src",outcome="completed"}'),
    ]
    for what, want, expr in pairs:
        got = run.scalar(expr)
        say(f"  {what:<24} report {want:<14.6g} prometheus {got if got is not None else 'none':<14} {expr}")
        # Each agent ran this one migration only, so its counters are the report's numbers;
        # blocked time is a sum of floats on one side and of nanoseconds on the other.
        ok = got is not None and (math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6))
        check(ok, f"{what}: Prometheus agrees with the report")
    peak = run.scalar('max_over_time(lazymig_pages_remaining{node="dst"}[10m])')
    check(peak is not None and peak > 0, f"Prometheus scraped the destination mid-migration (peak pages remaining {peak})")


def panels(run):
    say("\nGrafana dashboard: each panel's query and its current value")
    with open(DASHBOARD) as f:
        dash = json.load(f)
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            # label_values(metric, label) is Grafana's; the series it reads are PromQL.
            metric, label = var["definition"].split("(", 1)[1].rstrip(")").rsplit(",", 1)
            result, err = run.query(instantiate(metric))
            values = sorted({s["metric"].get(label.strip(), "") for s in result or []})
            say(f"  variable ${var['name']}: {var['definition']} -> {values}")
            if var["name"] == "node":
                check(err is None and set(NODES) <= set(values), "variable $node lists both nodes")
            else:
                # No cluster label on a single test Prometheus: the query must still evaluate.
                check(err is None and bool(result), f"variable ${var['name']} evaluates")
    for panel in dash["panels"]:
        say(f"  [{panel['title']}]")
        shown = False
        for t in panel.get("targets", []):
            expr = instantiate(t["expr"])
            result, err = run.query(expr)
            say(f"    {expr}\n      = {err if err else show(result)}")
            check(err is None, f"panel '{panel['title']}' query {t['refId']} evaluates")
            shown = shown or bool(result)
        check(shown, f"panel '{panel['title']}' shows a series")


def rules(run):
    say("\nalert rules, as the Prometheus server loaded and evaluated them")
    groups = run.prom("/api/v1/rules")["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    check(len(loaded) > 0, f"Prometheus loaded {len(loaded)} rules from {os.path.relpath(RULES, ROOT)}")
    for r in loaded:
        result, err = run.query(r["query"])
        say(f"  {r['name']:<28} health={r['health']:<4} state={r.get('state', '-'):<8} now: "
            f"{err if err else show(result)}")
        check(r["health"] == "ok" and not r.get("lastError"), f"rule {r['name']} is healthy")
        check(err is None, f"rule {r['name']} expression evaluates")
    firing = [a for a in run.prom("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
    check(not firing, "no alert fires for a healthy migration " + (str([a["labels"]["alertname"] for a in firing]) if firing else ""))


def refused_peer_fires_alert(run, agents):
    say("\na plaintext client knocks on the source agent")
    host, port = agents["src"]["agent_address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            s.recv(100)
        except OSError:
            pass
    alert = wait_for("LazymigPeerRefused to fire", lambda: [
        a for a in run.prom("/api/v1/alerts")["data"]["alerts"]
        if a["labels"]["alertname"] == "LazymigPeerRefused" and a["state"] == "firing"], timeout=30)
    refusals = run.scalar('sum(lazymig_refusals_total{node="src"})')
    say(f"  refusals on src: {refusals}; alert {alert[0]['labels']}")
    check(refusals is not None and refusals >= 1, "the refusal is counted in lazymig_refusals_total")
    check(alert[0]["labels"].get("node") == "src", "LazymigPeerRefused fires for the source node")


def promtool_checks(run, agents):
    say("\npromtool")
    for node in NODES:
        text = urllib.request.urlopen(f"http://{agents[node]['metrics_address']}/metrics", timeout=5).read()
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        detail = (r.stdout + r.stderr).decode().strip()
        check(r.returncode == 0, f"promtool check metrics on {node}'s exposition" + (f": {detail}" if detail else ""))
    r = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True)
    check(r.returncode == 0, "promtool check rules " + os.path.relpath(RULES, ROOT) + ("" if r.returncode == 0 else ": " + r.stdout + r.stderr))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bindir", default=os.path.join(ROOT, "build/bin"))
    ap.add_argument("--size", default="128MiB")
    ap.add_argument("--bulk-mib-s", type=int, default=24, help="bulk stream cap, so that scrapes land mid-migration")
    ap.add_argument("--check", action="store_true", help="fail unless everything agrees (CTest mode)")
    ap.add_argument("--keep", action="store_true", help="keep logs, configs and the TSDB")
    args = ap.parse_args()
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            raise SystemExit(f"observe: {tool} is missing (Debian package prometheus; scripts/install-deps.sh)")
    run = Run(args)
    try:
        agents = {n: run.start_agent(n) for n in NODES}
        run.start_prometheus([agents[n]["metrics_address"] for n in NODES])
        say(f"observe: Prometheus at {run.prom_url} scraping {[agents[n]['metrics_address'] for n in NODES]} every 1s")
        # Counters must have a sample from before the migration, or rate() has nothing to
        # compare with.
        wait_for("the first scrape of both agents", lambda: run.scalar('count(up{job="lazymig"} == 1)') == 2)
        report, vm = migrate(run, agents)
        check(report["state"] == "completed" and vm.get("verified") is True,
              f"migration {report['state']}, test VM verified={vm.get('verified')} mismatches={vm.get('mismatches')}")
        done = time.time()
        wait_for("a scrape after the migration", lambda: scraped_after(run, done + 0.5))
        # Rules are evaluated every second on what was scraped: let one evaluation pass.
        time.sleep(1.5)
        compare_with_report(run, report)
        panels(run)
        rules(run)
        promtool_checks(run, agents)
        if args.check:
            refused_peer_fires_alert(run, agents)
    finally:
        run.stop()
    if failures:
        say(f"\nobserve: {len(failures)} check(s) failed:\n  " + "\n  ".join(failures))
        return 1
    say("\nobserve: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
