#!/usr/bin/env bash
# Tests the Helm chart, the systemd unit and every YAML file in deploy/ without a cluster
# and without Helm (not in Debian 12): deploy/helm/render (Go, text/template + sprig, the
# Helm built-ins the chart uses) renders the chart; chart_checks.py asserts on the result.
#
# Needs these Debian 12 packages (it installs nothing; it fails naming what is missing):
#   golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev
#   python3 python3-yaml python3-jsonschema yamllint systemd
# (hadolint, the Dockerfile linter, is not packaged in Debian: the Dockerfile is checked
# by deploy/image/test-image.sh instead.)
#
#   deploy/helm/test-chart.sh [AGENT_BINARY]
#
# With AGENT_BINARY (lazymig-agent), every rendered lazymig.yaml is also checked by the
# agent's own parser (--check-config), so the chart cannot drift from the config schema.
set -euo pipefail
agent_bin=${1:-}

helm_dir=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$helm_dir")
chart=$helm_dir/lazymig
gocode=/usr/share/gocode
failures=0

missing=()
for tool in go gofmt python3 yamllint systemd-analyze; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
for mod in yaml jsonschema; do
  python3 -c "import $mod" 2>/dev/null || missing+=("python3 module $mod")
done
for src in github.com/Masterminds/sprig gopkg.in/yaml.v3; do
  [[ -d $gocode/src/$src ]] || missing+=("$gocode/src/$src")
done
if ((${#missing[@]})); then
  echo "test-chart: missing: ${missing[*]}" >&2
  echo "test-chart: apt-get install golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev python3-yaml python3-jsonschema yamllint systemd" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { echo; echo "== $*"; }
record() {  # record NAME RC: one summary line per step
  if [[ $2 -eq 0 ]]; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi
}

# ---- the renderer: Debian's Go sources only, GOPATH mode, no network ----
step "build deploy/helm/render"
# GOPATH mode resolves sprig's ".../sprig/v3" import from Debian's unversioned directory
# only for code inside a GOPATH, hence the link.
mkdir -p "$work/gopath/src"
ln -s "$helm_dir/render" "$work/gopath/src/render"
export GO111MODULE=off GOPATH="$work/gopath:$gocode" GOCACHE="$work/gocache" GOPROXY=off GOFLAGS=
render=$work/render
rc=0; (cd "$work/gopath/src/render" && go build -o "$render" . && go vet . && go test ./...) || rc=$?
record "renderer builds, vets and passes its tests" $rc
unformatted=$(gofmt -l "$helm_dir/render")
[[ -z $unformatted ]]; record "renderer is gofmt-clean${unformatted:+ ($unformatted)}" $?
[[ -x $render ]] || { echo "test-chart: cannot go on without the renderer" >&2; exit 1; }

# ---- renders and assertions ----
declare -A cases=(
  [default]=""
  [certmanager]=$helm_dir/test-values/certmanager-servicemonitor.yaml
  [tcp]=$helm_dir/test-values/tcp-control-hostpath.yaml
  [token]=$helm_dir/test-values/token-rolling.yaml
)
for name in default certmanager tcp token; do
  step "render: $name"
  args=(-chart "$chart")
  [[ -n ${cases[$name]} ]] && args+=(-f "${cases[$name]}")
  rc=0; "$render" "${args[@]}" >"$work/$name.yaml" || rc=$?
  record "render $name" $rc
  ((rc == 0)) || continue
  rc=0; python3 "$helm_dir/chart_checks.py" "$name" "$work/$name.yaml" || rc=$?
  record "assertions on $name" $rc
done

if [[ -n $agent_bin ]]; then
  step "rendered configs against the agent's parser"
  # The agent checks that the TLS and token files are readable: give it some, and the
  # node name the start command would substitute.
  mkdir -p "$work/tls"
  touch "$work/tls/ca.crt" "$work/tls/tls.crt" "$work/tls/tls.key" "$work/token-file"
  for name in default certmanager tcp token; do
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
rc=0; "$render" -chart "$chart" -notes >"$work/notes.txt" || rc=$?
((rc == 0)) && grep -q "OnDelete" "$work/notes.txt" && grep -q "delete pod" "$work/notes.txt" || rc=1
record "NOTES.txt renders and tells how to replace agents under OnDelete" $rc

step "renders that must fail"
must_fail() {  # must_fail NAME EXPECTED_MESSAGE VALUES_YAML
  printf '%s\n' "$3" >"$work/bad.yaml"
  if "$render" -chart "$chart" -f "$work/bad.yaml" >/dev/null 2>"$work/err"; then
    record "$1 is refused" 1
  else
    grep -q "$2" "$work/err"; record "$1 is refused with '$2'" $?
  fi
}
must_fail "no TLS source" "set exactly one of tls.existingSecret" 'tls: {existingSecret: ""}'
must_fail "two TLS sources" "set exactly one of tls.existingSecret" 'tls: {hostPath: /etc/lazymig/tls}'
must_fail "cert-manager without an issuer" "issuerRef.name is required" \
  'tls: {existingSecret: "", certManager: {enabled: true}}'

step "values.schema.json"
rc=0; python3 "$helm_dir/chart_checks.py" schema "$chart/values.yaml" "$chart/values.schema.json" \
  "$helm_dir"/test-values/*.yaml || rc=$?
record "schema accepts the values files and rejects bad values" $rc

# ---- every YAML file in deploy/, and the rendered manifests ----
step "yamllint"
mapfile -t yaml_files < <(find "$deploy" \( -name '*.yaml' -o -name '*.yml' \) -not -path '*/templates/*' | sort)
rc=0; yamllint -s -c "$deploy/yamllint.yaml" "${yaml_files[@]}" || rc=$?
record "yamllint: ${#yaml_files[@]} files in deploy/ (templates are checked rendered)" $rc
rc=0; yamllint -s -d "{extends: relaxed, rules: {line-length: {max: 200}}}" \
  "$work"/{default,certmanager,tcp,token}.yaml || rc=$?
record "yamllint: rendered manifests" $rc
rc=0; python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$deploy/grafana/lazymig-dashboard.json" || rc=$?
record "grafana/lazymig-dashboard.json is JSON" $rc
# The chart ships copies (Helm reads files inside the chart only); they must not drift.
rc=0; cmp "$deploy/grafana/lazymig-dashboard.json" "$chart/files/dashboard.json" || rc=$?
record "chart files/dashboard.json is deploy/grafana/lazymig-dashboard.json" $rc
rc=0; cmp "$deploy/prometheus/lazymig-rules.yaml" "$chart/files/alerts.yaml" || rc=$?
record "chart files/alerts.yaml is deploy/prometheus/lazymig-rules.yaml" $rc
if command -v promtool >/dev/null; then
  rc=0; promtool check rules "$deploy/prometheus/lazymig-rules.yaml" >/dev/null || rc=$?
  record "promtool check rules prometheus/lazymig-rules.yaml" $rc
fi

# ---- systemd unit ----
step "systemd unit"
# verify checks that ExecStart's binary exists; point it at one that does, keep the rest.
sed 's#/usr/local/bin/lazymig-agent#/bin/true#g' "$deploy/systemd/lazymig-agent.service" \
  >"$work/lazymig-agent.service"
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
