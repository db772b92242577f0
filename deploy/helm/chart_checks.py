"""Assertions on rendered lazymig charts; run by test-chart.sh.

  python3 chart_checks.py CASE RENDERED.yaml [--no-crds]
      CASE: default, certmanager, tcp, token, extras (deploy/helm/test-values/);
      --no-crds: rendered for a cluster without the Prometheus Operator's API
  python3 chart_checks.py notes NOTES.txt UPDATE_STRATEGY

Prints one line per check and "N passed, M failed"; exits 1 on any failure.
"""
import json
import sys

import yaml

results = []


def check(name, cond, detail=""):
    results.append(bool(cond))
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"  ({detail})"))


def by_kind(docs, kind, name_suffix=None):
    return [d for d in docs if d.get("kind") == kind and
            (name_suffix is None or d["metadata"]["name"].endswith(name_suffix))]


def one(docs, kind, name_suffix=None):
    found = by_kind(docs, kind, name_suffix)
    check(f"exactly one {kind}{' *' + name_suffix if name_suffix else ''}", len(found) == 1, f"found {len(found)}")
    return found[0] if found else {}


def daemonset_checks(ds, case):
    pod = ds.get("spec", {}).get("template", {}).get("spec", {})
    c = (pod.get("containers") or [{}])[0]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    host = {v["hostPath"]["path"]: v["hostPath"].get("type") for v in vols.values() if "hostPath" in v}

    check("userfaultfd is a CharDevice hostPath", host.get("/dev/userfaultfd") == "CharDevice", host)
    check("/dev/userfaultfd is mounted", "/dev/userfaultfd" in mounts, list(mounts))
    for path in ("/var/lib/lazymig", "/run/lazymig"):
        check(f"{path} is a DirectoryOrCreate hostPath", host.get(path) == "DirectoryOrCreate", host)
        check(f"{path} is mounted at the same path", path in mounts and not mounts[path].get("readOnly"), list(mounts))
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    check("capabilities drop ALL", caps.get("drop") == ["ALL"], caps)
    check("capabilities add only SYS_PTRACE", caps.get("add") == ["SYS_PTRACE"], caps)
    check("not privileged, no escalation", sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False, sc)
    check("read-only root filesystem", sc.get("readOnlyRootFilesystem") is True, sc)
    check("runs as uid 0 (documented)", sc.get("runAsUser") == 0, sc)
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(f"{kind} present", kind in c)
    live, ready, start = c.get("livenessProbe", {}), c.get("readinessProbe", {}), c.get("startupProbe", {})
    check("startupProbe gives restart recovery minutes (failureThreshold x period >= 120 s)",
          start.get("failureThreshold", 0) * start.get("periodSeconds", 0) >= 120, start)
    if case == "tcp":
        check("tcp: liveness is httpGet /healthz", live.get("httpGet", {}).get("path") == "/healthz", live)
        check("tcp: startup is httpGet /healthz", start.get("httpGet", {}).get("path") == "/healthz", start)
        check("tcp: readiness is httpGet /readyz", ready.get("httpGet", {}).get("path") == "/readyz", ready)
    else:
        for kind, probe in (("startup", start), ("liveness", live), ("readiness", ready)):
            cmd = probe.get("exec", {}).get("command", [])
            check(f"{kind} probe execs `lazymig health --control unix:/run/lazymig/control.sock --timeout-ms N`",
                  cmd[:4] == ["lazymig", "health", "--control", "unix:/run/lazymig/control.sock"] and
                  cmd[4:5] == ["--timeout-ms"] and len(cmd) == 6, cmd)
            check(f"{kind} probe's own timeout is under kubelet's",
                  len(cmd) == 6 and int(cmd[5]) < probe.get("timeoutSeconds", 1) * 1000, cmd)
        check("no perl probe left", "lazymig-probe" not in json.dumps(c))
    tolerations = pod.get("tolerations", [])
    if case == "extras":
        check("extras: tolerations as given", tolerations == [{"key": "node-role.example/vm-host", "operator": "Exists", "effect": "NoSchedule"}], tolerations)
    else:
        check("tolerates every taint by default (VM hosts are tainted)", {"operator": "Exists"} in tolerations, tolerations)
    strategy = ds.get("spec", {}).get("updateStrategy", {}).get("type")
    check("updateStrategy", strategy == ("RollingUpdate" if case == "token" else "OnDelete"), strategy)
    check("generous termination grace period", pod.get("terminationGracePeriodSeconds", 0) >= 60, pod.get("terminationGracePeriodSeconds"))
    check("hostNetwork as configured", pod.get("hostNetwork") is (case != "tcp"), pod.get("hostNetwork"))
    check("hostPID for SO_PEERCRED and pidfd_getfd", pod.get("hostPID") is True)
    env = {e["name"]: e for e in c.get("env", [])}
    check("NODE_NAME from the downward API",
          env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName", env)
    start = " ".join(c.get("command", []) + c.get("args", []))
    check("start substitutes the node name, then execs the agent",
          "__NODE_NAME__" in start and "exec lazymig-agent --config /etc/lazymig/rendered/lazymig.yaml" in start, start)
    check("memory limit set", "memory" in c.get("resources", {}).get("limits", {}), c.get("resources"))
    check("seccompProfile from values.seccompProfile", sc.get("seccompProfile") == {"type": "RuntimeDefault"}, sc)
    if case == "extras":
        extras_checks(ds, pod, c, env, mounts, vols)
    else:
        check("ServiceAccount is the release's", pod.get("serviceAccountName") == "lazymig", pod.get("serviceAccountName"))
        check("image by tag", c.get("image") == "lazymig/lazymig-agent:0.1.0", c.get("image"))
    ports = {p["name"]: p for p in c.get("ports", [])}
    check("agent and metrics ports", {"agent", "metrics"} <= set(ports), ports)
    if case == "tcp":
        check("tcp: hostPort publishes the agent port", ports.get("agent", {}).get("hostPort") == 7443, ports)
        check("tcp: TLS from the node's directory", vols.get("tls", {}).get("hostPath", {}).get("path") == "/etc/lazymig/tls", vols.get("tls"))
    elif case == "certmanager":
        check("certmanager: TLS from the Certificate's Secret", vols["tls"].get("secret", {}).get("secretName") == "lazymig-tls", vols["tls"])
        check("certmanager: /dev/kvm requested from the device plugin",
              c.get("resources", {}).get("limits", {}).get("devices.kubevirt.io/kvm") == "1", c.get("resources"))
        check("certmanager: snapshot dir mounted read-only",
              mounts.get("/var/lib/firecracker/snapshots", {}).get("readOnly") is True, list(mounts))
    return c


def extras_checks(ds, pod, c, env, mounts, vols):
    check("extras: numeric CPU quantities pass through", c.get("resources", {}).get("limits", {}).get("cpu") == 2 and
          c["resources"]["requests"].get("cpu") == 1, c.get("resources"))
    check("extras: image pinned by digest", c.get("image") == "lazymig/lazymig-agent@sha256:" + "0123456789abcdef" * 4, c.get("image"))
    check("extras: existing ServiceAccount used", pod.get("serviceAccountName") == "vm-agents", pod.get("serviceAccountName"))
    check("extras: pod securityContext", pod.get("securityContext") == {"fsGroup": 0}, pod.get("securityContext"))
    check("extras: extraEnv after NODE_NAME", env.get("MALLOC_ARENA_MAX", {}).get("value") == "2" and "NODE_NAME" in env, env)
    check("extras: extraVolumes", vols.get("snapshots-nfs", {}).get("nfs", {}).get("server") == "nfs.example", list(vols))
    check("extras: extraVolumeMounts", mounts.get("/mnt/snapshots", {}).get("readOnly") is True, list(mounts))
    check("extras: commonLabels on the DaemonSet", ds["metadata"]["labels"].get("team") == "vm-platform", ds["metadata"]["labels"])


def config_checks(docs, case):
    cm = one(docs, "ConfigMap", "-config")
    cfg = yaml.safe_load(cm.get("data", {}).get("lazymig.yaml", "")) or {}
    check("lazymig.yaml parses to a map", isinstance(cfg, dict), cfg)
    check("node_name is the placeholder the start command replaces", cfg.get("node_name") == "__NODE_NAME__", cfg.get("node_name"))
    listen = cfg.get("listen", {})
    check("listen.agent/control/metrics", {"agent", "control", "metrics"} <= set(listen), listen)
    check("listen.agent on the chart's port", listen.get("agent") == "0.0.0.0:7443", listen)
    want_control = "0.0.0.0:7070" if case == "tcp" else "unix:/run/lazymig/control.sock"
    check("listen.control", listen.get("control") == want_control, listen)
    tls = cfg.get("tls", {})
    check("tls files under the mounted directory",
          all(tls.get(k, "").startswith("/etc/lazymig/tls/") for k in ("ca_file", "cert_file", "key_file")), tls)
    check("state_dir and handshake_dir", cfg.get("state_dir") == "/var/lib/lazymig" and cfg.get("handshake_dir") == "/run/lazymig/vmm", cfg)
    check("control_token_file only with a token", ("control_token_file" in cfg) == (case == "token"), cfg)
    if case == "certmanager":
        check("migration tuning passed through", cfg.get("migration") == {"bulk_batch_pages": 128, "reconnect": {"give_up_after_s": 600}}, cfg.get("migration"))
        check("handshake policy passed through", cfg.get("handshake", {}).get("allowed_uids") == [0, 1000], cfg.get("handshake"))
    else:
        check("no migration block by default", "migration" not in cfg, cfg)


def monitoring_checks(docs, case, crds):
    monitoring = case != "tcp"
    rules = by_kind(docs, "PrometheusRule")
    if not crds:
        check("no PrometheusRule where the cluster lacks monitoring.coreos.com/v1", not rules, len(rules))
    else:
        check("PrometheusRule present" if monitoring else "PrometheusRule off", len(rules) == (1 if monitoring else 0), len(rules))
    if rules:
        groups = rules[0]["spec"].get("groups", [])
        alerts = [r for g in groups for r in g.get("rules", []) if "alert" in r]
        check("alerts have expr, severity and summary",
              alerts and all(r.get("expr") and r.get("labels", {}).get("severity") and r.get("annotations", {}).get("summary") for r in alerts),
              [r.get("alert") for r in alerts])
        exprs = " ".join(r["expr"] for r in alerts)
        check("alerts use the agent's metric families", all(m in exprs for m in (
            "lazymig_pages_remaining", "lazymig_fault_latency_seconds_bucket", "lazymig_refusals_total",
            "lazymig_reconnects_total", "lazymig_migrations")), exprs)
        base = ("https://docs.example/lazymig/operations#" if case == "extras" else
                "https://github.com/lazymig/lazymig/blob/main/docs/operations.md#")
        bad = [r["alert"] for r in alerts if r.get("annotations", {}).get("runbook_url") != base + r["alert"].lower()]
        check(f"every alert's runbook_url is {base}<alert>", not bad, bad)
        check("agent-down covers vanished targets with absent()", "absent(" in exprs, exprs)
    dash = [d for d in by_kind(docs, "ConfigMap", "-dashboard")]
    check("dashboard ConfigMap present" if monitoring else "dashboard off", len(dash) == (1 if monitoring else 0), len(dash))
    if dash:
        check("dashboard label grafana_dashboard=1", dash[0]["metadata"]["labels"].get("grafana_dashboard") == "1", dash[0]["metadata"]["labels"])
        board = json.loads(dash[0]["data"]["lazymig.json"])
        dashboard_checks(board)
    sm = by_kind(docs, "ServiceMonitor")
    check("ServiceMonitor only when enabled", len(sm) == (1 if case == "certmanager" else 0), len(sm))
    if sm:
        ep = sm[0]["spec"]["endpoints"][0]
        check("ServiceMonitor scrapes the metrics port", ep["port"] == "metrics", sm[0]["spec"])
        check("ServiceMonitor extra labels", sm[0]["metadata"]["labels"].get("release") == "prometheus", sm[0]["metadata"]["labels"])
        check("ServiceMonitor relabelings", ep.get("relabelings", [{}])[0].get("targetLabel") == "kubernetes_node", ep)
        check("ServiceMonitor metricRelabelings", ep.get("metricRelabelings", [{}])[0].get("action") == "drop", ep)
    pm = by_kind(docs, "PodMonitor")
    check("PodMonitor only when enabled", len(pm) == (1 if case == "extras" else 0), len(pm))
    if pm:
        ep = pm[0]["spec"]["podMetricsEndpoints"][0]
        check("PodMonitor scrapes the metrics port of the agent pods", ep["port"] == "metrics" and
              pm[0]["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") == "lazymig", pm[0]["spec"])
        check("PodMonitor relabelings", ep.get("relabelings", [{}])[0].get("targetLabel") == "kubernetes_node" and
              ep.get("metricRelabelings", [{}])[0].get("action") == "drop", ep)


def dashboard_checks(board):
    check("dashboard JSON has panels with queries", board.get("panels") and all(p.get("targets") for p in board["panels"]))
    # Grafana 10.4/11 write schemaVersion 39; 38 is what the issue found outdated.
    check("dashboard schemaVersion is current (>= 39)", board.get("schemaVersion", 0) >= 39, board.get("schemaVersion"))
    variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
    check("dashboard variables datasource, cluster, node",
          {"datasource", "cluster", "node"} <= set(variables) and variables["datasource"].get("type") == "datasource", list(variables))
    exprs = [t["expr"] for p in board.get("panels", []) for t in p.get("targets", [])]
    check("dashboard shows where a demand fault's time goes (lazymig_fault_phase_seconds by phase)",
          any("lazymig_fault_phase_seconds" in e and "phase" in e for e in exprs), exprs)
    check("dashboard shows pre-copy rounds and switches (lazymig_precopy_source_*)",
          all(any(f in e for e in exprs) for f in ("lazymig_precopy_source_round_pages", "lazymig_precopy_source_dirty_pages_per_second",
                                                   "lazymig_precopy_source_switches_total", "lazymig_precopy_source_stale_pages")), exprs)
    unscoped = [e for e in exprs if 'cluster=~"$cluster"' not in e or 'node=~"$node"' not in e]
    check("every panel query is scoped by $cluster and $node", not unscoped, unscoped)
    sources = [json.dumps(p.get("datasource")) for p in board.get("panels", [])]
    check("every panel uses the $datasource variable", all("${datasource}" in s for s in sources), sources)


def test_hook_checks(docs, case):
    pods = [d for d in by_kind(docs, "Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    want = 0 if case == "tcp" else 1  # tcp without hostNetwork: no way in from another pod
    check("helm test hook pod" if want else "no helm test pod (no way to reach the agent)", len(pods) == want, len(pods))
    if pods:
        c = pods[0]["spec"]["containers"][0]
        cmd = c.get("command", [])
        check("helm test runs `lazymig health` on the control endpoint", cmd[:3] == ["lazymig", "health", "--control"], cmd)
        labels = pods[0]["metadata"]["labels"]
        check("helm test pod is not selected by the DaemonSet or Service",
              labels.get("app.kubernetes.io/name") != "lazymig", labels)


def manifest_checks(case, path, crds=True):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    check(f"{case}: every document has apiVersion, kind, metadata.name",
          docs and all(d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name") for d in docs))
    ds = one(docs, "DaemonSet")
    daemonset_checks(ds, case)
    config_checks(docs, case)
    svc = one(docs, "Service")
    check("Service is headless with a metrics port",
          svc.get("spec", {}).get("clusterIP") == "None" and any(p["name"] == "metrics" for p in svc.get("spec", {}).get("ports", [])), svc.get("spec"))
    selector = svc.get("spec", {}).get("selector", {})
    pod_labels = ds.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    check("Service selects the agent pods", selector and all(pod_labels.get(k) == v for k, v in selector.items()), selector)
    certs = by_kind(docs, "Certificate")
    check("Certificate only with cert-manager", len(certs) == (1 if case == "certmanager" else 0), len(certs))
    if certs:
        spec = certs[0]["spec"]
        check("Certificate URI is the fleet identity", "spiffe://example.org/fleet/lazymig" in spec.get("uris", []), spec.get("uris"))
        check("Certificate for both server and client auth", {"server auth", "client auth"} <= set(spec.get("usages", [])), spec.get("usages"))
        check("Certificate issuer", spec.get("issuerRef", {}).get("name") == "lazymig-ca", spec.get("issuerRef"))
    monitoring_checks(docs, case, crds)
    test_hook_checks(docs, case)
    if case == "extras":
        unlabelled = [d["kind"] for d in docs if d["metadata"].get("labels", {}).get("team") != "vm-platform"]
        check("extras: commonLabels on every object", not unlabelled, unlabelled)
        check("extras: no ServiceAccount created for an existing one", not by_kind(docs, "ServiceAccount"))


def notes_checks(path, strategy):
    with open(path) as f:
        notes = f.read()
    # kubectl refuses `rollout status` for OnDelete ("only available for RollingUpdate
    # strategy type"): NOTES must not tell anyone to run it then.
    if strategy == "OnDelete":
        check("NOTES: no `rollout status` under OnDelete", "rollout status" not in notes)
        check("NOTES: tells how to replace agents under OnDelete", "OnDelete" in notes and "delete pod" in notes)
    else:
        check("NOTES: `rollout status` under RollingUpdate", "rollout status" in notes)
    check("NOTES: the namespace's Pod Security level", "pod-security.kubernetes.io/enforce=privileged" in notes)


def main(argv):
    if len(argv) == 4 and argv[1] == "notes":
        notes_checks(argv[2], argv[3])
    elif len(argv) in (3, 4) and argv[1] in ("default", "certmanager", "tcp", "token", "extras"):
        manifest_checks(argv[1], argv[2], crds=argv[3:] != ["--no-crds"])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"{results.count(True)} passed, {results.count(False)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
