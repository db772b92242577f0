"""Assertions on rendered lazymig charts; run by test-chart.sh.

  python3 chart_checks.py CASE RENDERED.yaml   (CASE: default, certmanager, tcp, token)
  python3 chart_checks.py schema VALUES.yaml SCHEMA.json [MORE_VALUES.yaml ...]

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
    check("liveness probe present", "livenessProbe" in c)
    check("readiness probe present", "readinessProbe" in c)
    live, ready = c.get("livenessProbe", {}), c.get("readinessProbe", {})
    if case == "tcp":
        check("tcp: liveness is httpGet /healthz", live.get("httpGet", {}).get("path") == "/healthz", live)
        check("tcp: readiness is httpGet /readyz", ready.get("httpGet", {}).get("path") == "/readyz", ready)
    else:
        cmd = ready.get("exec", {}).get("command", [])
        check("readiness execs lazymig-probe ... /readyz", cmd[:1] == ["lazymig-probe"] and cmd[-1] == "/readyz", cmd)
        check("probe targets the control socket", "unix:/run/lazymig/control.sock" in cmd, cmd)
        live_cmd = live.get("exec", {}).get("command", [])
        check("liveness execs lazymig-probe ... /healthz", live_cmd[-1:] == ["/healthz"], live_cmd)
        has_token = any(a.startswith("--token-file=") for a in cmd)
        check("probe sends the token only when configured", has_token == (case == "token"), cmd)
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


def monitoring_checks(docs, case):
    monitoring = case != "tcp"
    rules = by_kind(docs, "PrometheusRule")
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
    dash = [d for d in by_kind(docs, "ConfigMap", "-dashboard")]
    check("dashboard ConfigMap present" if monitoring else "dashboard off", len(dash) == (1 if monitoring else 0), len(dash))
    if dash:
        check("dashboard label grafana_dashboard=1", dash[0]["metadata"]["labels"].get("grafana_dashboard") == "1", dash[0]["metadata"]["labels"])
        board = json.loads(dash[0]["data"]["lazymig.json"])
        check("dashboard JSON has panels with queries", board.get("panels") and all(p.get("targets") for p in board["panels"]))
    sm = by_kind(docs, "ServiceMonitor")
    check("ServiceMonitor only when enabled", len(sm) == (1 if case == "certmanager" else 0), len(sm))
    if sm:
        check("ServiceMonitor scrapes the metrics port", sm[0]["spec"]["endpoints"][0]["port"] == "metrics", sm[0]["spec"])
        check("ServiceMonitor extra labels", sm[0]["metadata"]["labels"].get("release") == "prometheus", sm[0]["metadata"]["labels"])


def manifest_checks(case, path):
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
    monitoring_checks(docs, case)


def schema_checks(schema_path, value_paths):
    import jsonschema
    with open(schema_path) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    base = {}
    for i, path in enumerate(value_paths):
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        # Each extra file is merged over values.yaml alone, as `helm -f FILE` would.
        merged = values if i == 0 else merge(json.loads(json.dumps(base)), values)
        base = merged if i == 0 else base
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(merged)]
        check(f"schema accepts {path}", not errors, "; ".join(errors))
    # The schema must be able to say no: each of these is a mistake an operator could make.
    for what, patch in [
        ("a port out of range", {"agent": {"port": 70000}}),
        ("an unknown control mode", {"control": {"mode": "http"}}),
        ("a misspelt key", {"hostNetwrk": True}),
        ("a string where an integer belongs", {"config": {"migration": {"bulk_batch_pages": "64"}}}),
        ("a relative state dir", {"paths": {"stateDir": "var/lib/lazymig"}}),
        ("an unknown update strategy", {"updateStrategy": {"type": "Recreate"}}),
        ("a bad log level", {"config": {"logLevel": "verbose"}}),
    ]:
        bad = merge(json.loads(json.dumps(base)), patch)
        check(f"schema rejects {what}", not validator.is_valid(bad))


def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        elif v is None:
            dst.pop(k, None)
        else:
            dst[k] = v
    return dst


def main(argv):
    if len(argv) >= 3 and argv[1] == "schema":
        schema_checks(argv[3], [argv[2]] + argv[4:])
    elif len(argv) == 3 and argv[1] in ("default", "certmanager", "tcp", "token"):
        manifest_checks(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"{results.count(True)} passed, {results.count(False)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
