#!/usr/bin/env bash
# Tests the Helm chart, the alert rules, the dashboard, the systemd unit and every YAML file
# in deploy/ with the real tools, without a cluster:
#   helm (v4)          lint --strict and template over the defaults and every test values file;
#                      the values schema accepts and refuses what it should; NOTES.txt
#   kubernetes-models  every rendered object valid against its schema (CRDs included)
#   promtool           check rules, and test rules (lazymig-rules.test.yaml)
#   chart_checks.py    what the chart must say (probes, security, monitoring, each finding of
#                      issue 16); scripts/chart-readme.py --check (README values table)
#   yamllint, systemd-analyze verify
# helm and kubernetes-models come from scripts/install-deploy-tools.sh (.tools/, pinned);
# promtool, yamllint, python3-yaml and systemd from scripts/install-deps.sh (Debian).
#
#   deploy/helm/test-chart.sh [AGENT_BINARY]
#
# With AGENT_BINARY (lazymig-agent), every rendered lazymig.yaml is also checked by the
# agent's own parser (--check-config), so the chart cannot drift from the config schema.
# A missing tool fails the test under CI=true; elsewhere it exits 77 (CTest: skipped),
# naming the tool and the script that installs it.
set -euo pipefail
agent_bin=${1:-}

helm_dir=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$helm_dir")
repo=$(dirname "$deploy")
chart=$helm_dir/lazymig
helm=${HELM:-$repo/.tools/bin/helm}
failures=0

missing=()
[[ -x $helm ]] || missing+=("helm ($helm: scripts/install-deploy-tools.sh)")
[[ -d $repo/.tools/node_modules/kubernetes-models ]] ||
  missing+=("kubernetes-models ($repo/.tools/node_modules: scripts/install-deploy-tools.sh)")
for tool in node python3 yamllint systemd-analyze promtool; do
  command -v "$tool" >/dev/null || missing+=("$tool (scripts/install-deps.sh)")
done
python3 -c "import yaml" 2>/dev/null || missing+=("python3 module yaml (python3-yaml)")
if ((${#missing[@]})); then
  echo "test-chart: missing: ${missing[*]}" >&2
  if [[ ${CI:-} == true ]]; then exit 1; fi
  echo "test-chart: skipped (CI=true makes this a failure)" >&2
  exit 77
fi
echo "tools: helm $("$helm" version --short) ($helm)"
echo "tools: kubernetes-models $(node -p 'require(process.argv[1]).version' "$repo/.tools/node_modules/kubernetes-models/package.json")"
echo "tools: promtool $(promtool --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p')"
echo "tools: the project's own renderer is retired: every render below is real Helm"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { echo; echo "== $*"; }
record() {  # record NAME RC: one summary line per step
  if [[ $2 -eq 0 ]]; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi
}
# The APIs a cluster with the Prometheus Operator and cert-manager serves.
crds=(--api-versions monitoring.coreos.com/v1/PrometheusRule
      --api-versions monitoring.coreos.com/v1/ServiceMonitor
      --api-versions monitoring.coreos.com/v1/PodMonitor
      --api-versions cert-manager.io/v1/Certificate)
template() { "$helm" template lazymig "$chart" --namespace lazymig "$@"; }

# ---- lint and render every values file ----
declare -A cases=(
  [default]=""
  [certmanager]=$helm_dir/test-values/certmanager-servicemonitor.yaml
  [tcp]=$helm_dir/test-values/tcp-control-hostpath.yaml
  [token]=$helm_dir/test-values/token-rolling.yaml
  [extras]=$helm_dir/test-values/operator-extras.yaml
)
names=(default certmanager tcp token extras)
[[ $(ls "$helm_dir"/test-values/*.yaml | wc -l) -eq $((${#names[@]} - 1)) ]]
record "every file in test-values/ is a case here" $?
for name in "${names[@]}"; do
  step "$name"
  args=()
  [[ -n ${cases[$name]} ]] && args+=(-f "${cases[$name]}")
  rc=0; "$helm" lint --strict "$chart" "${args[@]}" >"$work/lint" 2>&1 || rc=$?
  ((rc == 0)) || cat "$work/lint"
  record "helm lint --strict ($name)" $rc
  rc=0; template "${args[@]}" "${crds[@]}" >"$work/$name.yaml" 2>"$work/err" || { rc=$?; cat "$work/err"; }
  record "helm template ($name)" $rc
  ((rc == 0)) || continue
  rc=0; node "$helm_dir/validate-objects.mjs" "$work/$name.yaml" || rc=$?
  record "kubernetes-models: every object of $name valid" $rc
  rc=0; python3 "$helm_dir/chart_checks.py" "$name" "$work/$name.yaml" || rc=$?
  record "assertions on $name" $rc
done

step "a cluster without the Prometheus Operator"
rc=0; template >"$work/nocrd.yaml" || rc=$?
((rc == 0)) && python3 "$helm_dir/chart_checks.py" default "$work/nocrd.yaml" --no-crds || rc=1
record "plain install renders no PrometheusRule (guarded by .Capabilities)" $rc

step "as a subchart of an umbrella chart"
# `global:` is what umbrella charts pass to every subchart; a schema that forbids unknown
# top-level keys refuses it.
mkdir -p "$work/umbrella/charts" "$work/umbrella/templates"
cp -r "$chart" "$work/umbrella/charts/lazymig"
printf 'apiVersion: v2\nname: fleet\nversion: 1.0.0\ndependencies:\n  - name: lazymig\n    version: 0.1.0\n' \
  >"$work/umbrella/Chart.yaml"
printf 'global:\n  imageRegistry: registry.example\nlazymig:\n  commonLabels:\n    fleet: a\n' \
  >"$work/umbrella/values.yaml"
rc=0; "$helm" lint --strict "$work/umbrella" >"$work/lint" 2>&1 || { rc=$?; cat "$work/lint"; }
((rc == 0)) && "$helm" template fleet "$work/umbrella" "${crds[@]}" >"$work/umbrella.yaml" || rc=1
record "an umbrella chart setting global: lints and renders the chart" $rc

if [[ -n $agent_bin ]]; then
  step "rendered configs against the agent's parser"
  # The agent checks that the TLS and token files are readable: give it some, and the
  # node name the start command would substitute.
  mkdir -p "$work/tls"
  touch "$work/tls/ca.crt" "$work/tls/tls.crt" "$work/tls/tls.key" "$work/token-file"
  for name in "${names[@]}"; do
    [[ -f $work/$name.yaml ]] || continue
    rc=0
    python3 - "$work/$name.yaml" "$work/$name.lazymig.yaml" <<'EOF_PY' || rc=$?
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")][0]
open(sys.argv[2], "w").write(cm["data"]["lazymig.yaml"])
EOF_PY
    sed -i -e "s/__NODE_NAME__/node-a/" -e "s#/etc/lazymig/tls/#$work/tls/#" \
      -e "s#/etc/lazymig/control-token/token#$work/token-file#" "$work/$name.lazymig.yaml"
    ((rc == 0)) && "$agent_bin" --check-config "$work/$name.lazymig.yaml" || rc=1
    record "lazymig-agent --check-config accepts the $name config" $rc
  done
fi

step "NOTES.txt"
# helm install --dry-run=client renders NOTES.txt without a cluster.
for strategy in OnDelete RollingUpdate; do
  rc=0
  "$helm" install lazymig "$chart" --namespace lazymig --dry-run=client \
    --set updateStrategy.type=$strategy >"$work/install.txt" 2>&1 || { rc=$?; cat "$work/install.txt"; }
  sed -n '/^NOTES:/,$p' "$work/install.txt" >"$work/notes.txt"
  ((rc == 0)) && [[ -s $work/notes.txt ]] && python3 "$helm_dir/chart_checks.py" notes "$work/notes.txt" $strategy || rc=1
  record "NOTES.txt ($strategy)" $rc
done
# kubectl refuses `rollout status` for the default OnDelete strategy.
rc=0; grep -n "rollout status" "$repo/docs/operations.md" "$repo/README.md" "$helm_dir/README.intro.md" |
  grep -v RollingUpdate && rc=1
record "docs never say \`rollout status\` except for RollingUpdate" $rc

step "values the schema must accept (real Helm)"
must_render() {  # must_render NAME HELM_ARGS...
  local name=$1; shift
  if template "$@" >/dev/null 2>"$work/err"; then record "$name renders" 0
  else cat "$work/err"; record "$name renders" 1; fi
}
must_render "--set global.foo=bar (umbrella charts)" --set global.foo=bar
must_render "--set resources.limits.cpu=2 (a numeric quantity)" --set resources.limits.cpu=2
must_render "--set resources.requests.memory=1.5Gi" --set resources.requests.memory=1.5Gi

step "renders that must fail (real Helm)"
must_fail() {  # must_fail NAME EXPECTED_MESSAGE VALUES_YAML
  printf '%s\n' "$3" >"$work/bad.yaml"
  if template -f "$work/bad.yaml" >/dev/null 2>"$work/err"; then
    record "$1 is refused" 1
  else
    grep -q -- "$2" "$work/err" || cat "$work/err"
    grep -q -- "$2" "$work/err"; record "$1 is refused with '$2'" $?
  fi
}
must_fail "no TLS source" "set exactly one of tls.existingSecret" 'tls: {existingSecret: ""}'
must_fail "two TLS sources" "set exactly one of tls.existingSecret" 'tls: {hostPath: /etc/lazymig/tls}'
must_fail "cert-manager without an issuer" "issuerRef.name is required" \
  'tls: {existingSecret: "", certManager: {enabled: true}}'
must_fail "a port out of range" "/agent/port" 'agent: {port: 70000}'
must_fail "an unknown control mode" "/control/mode" 'control: {mode: http}'
must_fail "a misspelt key" "hostNetwrk" 'hostNetwrk: true'
must_fail "a string where an integer belongs" "bulk_batch_pages" 'config: {migration: {bulk_batch_pages: "64"}}'
must_fail "a relative state dir" "/paths/stateDir" 'paths: {stateDir: var/lib/lazymig}'
must_fail "an unknown update strategy" "/updateStrategy/type" 'updateStrategy: {type: Recreate}'
must_fail "a bad log level" "/config/logLevel" 'config: {logLevel: verbose}'
must_fail "a quantity that is not one" "/resources/limits/cpu" 'resources: {limits: {cpu: two}}'
must_fail "a tag-like digest" "/image/digest" 'image: {digest: latest}'

step "chart README"
rc=0; python3 "$repo/scripts/chart-readme.py" --check || rc=$?
record "README.md values table matches values.yaml (scripts/chart-readme.py)" $rc
rc=0; python3 - "$chart/Chart.yaml" <<'EOF_PY' || rc=$?
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
missing = [k for k in ("home", "sources", "icon", "maintainers", "kubeVersion", "keywords") if not c.get(k)]
sys.exit(f"Chart.yaml lacks {missing}" if missing else 0)
EOF_PY
record "Chart.yaml has home, sources, icon, maintainers" $rc

# ---- alerts and dashboard ----
step "alerts and dashboard"
rc=0; promtool check rules "$deploy/prometheus/lazymig-rules.yaml" || rc=$?
record "promtool check rules prometheus/lazymig-rules.yaml" $rc
rc=0; (cd "$deploy/prometheus" && promtool test rules lazymig-rules.test.yaml) || rc=$?
record "promtool test rules prometheus/lazymig-rules.test.yaml" $rc
rc=0; python3 "$helm_dir/rules_checks.py" "$deploy/prometheus/lazymig-rules.yaml" \
  "$deploy/prometheus/lazymig-rules.test.yaml" "$repo/docs/operations.md" "$chart/Chart.yaml" || rc=$?
record "every alert tested firing and quiet, with a runbook section in docs/operations.md" $rc
rc=0; python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$deploy/grafana/lazymig-dashboard.json" || rc=$?
record "grafana/lazymig-dashboard.json is JSON" $rc
# The chart ships copies (Helm reads files inside the chart only); they must not drift.
rc=0; cmp "$deploy/grafana/lazymig-dashboard.json" "$chart/files/dashboard.json" || rc=$?
record "chart files/dashboard.json is deploy/grafana/lazymig-dashboard.json" $rc
rc=0; cmp "$deploy/prometheus/lazymig-rules.yaml" "$chart/files/alerts.yaml" || rc=$?
record "chart files/alerts.yaml is deploy/prometheus/lazymig-rules.yaml" $rc

# ---- every YAML file in deploy/, and the rendered manifests ----
step "yamllint"
mapfile -t yaml_files < <(find "$deploy" \( -name '*.yaml' -o -name '*.yml' \) -not -path '*/templates/*' | sort)
rc=0; yamllint -s -c "$deploy/yamllint.yaml" "${yaml_files[@]}" || rc=$?
record "yamllint: ${#yaml_files[@]} files in deploy/ (templates are checked rendered)" $rc
# toYaml writes a list under its key without indenting it; both forms are YAML.
rendered=()
for name in "${names[@]}"; do rendered+=("$work/$name.yaml"); done
rc=0; yamllint -s -d "{extends: relaxed, rules: {line-length: {max: 200}, indentation: {indent-sequences: whatever}}}" \
  "${rendered[@]}" || rc=$?
record "yamllint: rendered manifests" $rc

# ---- systemd unit ----
step "systemd unit"
# verify checks that ExecStart's binary exists; point it at one that does, keep the rest.
sed 's#@CMAKE_INSTALL_FULL_BINDIR@/lazymig-agent#/bin/true#g; s#/usr/local/bin/lazymig-agent#/bin/true#g' \
  "$deploy/systemd/lazymig-agent.service" >"$work/lazymig-agent.service"
rc=0; out=$(systemd-analyze verify --man=no "$work/lazymig-agent.service" 2>&1) || rc=$?
# An unknown or misspelt directive is only a warning to systemd; here it is a failure.
[[ -z $out ]] || { echo "$out"; rc=1; }
record "systemd-analyze verify lazymig-agent.service" $rc

echo
if ((failures)); then
  echo "test-chart: $failures step(s) failed"
  exit 1
fi
echo "test-chart: all steps passed"
