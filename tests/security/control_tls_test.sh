#!/usr/bin/env bash
# The control API on TCP with control_tls: only clients with a certificate from the control CA
# get an answer, over TLS 1.3, from the lazymig CLI and from curl alike; every other client
# (no certificate, another CA's certificate, plaintext, a client that does not trust the
# agent) gets nothing. Real agent, real sockets.
#
# usage: control_tls_test.sh BINDIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
W=$(mktemp -d /tmp/lazymig-control-tls.XXXXXX)
AGENT=
cleanup() {
  local rc=$?
  [[ -n $AGENT ]] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  [[ $rc -ne 0 && -f $W/agent.log ]] && tail -n 20 "$W/agent.log"
  rm -rf "$W"
}
trap cleanup EXIT
fails=0
check() {  # description, then the command that must succeed
  local what=$1; shift
  if "$@" >"$W/out" 2>&1; then echo "ok    $what"; else echo "FAIL  $what"; sed 's/^/      /' "$W/out"; fails=$((fails + 1)); fi
}
refused() {  # description, then the command that must fail (its error is shown)
  local what=$1; shift
  if "$@" >"$W/out" 2>&1; then echo "FAIL  $what (it got through)"; sed 's/^/      /' "$W/out"; fails=$((fails + 1)); else echo "ok    $what: $(tail -n 1 "$W/out" | cut -c1-160)"; fi
}

"$BIN/lazymig" certs --dir "$W/fleet" --node a --san spiffe://lazymig/node/a >/dev/null
# The control CA is not the fleet CA: a node's agent certificate must not drive other agents.
"$BIN/lazymig" certs --dir "$W/control" --ca-name control-ca --node agent-control --san localhost >/dev/null
"$BIN/lazymig" certs --dir "$W/control" --ca-name control-ca --node orchestrator --san spiffe://lazymig/orchestrator >/dev/null
"$BIN/lazymig" certs --dir "$W/other" --ca-name other-ca --node mallory --san spiffe://lazymig/orchestrator >/dev/null

cat >"$W/agent.yaml" <<YAML
node_name: a
listen:
  agent: "127.0.0.1:0"
  control: "127.0.0.1:0"
  metrics: "off"
tls:
  ca_file: $W/fleet/lazymig-ca.crt
  cert_file: $W/fleet/a.crt
  key_file: $W/fleet/a.key
control_tls:
  cert_file: $W/control/agent-control.crt
  key_file: $W/control/agent-control.key
  client_ca_file: $W/control/control-ca.crt
state_dir: $W/state
handshake_dir: $W/vmm
log_format: json
YAML
"$BIN/lazymig-agent" --check-config "$W/agent.yaml" >/dev/null
"$BIN/lazymig-agent" --config "$W/agent.yaml" >"$W/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 1 100); do
  port=$(jq -r 'select(.msg == "agent ready") | .control' "$W/agent.log" 2>/dev/null | sed 's/.*://')
  [[ -n $port ]] && break
  sleep 0.1
done
[[ -n ${port:-} ]] || { echo "the agent did not become ready"; exit 1; }
URL=https://localhost:$port
C=$W/control
echo "control API at $URL"

check "lazymig CLI with the orchestrator's certificate" \
  bash -c "'$BIN/lazymig' --control $URL --cacert $C/control-ca.crt --cert $C/orchestrator.crt --key $C/orchestrator.key --json agent | jq -e '.node == \"a\"'"
check "curl with the orchestrator's certificate, TLS 1.3" \
  curl -sSf --tlsv1.3 --cacert "$C/control-ca.crt" --cert "$C/orchestrator.crt" --key "$C/orchestrator.key" "$URL/v1/migrations"
refused "curl without a client certificate" curl -sSf --cacert "$C/control-ca.crt" "$URL/healthz"
refused "curl with a certificate from another CA" \
  curl -sSf --cacert "$C/control-ca.crt" --cert "$W/other/mallory.crt" --key "$W/other/mallory.key" "$URL/healthz"
refused "curl with the fleet's agent certificate" \
  curl -sSf --cacert "$C/control-ca.crt" --cert "$W/fleet/a.crt" --key "$W/fleet/a.key" "$URL/healthz"
refused "plaintext HTTP to the TLS port" curl -sSf --max-time 5 "http://localhost:$port/healthz"
refused "TLS 1.2 at most" curl -sSf --tls-max 1.2 --cacert "$C/control-ca.crt" --cert "$C/orchestrator.crt" --key "$C/orchestrator.key" "$URL/healthz"
refused "lazymig CLI without a client certificate" \
  "$BIN/lazymig" --control "$URL" --cacert "$C/control-ca.crt" agent
refused "lazymig CLI that does not trust the agent's certificate" \
  "$BIN/lazymig" --control "$URL" --cacert "$W/other/other-ca.crt" --cert "$C/orchestrator.crt" --key "$C/orchestrator.key" agent
check "the agent still answers the right client after all that" \
  curl -sSf --cacert "$C/control-ca.crt" --cert "$C/orchestrator.crt" --key "$C/orchestrator.key" "$URL/readyz"

refused "control_tls on a UNIX control socket is rejected at start-up" \
  bash -c "sed 's|control: \"127.0.0.1:0\"|control: \"unix:$W/c.sock\"|' '$W/agent.yaml' > '$W/bad.yaml' && '$BIN/lazymig-agent' --check-config '$W/bad.yaml'"
grep -q "control_tls" "$W/out" || { echo "FAIL  the start-up error names control_tls"; fails=$((fails + 1)); }

[[ $fails -eq 0 ]] || { echo "$fails check(s) failed"; exit 1; }
echo "control TLS: every check passed"
